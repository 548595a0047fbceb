"""`run_layer_test` itself: each of its checks fails on a layer with that bug.

The layers here are deliberately broken, one bug each; a sound layer of the
same shape (`Scale`) passes, so each failure is the check's doing.
"""

import keras
import numpy as np
import pytest

from tests.helpers import run_layer_test

X = np.random.default_rng(0).random((2, 3, 4)).astype("float32")


class Scale(keras.layers.Layer):
    """`x * scale + offset`: a trainable and a non-trainable weight."""

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="ones"
        )
        self.offset = self.add_weight(
            name="offset",
            shape=(input_shape[-1],),
            initializer="zeros",
            trainable=False,
        )

    def call(self, inputs):
        return inputs * self.scale + self.offset

    def compute_output_shape(self, input_shape):
        return input_shape


class ForgetsWeightOnSave(Scale):
    """Saves and loads only `scale`: `offset` comes back at its initial 0."""

    def save_own_variables(self, store):
        store["0"] = self.scale.numpy()

    def load_own_variables(self, store):
        self.scale.assign(store["0"])


class NoGradientToWeight(Scale):
    """`scale` never receives a gradient, so training cannot change it."""

    def call(self, inputs):
        scale = keras.ops.stop_gradient(self.scale)
        return inputs * scale + self.offset


class DeadWeight(Scale):
    """`scale` gets a zero gradient (it is multiplied by 0)."""

    def call(self, inputs):
        return inputs * (1.0 + 0.0 * self.scale) + self.offset


class NoGradientToInput(keras.layers.Layer):
    """Blocks the gradient to its input."""

    def call(self, inputs):
        return keras.ops.stop_gradient(inputs) * 2.0

    def compute_output_shape(self, input_shape):
        return input_shape


class NaiveHalfL2(keras.layers.Layer):
    """L2 normalisation in the compute dtype: in float16 the epsilon**2
    floor is 0, and a zero vector becomes NaN."""

    def call(self, inputs):
        sq = keras.ops.sum(keras.ops.square(inputs), axis=-1, keepdims=True)
        return inputs * keras.ops.rsqrt(keras.ops.maximum(sq, 1e-12))

    def compute_output_shape(self, input_shape):
        return input_shape


class AlwaysFloat32(keras.layers.Layer):
    """Returns float32 whatever the policy (ignores mixed precision)."""

    def call(self, inputs):
        return keras.ops.cast(inputs, "float32") * 2.0

    def compute_output_shape(self, input_shape):
        return input_shape


# Registered under a test-only package so `.keras` files can name them.
for _cls in (
    Scale,
    ForgetsWeightOnSave,
    NoGradientToWeight,
    DeadWeight,
    NoGradientToInput,
    NaiveHalfL2,
    AlwaysFloat32,
):
    keras.saving.register_keras_serializable(package="test_run_layer_test")(
        _cls
    )


def run(layer_cls, data=X, trainable=1, non_trainable=1):
    return run_layer_test(
        layer_cls,
        {},
        data,
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
    )


def test_a_sound_layer_passes():
    run(Scale)


def test_wrong_weight_counts_fail():
    with pytest.raises(AssertionError, match="1 trainable and 1 non-trainable"):
        run(Scale, trainable=2)
    with pytest.raises(AssertionError, match="expected 1 and 0"):
        run(Scale, non_trainable=0)


def test_a_weight_lost_on_save_fails():
    with pytest.raises(AssertionError, match="weight 'offset' after reload"):
        run(ForgetsWeightOnSave)


def test_a_trainable_weight_the_step_cannot_change_fails():
    with pytest.raises(AssertionError, match="no gradient reaches .*scale"):
        run(NoGradientToWeight)


def test_a_trainable_weight_with_zero_gradient_fails():
    with pytest.raises(AssertionError, match="scale unchanged by a step"):
        run(DeadWeight)


def test_a_layer_that_blocks_the_input_gradient_fails():
    with pytest.raises(AssertionError, match="no gradient flows"):
        run(NoGradientToInput, trainable=0, non_trainable=0)


def test_nan_under_mixed_float16_fails():
    data = X.copy()
    data[0, 0] = 0.0  # one zero vector
    run(NaiveHalfL2, X, trainable=0, non_trainable=0)  # fine without it
    with pytest.raises(AssertionError, match="non-finite output"):
        run(NaiveHalfL2, data, trainable=0, non_trainable=0)


def test_wrong_but_finite_output_under_mixed_float16_fails():
    # Squares of 300 overflow float16: the naive norm is inf, the output 0.
    with pytest.raises(AssertionError, match="mixed_float16 output"):
        run(NaiveHalfL2, X * 300, trainable=0, non_trainable=0)


def test_wrong_output_dtype_under_mixed_float16_fails():
    with pytest.raises(AssertionError, match="outputs float32"):
        run(AlwaysFloat32, trainable=0, non_trainable=0)
