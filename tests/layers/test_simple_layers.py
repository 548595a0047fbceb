import doctest
import importlib

import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.layers import GeMPooling
from keras_rmac.layers import L2Normalize
from keras_rmac.layers import MACPooling
from keras_rmac.layers import SPoCPooling
from keras_rmac.layers.preprocess import Preprocess
from tests.helpers import run_layer_test

X = np.random.default_rng(0).random((2, 3, 5, 4)).astype("float32")


def test_l2_normalize_matches_numpy_and_keeps_zero_vectors_zero():
    x = np.concatenate([X.reshape(-1, 4), np.zeros((1, 4), "float32")])
    got = L2Normalize()(x).numpy()
    want = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(got[-1] == 0)


def test_l2_normalize_gradient_is_finite_at_zero():
    x = tf.zeros((1, 4))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(L2Normalize()(x))
    assert np.all(np.isfinite(tape.gradient(y, x).numpy()))


def test_l2_normalize_layer_contract():
    run_layer_test(L2Normalize, {"axis": -1, "epsilon": 1e-6}, X)


def test_mac_spoc_match_numpy():
    np.testing.assert_allclose(
        MACPooling()(X).numpy()[:, 0], X.max(axis=(1, 2)), rtol=1e-6
    )
    np.testing.assert_allclose(
        SPoCPooling()(X).numpy()[:, 0], X.mean(axis=(1, 2)), rtol=1e-6
    )
    run_layer_test(MACPooling, {}, X)
    run_layer_test(SPoCPooling, {}, X)


@pytest.mark.parametrize("p", [1.0, 3.0, 7.5])
def test_gem_matches_numpy(p):
    want = np.mean(np.maximum(X, 1e-6) ** p, axis=(1, 2)) ** (1 / p)
    np.testing.assert_allclose(
        GeMPooling(p=p)(X).numpy()[:, 0], want, rtol=1e-5
    )


def test_gem_p_is_trainable_and_serialized():
    layer = GeMPooling(p=2.0)
    layer.build(X.shape)
    assert [w.name for w in layer.trainable_weights] == ["p"]
    frozen = GeMPooling(trainable_p=False)
    frozen.build(X.shape)
    assert frozen.trainable_weights == []
    run_layer_test(GeMPooling, {"p": 2.5}, X)


@pytest.mark.parametrize(
    "mode,fn",
    [
        ("tf", lambda x: x / 127.5 - 1),
        (
            "torch",
            lambda x: (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
        ),
        ("caffe", lambda x: x[..., ::-1] - [103.939, 116.779, 123.68]),
        ("lite", lambda x: (x - 127) / 128),
        ("none", lambda x: x),
    ],
)
def test_preprocess_modes_match_numpy(mode, fn):
    x = (X * 255).astype("float32")[..., :3]
    np.testing.assert_allclose(
        Preprocess(mode)(x).numpy(),
        fn(x.astype(np.float64)),
        rtol=1e-5,
        atol=1e-4,
    )
    run_layer_test(Preprocess, {"mode": mode}, x, atol=1e-4)


def test_preprocess_rejects_unknown_mode():
    with pytest.raises(ValueError, match="bgr"):
        Preprocess("bgr")


@pytest.mark.parametrize(
    "module",
    [
        "keras_rmac.layers.region_proposal",
        "keras_rmac.layers.rmac_pooling",
        "keras_rmac.layers.l2_normalize",
        "keras_rmac.layers.shift_pca",
        "keras_rmac.layers.mac_pooling",
        "keras_rmac.layers.spoc_pooling",
        "keras_rmac.layers.gem_pooling",
        "keras_rmac.layers.preprocess",
    ],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.failed == 0
