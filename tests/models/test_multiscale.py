"""The multi-resolution rule shared by RMACModel.extract and the export."""

import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.models import multiscale


def test_validate_scales():
    assert multiscale.validate_scales([1, 0.5]) == (1.0, 0.5)
    for bad in ([], [1.0, 0.0], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="scales"):
            multiscale.validate_scales(bad)


def test_scale_sizes_round_half_to_even_and_floor_at_one():
    assert multiscale.scale_sizes(48, (1.0, 0.707, 0.5)) == [48, 34, 24]
    # 65 * 0.5 = 32.5 and 63 * 0.5 = 31.5: half to even.
    assert multiscale.scale_sizes(None, (0.5,), longest=65) == [32]
    assert multiscale.scale_sizes(None, (0.5,), longest=63) == [32]
    assert multiscale.scale_sizes(3, (0.1,)) == [1]
    # max_size wins over the image's own size.
    assert multiscale.scale_sizes(10, (1.0,), longest=99) == [10]
    assert multiscale.scale_sizes(None, (1.0, 0.5)) == [None, None]


@pytest.mark.parametrize("scale", [1.0, 0.707, 0.5, 0.25, 1.5])
def test_scale_size_tensor_equals_scale_sizes(scale):
    longest = np.arange(1, 300, dtype=np.int32)
    fn = tf.function(
        lambda x: tf.map_fn(lambda n: multiscale.scale_size_tensor(n, scale), x)
    )
    got = fn(tf.constant(longest)).numpy()
    want = [multiscale.scale_sizes(None, (scale,), int(n))[0] for n in longest]
    assert got.tolist() == want
    fixed = multiscale.scale_size_tensor(tf.constant(7), scale, max_size=48)
    assert int(fixed) == multiscale.scale_sizes(48, (scale,))[0]


def _normalised(rng, shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_sum_over_scales_numpy_and_tensors_agree_with_oracle():
    rng = np.random.default_rng(0)
    per_scale = [_normalised(rng, (5, 7)) for _ in range(3)]
    oracle = np.zeros((5, 7))
    for d in per_scale:
        oracle += d
    oracle /= np.linalg.norm(oracle, axis=1, keepdims=True)
    got = multiscale.sum_over_scales(per_scale)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, oracle, atol=1e-7)
    graph = tf.function(multiscale.sum_over_scales)
    tensor = graph([tf.constant(d) for d in per_scale])
    assert tensor.dtype == tf.float32
    np.testing.assert_allclose(tensor.numpy(), got, rtol=0, atol=1e-7)


def test_sum_over_scales_one_scale_is_unchanged_and_zero_sum_is_zero():
    rng = np.random.default_rng(1)
    one = _normalised(rng, (2, 4))
    assert multiscale.sum_over_scales([one]) is one
    opposite = multiscale.sum_over_scales([one, -one])
    np.testing.assert_array_equal(opposite, np.zeros((2, 4), np.float32))
