"""Shared test helpers (keras-hub style `run_layer_test`)."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

# float16 has an 11-bit mantissa: outputs of a mixed_float16 layer are
# compared with the float32 ones to this relative tolerance, on the scale of
# the largest output.
FLOAT16_RTOL = 1e-2


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    *,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights,
    expected_output=None,
    atol=1e-6,
):
    """Checks a layer the way keras-hub's `run_layer_test` does.

    In order: weight counts; config and serialization round trips; symbolic
    and traced calls with unknown (`None`) spatial dims; every weight is
    then moved away from its initial value and the layer is saved inside a
    model as `.keras` and reloaded (so a weight lost on save shows: the
    reloaded layer would have its initial value); one training step on the
    reloaded layer (or, without trainable weights, gradients to the input);
    and a run under the `mixed_float16` dtype policy.

    Every assertion is made on a reconstructed or reloaded object, never on
    the original.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_data: float32 NumPy array `(B, H, W, C)` or `(B, ..., C)`.
        expected_num_trainable_weights: int. After the first call.
        expected_num_non_trainable_weights: int. After the first call.
        expected_output: optional NumPy array that a layer built from the
            config must output, with its initial weights.
        atol: tolerance for float32 output comparisons.

    Returns:
        The output of the reloaded layer, as NumPy.
    """
    layer = layer_cls(**init_kwargs)
    layer(input_data)
    _check_weight_counts(
        layer,
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
    )
    config = layer.get_config()
    if expected_output is not None:
        clone = layer_cls.from_config(config)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(clone(input_data)),
            expected_output,
            atol=atol,
        )

    # From here on the weights differ from their initial values.
    _change_weights(layer)
    eager = keras.ops.convert_to_numpy(layer(input_data))
    revived = _check_round_trips(layer, input_data, eager, atol)
    _check_symbolic_and_traced_calls(revived, input_data, eager, atol)
    reloaded = _check_save_and_reload(layer, input_data, eager, atol)
    _check_training_step(reloaded, input_data)
    _check_mixed_float16(layer_cls, config, layer, input_data, eager)
    return keras.ops.convert_to_numpy(reloaded(input_data))


def _check_weight_counts(layer, trainable, non_trainable):
    got = (len(layer.trainable_weights), len(layer.non_trainable_weights))
    assert got == (trainable, non_trainable), (
        f"{type(layer).__name__} has {got[0]} trainable and {got[1]} "
        f"non-trainable weights; expected {trainable} and {non_trainable}."
    )


def _change_weights(layer, seed=0):
    """Moves every float weight away from its initial value, upwards.

    The shift is positive and proportional to `1 + |w|`, so weights that
    must stay positive (e.g. GeM's exponent) stay valid.
    """
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = keras.ops.convert_to_numpy(weight)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        shift = 0.1 * (1 + np.abs(value)) * rng.uniform(0.5, 1.0, value.shape)
        weight.assign((value + shift).astype(value.dtype))


def _weights_by_path(layer):
    return {
        w.path.split("/", 1)[-1]: keras.ops.convert_to_numpy(w)
        for w in layer.weights
    }


def _check_round_trips(layer, input_data, eager, atol):
    """Config and serialization round trips give an equivalent layer."""
    layer_cls = type(layer)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(revived) is layer_cls
    assert revived.get_config() == config
    if layer.weights:
        if not revived.built:
            revived.build(input_data.shape)
        revived.set_weights(layer.get_weights())
    revived_out = keras.ops.convert_to_numpy(revived(input_data))
    np.testing.assert_allclose(revived_out, eager, atol=atol)
    return revived


def _check_symbolic_and_traced_calls(revived, input_data, eager, atol):
    """Unknown spatial dims: symbolic shapes and traced outputs agree."""
    spec_shape = (None,) * (input_data.ndim - 1) + (input_data.shape[-1],)
    symbolic = revived(keras.Input(batch_shape=spec_shape))
    assert tuple(symbolic.shape) == tuple(
        revived.compute_output_shape(spec_shape)
    )
    static_shape = revived.compute_output_shape(input_data.shape)
    assert tuple(eager.shape) == tuple(
        d if d is not None else e for d, e in zip(static_shape, eager.shape)
    )
    traced = tf.function(
        lambda x: revived(x),
        input_signature=[tf.TensorSpec(spec_shape, tf.float32)],
    )
    traced_out = traced(tf.constant(input_data, tf.float32)).numpy()
    np.testing.assert_allclose(traced_out, eager, atol=atol)


def _check_save_and_reload(layer, input_data, eager, atol):
    """Saved inside a model as `.keras` and reloaded: same weights, outputs.

    `layer` carries changed weights, so a weight that is not saved comes
    back at its initial value and the comparison fails.
    """
    spec_shape = (None,) * (input_data.ndim - 1) + (input_data.shape[-1],)
    inputs = keras.Input(batch_shape=spec_shape)
    model = keras.Model(inputs, layer(inputs))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layer.keras")
        model.save(path)
        reloaded_model = keras.models.load_model(path)
    (reloaded,) = [
        sub for sub in reloaded_model.layers if type(sub) is type(layer)
    ]
    want = _weights_by_path(layer)
    got = _weights_by_path(reloaded)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for name, value in want.items():
        np.testing.assert_array_equal(
            got[name], value, err_msg=f"weight {name!r} after reload"
        )
    reloaded_out = keras.ops.convert_to_numpy(reloaded(input_data))
    np.testing.assert_allclose(
        reloaded_out, eager, atol=atol, err_msg="output after .keras reload"
    )
    return reloaded


def _check_training_step(layer, input_data):
    """One optimizer step changes every trainable weight, to finite values.

    A layer without trainable weights must instead pass finite, non-zero
    gradients to its float input (unless its output is not float, as for
    the region grid).
    """
    rng = np.random.default_rng(1)
    out = layer(input_data)
    if not _is_float(out.dtype):
        assert not layer.trainable_weights
        return
    probe = rng.normal(size=tuple(out.shape)).astype("float32")
    x = tf.constant(input_data)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.cast(layer(x), tf.float32) * probe)
    grad, *weight_grads = tape.gradient(
        loss, [x] + list(layer.trainable_weights)
    )
    assert grad is not None, "no gradient flows to the input"
    grad = grad.numpy()
    assert np.all(np.isfinite(grad)), "non-finite gradient to the input"
    assert np.any(grad != 0), "zero gradient to the input"
    for weight, weight_grad in zip(layer.trainable_weights, weight_grads):
        assert weight_grad is not None, f"no gradient reaches {weight.path}"
    if not layer.trainable_weights:
        return

    # One SGD step in a tiny model around the layer, traced as fit traces.
    inputs = keras.Input(input_data.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [w.numpy() for w in layer.weights]
    loss = model.train_on_batch(input_data, probe)
    assert np.isfinite(loss), f"training loss {loss}"
    for weight, old in zip(layer.weights, before):
        new = weight.numpy()
        assert np.all(np.isfinite(new)), f"{weight.path} not finite"
        if weight.trainable:
            assert np.any(new != old), f"{weight.path} unchanged by a step"
        else:
            np.testing.assert_array_equal(new, old, err_msg=weight.path)


def _check_mixed_float16(layer_cls, config, layer, input_data, eager):
    """Under `mixed_float16`: float32 weights, float16 outputs, finite.

    Outputs must match the float32 ones to float16 precision (overflow,
    underflow or a vanished epsilon show as inf, NaN or zeros).
    """
    mixed = layer_cls.from_config({**config, "dtype": "mixed_float16"})
    if layer.weights:
        mixed.build(input_data.shape)
        mixed.set_weights(layer.get_weights())
    for weight in mixed.weights:
        if _is_float(weight.dtype):
            assert weight.dtype == "float32", (weight.path, weight.dtype)
    out = mixed(input_data)
    if _is_float(eager.dtype):
        dtype = keras.backend.standardize_dtype(out.dtype)
        assert dtype == "float16", (
            f"{layer_cls.__name__} outputs {dtype} under mixed_float16"
        )
    else:
        assert keras.backend.standardize_dtype(out.dtype) == eager.dtype
    out = keras.ops.convert_to_numpy(out).astype(eager.dtype)
    assert np.all(np.isfinite(out)), "non-finite output under mixed_float16"
    scale = max(float(np.max(np.abs(eager))), 1e-30)
    np.testing.assert_allclose(
        out,
        eager,
        rtol=FLOAT16_RTOL,
        atol=FLOAT16_RTOL * scale,
        err_msg="mixed_float16 output",
    )


def _is_float(dtype):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))
