import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.layers import L2Normalize
from keras_rmac.layers import RMACPooling
from tests.helpers import run_layer_test
from tests.layers.grid_oracle import oracle_regions

SHAPES = [(h, w) for h in range(1, 41) for w in range(1, 41)]


def oracle_region_vectors(x, regions):
    """Max over each region of (B, H, W, C), by explicit loops."""
    out = np.zeros((x.shape[0], len(regions), x.shape[3]), x.dtype)
    for r, (rx, ry, rw, rh) in enumerate(regions):
        for b in range(x.shape[0]):
            out[b, r] = (
                x[b, ry : ry + rh, rx : rx + rw, :]
                .reshape(-1, x.shape[3])
                .max(0)
            )
    return out


def oracle_rmac(x, regions):
    """Plain R-MAC: per-region L2, sum over regions, L2 (float64)."""
    v = oracle_region_vectors(x, regions).astype(np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-6)
    s = v.sum(axis=1)
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-6)


@pytest.fixture(scope="module")
def traced_pool():
    pool = RMACPooling()
    l2 = L2Normalize()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4])])
    def run(x):
        vectors = pool(x)
        return vectors, l2(tf.reduce_sum(l2(vectors), axis=1))

    return run


def test_region_vectors_and_rmac_match_oracle_for_every_map_up_to_40x40(
    traced_pool,
):
    rng = np.random.default_rng(0)
    for h, w in SHAPES:
        # Some zeros, as after a ReLU, so that regions can be all-zero.
        x = np.maximum(rng.normal(size=(2, h, w, 4)), 0).astype("float32")
        regions = oracle_regions(h, w)
        vectors, rmac = traced_pool(x)
        np.testing.assert_array_equal(
            vectors.numpy(),
            oracle_region_vectors(x, regions),
            err_msg=f"{h}x{w}",
        )
        np.testing.assert_allclose(
            rmac.numpy(),
            oracle_rmac(x, regions),
            atol=1e-5,
            err_msg=f"{h}x{w}",
        )


@pytest.mark.parametrize(
    "h,w", [(1, 1), (1, 40), (40, 1), (5, 9), (2, 32), (17, 17), (24, 31)]
)
def test_static_unrolled_path_matches_oracle(h, w):
    x = np.random.default_rng(1).normal(size=(3, h, w, 5)).astype("float32")
    got = RMACPooling()(x).numpy()
    np.testing.assert_array_equal(
        got, oracle_region_vectors(x, oracle_regions(h, w))
    )


def test_gradient_flows_through_traced_path_to_region_maxima():
    x = tf.constant(np.random.default_rng(2).random((1, 6, 10, 3)), tf.float32)
    pool = RMACPooling()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3])])
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(pool(x))
        return tape.gradient(y, x)

    g = grad(x).numpy()
    # d(sum of region maxima)/dx counts, at each cell, the regions whose
    # maximum it is.
    want = np.zeros_like(x.numpy())
    for rx, ry, rw, rh in oracle_regions(6, 10):
        patch = x.numpy()[0, ry : ry + rh, rx : rx + rw, :]
        for c in range(3):
            iy, ix = np.unravel_index(np.argmax(patch[..., c]), patch.shape[:2])
            want[0, ry + iy, rx + ix, c] += 1
    np.testing.assert_allclose(g, want)


def test_layer_serialization_and_calls():
    x = np.random.default_rng(3).random((2, 7, 9, 6)).astype("float32")
    run_layer_test(
        RMACPooling,
        {"levels": 2, "overlap": 0.4, "include_global": False},
        x,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        expected_output=oracle_region_vectors(
            x, oracle_regions(7, 9, 2, 0.4, False)
        ),
    )
