"""ListwiseModel: the two-pass big-batch gradient equals the one-pass one."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.losses import APLoss
from keras_rmac.models import ListwiseModel
from keras_rmac.models import RMACModel
from keras_rmac.models import two_pass_gradients

LABELS = np.repeat(np.arange(3), 4).astype("int32")  # P=3 x K=4


def _tiny_rmac(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(12, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.ReLU()(x)
    backbone = keras.Model(inputs, x, name="tiny")
    return RMACModel(backbone, weights=None, preprocessing="none", levels=2)


def _images(seed=1, n=12, side=16):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(0, 255, (n, side, side, 3)), tf.float32)


def _one_pass(model, x, labels, loss):
    with tf.GradientTape() as tape:
        value = loss(labels, model(x, training=True))
    return value, tape.gradient(value, model.trainable_variables)


@pytest.mark.parametrize("chunk_size", [1, 5, 12, 40])
def test_two_pass_gradient_equals_one_pass(chunk_size):
    model = ListwiseModel(_tiny_rmac())
    x = _images()
    loss = APLoss(bins=10)
    model(x)
    want_loss, want = _one_pass(model, x, LABELS, loss)
    got_loss, got, descriptors = two_pass_gradients(
        lambda v: model(v, training=True),
        model.trainable_variables,
        x,
        lambda e: loss(LABELS, e),
        chunk_size,
    )
    assert descriptors.shape == (12, model.embedding.dimension)
    np.testing.assert_allclose(float(got_loss), float(want_loss), atol=1e-6)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in want) > 1e-4
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_fit_with_chunks_takes_the_same_step_as_without():
    x = _images(seed=2)
    ds = tf.data.Dataset.from_tensors((x, LABELS))
    weights, logged = [], []
    for chunk_size in (None, 5):
        model = ListwiseModel(_tiny_rmac(seed=3), chunk_size=chunk_size)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=APLoss(bins=10))
        history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
        logged.append(history.history["loss"][0])
        weights.append([np.asarray(v) for v in model.trainable_variables])
    moved = max(
        np.abs(a - b).max()
        for a, b in zip(
            weights[0],
            [np.asarray(v) for v in _fresh_variables(seed=3)],
        )
    )
    assert moved > 1e-4  # the step did something
    assert 0 < logged[0] < 1
    np.testing.assert_allclose(logged[1], logged[0], atol=1e-6)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _fresh_variables(seed):
    model = ListwiseModel(_tiny_rmac(seed=seed))
    model(_images(seed=2))
    return model.trainable_variables


def test_config_round_trip_and_checks():
    model = ListwiseModel(_tiny_rmac(), chunk_size=4)
    x = _images(n=4)
    want = np.asarray(model(x))
    clone = ListwiseModel.from_config(model.get_config())
    assert clone.chunk_size == 4
    clone(x)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), want, atol=1e-6)
    with pytest.raises(ValueError, match="freeze_batchnorm"):
        ListwiseModel(_tiny_rmac(), freeze_batchnorm=False, chunk_size=4)
    with pytest.raises(ValueError, match="labels"):
        model.compile()
        model.fit(tf.data.Dataset.from_tensors(x), verbose=0, shuffle=False)
