import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.layers import GeMPooling
from keras_rmac.layers import L2Normalize
from keras_rmac.layers import MACPooling
from keras_rmac.layers import SPoCPooling
from keras_rmac.layers import functional
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


# A zero vector, tiny values (their squares vanish in float16), large ones
# (their squares overflow float16) and an ordinary one.
HALF_CASES = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [1e-4, 2e-4, 0.0, 2e-4],
        [300.0, 400.0, 0.0, 0.0],
        [3.0, 0.0, 4.0, 0.0],
    ],
    "float32",
)


def test_l2_normalize_under_mixed_float16_zero_tiny_and_large_vectors():
    layer = L2Normalize(dtype="mixed_float16")
    got = layer(HALF_CASES)
    assert got.dtype == tf.float16
    x = HALF_CASES.astype(np.float64)
    want = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    np.testing.assert_allclose(got.numpy().astype(np.float64), want, atol=1e-3)
    assert np.all(got.numpy()[0] == 0)
    run_layer_test(
        L2Normalize,
        {},
        HALF_CASES,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
    )


def test_l2_normalize_float16_tensor_and_its_gradient():
    x = tf.constant(HALF_CASES, tf.float16)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = functional.l2_normalize(x)
        total = tf.reduce_sum(tf.cast(y, tf.float32))
    assert y.dtype == tf.float16
    assert np.all(np.isfinite(y.numpy())) and np.all(y.numpy()[0] == 0)
    grad = tape.gradient(total, x).numpy().astype(np.float64)
    # The zero row passes no gradient (1 / epsilon is past float16).
    assert np.all(grad[0] == 0)
    # The others: d(sum(x / |x|))/dx = (1 - y * sum(y)) / |x|, in float64.
    rows = HALF_CASES[1:].astype(np.float16).astype(np.float64)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / norm
    want = (1 - unit * unit.sum(axis=1, keepdims=True)) / norm
    np.testing.assert_allclose(grad[1:], want, rtol=2e-3, atol=1e-3)


def test_l2_normalize_float16_zero_region_after_relu_keeps_gradients_finite():
    # A region whose activations a ReLU zeroed, under a loss scale of
    # 2^15 (mixed_float16's initial one): the step's gradient must stay
    # finite (inf * relu'(0) = NaN would make the loss-scale optimizer
    # skip it), and the other rows' gradient is unchanged.
    x = tf.constant([[0.0, -1.0, -2.0], [3.0, 4.0, -1.0]], tf.float16)
    weights = tf.constant([[1.0, 1.0, 1.0], [1.0, -1.0, 0.5]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = L2Normalize(dtype="mixed_float16")(tf.nn.relu(x))
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights) * 2.0**15
    grad = tape.gradient(loss, x).numpy().astype(np.float64)
    assert np.all(np.isfinite(grad)) and np.all(grad[0] == 0)
    # Row 1: h = (3, 4, 0), |h| = 5, dL/dh = (I - u u^T) w / |h| * 2^15,
    # and relu'(-1) = 0 on its last entry.
    u = np.array([0.6, 0.8, 0.0])
    w = np.array([1.0, -1.0, 0.5])
    want = (w - u * (u @ w)) / 5 * 2.0**15 * np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(grad[1], want, rtol=2e-3)


def test_gem_under_mixed_float16_does_not_overflow_on_large_activations():
    # 100^3 = 1e6 is past float16's largest value, 65504.
    x = X * 100
    got = GeMPooling(p=3.0, dtype="mixed_float16")(x)
    assert got.dtype == tf.float16
    want = np.mean(np.maximum(x, 1e-6).astype(np.float64) ** 3, axis=(1, 2))
    np.testing.assert_allclose(
        got.numpy()[:, 0].astype(np.float64), want ** (1 / 3), rtol=2e-3
    )


def test_l2_normalize_layer_contract():
    run_layer_test(
        L2Normalize,
        {"axis": -1, "epsilon": 1e-6},
        X,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
    )


def test_mac_spoc_match_numpy():
    np.testing.assert_allclose(
        MACPooling()(X).numpy()[:, 0], X.max(axis=(1, 2)), rtol=1e-6
    )
    np.testing.assert_allclose(
        SPoCPooling()(X).numpy()[:, 0], X.mean(axis=(1, 2)), rtol=1e-6
    )
    for layer_cls in (MACPooling, SPoCPooling):
        run_layer_test(
            layer_cls,
            {},
            X,
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
        )


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
    run_layer_test(
        GeMPooling,
        {"p": 2.5},
        X,
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
    )
    run_layer_test(
        GeMPooling,
        {"p": 2.5, "trainable_p": False},
        X,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
    )


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
    run_layer_test(
        Preprocess,
        {"mode": mode},
        x,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        atol=1e-4,
    )


def test_preprocess_rejects_unknown_mode():
    with pytest.raises(ValueError, match="bgr"):
        Preprocess("bgr")
