"""Tests for keras_rmac.data.resize (and its names in image_io).

The size rule is checked against an exact reference in fractions, the
values against Pillow's bilinear resize, and the op in `tf.function` with
unknown shapes and in a SavedModel.
"""

import fractions

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_rmac.data import image_io
from keras_rmac.data import resize
from keras_rmac.data.resize import resize_longest_side
from keras_rmac.data.resize import target_size


def test_image_io_still_exports_the_resize_names():
    from keras_rmac.data.image_io import resize_longest_side as old_resize
    from keras_rmac.data.image_io import target_size as old_size

    assert old_resize is resize_longest_side and old_size is target_size
    assert image_io._target_size_tensor is resize._target_size_tensor
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        image_io.nothing  # noqa: B018


# ---------------------------------------------------------------------------
# Resizing.
# ---------------------------------------------------------------------------


def _reference_size(height, width, max_size):
    """Exact round-half-up of side * max_size / longest with Fractions."""
    longest = max(height, width)

    def side(s):
        value = fractions.Fraction(s * max_size, longest) + fractions.Fraction(
            1, 2
        )
        return max(1, value.numerator // value.denominator)

    return side(height), side(width)


SIZE_CASES = [
    (1, 1, 1),
    (1, 1, 512),
    (1, 10000, 512),
    (10000, 1, 7),
    (2, 10000, 1024),
    (3, 2, 1),
    (4, 2, 5),  # 2.5 -> 3 (half up)
    (2, 4, 5),
    (6, 4, 3),  # 2.0 exactly
    (768, 1024, 512),
    (1024, 768, 1024),
    (500, 333, 224),
    (333, 500, 1000),  # upscale
    (17, 17, 4),
    (4000, 3000, 1024),
    (5000, 3, 64),
    (3, 5000, 2),
]


def test_target_size_matches_exact_reference():
    cases = list(SIZE_CASES)
    for h in range(1, 41):
        for w in range(1, 41):
            for m in (1, 2, 3, 7, 16, 31, 224):
                cases.append((h, w, m))
    for h, w, m in cases:
        got = target_size(h, w, m)
        assert got == _reference_size(h, w, m), (h, w, m)
        assert max(got) == m
    assert target_size(4, 2, 5) == (5, 3)
    assert target_size(7, 9, None) == (7, 9)
    with pytest.raises(ValueError, match="max_size"):
        target_size(7, 9, 0)
    with pytest.raises(ValueError, match="height"):
        target_size(0, 9, 4)


def test_graph_size_rule_agrees_with_python():
    rng = np.random.default_rng(5)
    h = np.concatenate([[1, 1, 10000, 3], rng.integers(1, 5000, 3000)])
    w = np.concatenate([[1, 10000, 1, 5000], rng.integers(1, 5000, 3000)])
    m = np.concatenate([[1, 512, 7, 2], rng.integers(1, 2048, 3000)])

    spec = tf.TensorSpec([None], tf.int64)

    @tf.function(input_signature=[spec, spec, spec])
    def graph_size(h, w, m):
        return resize._target_size_tensor(h, w, m)

    gh, gw = graph_size(h, w, m)
    expected = np.array([target_size(*c) for c in zip(h, w, m)])
    np.testing.assert_array_equal(np.stack([gh, gw], axis=1), expected)


def test_resize_in_tf_function_with_unknown_shape():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def resize_512(image):
        return resize_longest_side(image, 512)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, 3], tf.float32),
            tf.TensorSpec([], tf.int32),
        ]
    )
    def resize_any(image, max_size):
        return resize_longest_side(image, max_size)

    concrete = resize_512.get_concrete_function()
    assert concrete.structured_outputs.shape.as_list() == [None, None, 3]
    for h, w, m in SIZE_CASES:
        image = tf.zeros((h, w, 3), tf.float32)
        out = resize_any(image, m)
        assert tuple(out.shape[:2]) == _reference_size(h, w, m), (h, w, m)
        if m == 512:
            assert tuple(resize_512(image).shape[:2]) == target_size(h, w, 512)


def test_resize_values_match_pillow_bilinear():
    # Pillow's BILINEAR filter also widens its triangle kernel when shrinking
    # (antialiasing): an independent implementation of the same resampling.
    rng = np.random.default_rng(6)
    for h, w, m in [(60, 90, 30), (37, 53, 20), (20, 30, 77), (7, 300, 64)]:
        image = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        out = resize_longest_side(image, m).numpy()
        nh, nw = target_size(h, w, m)
        reference = np.stack(
            [
                np.asarray(
                    Image.fromarray(image[..., c], mode="F").resize(
                        (nw, nh), Image.BILINEAR
                    )
                )
                for c in range(3)
            ],
            axis=-1,
        )
        np.testing.assert_allclose(out, reference, atol=0.01)


def test_resize_batch_and_constant_image():
    rng = np.random.default_rng(7)
    batch = rng.uniform(0, 255, (2, 30, 50, 3)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3])])
    def resize(images):
        return resize_longest_side(images, 20)

    out = resize(batch).numpy()
    assert out.shape == (2, 12, 20, 3)
    for i in range(2):
        np.testing.assert_allclose(
            out[i], resize_longest_side(batch[i], 20).numpy(), atol=1e-4
        )
    constant = np.full((13, 7, 3), 123.0, np.float32)
    np.testing.assert_allclose(
        resize_longest_side(constant, 40), 123.0, atol=1e-3
    )


def test_resize_static_shape_none_and_errors():
    image = np.arange(600 * 800 * 3, dtype=np.uint8).reshape(600, 800, 3)
    out = resize_longest_side(image, 400)
    assert out.dtype == tf.float32 and out.shape.as_list() == [300, 400, 3]
    same = resize_longest_side(image, None)
    assert same.dtype == tf.float32
    np.testing.assert_array_equal(same.numpy(), image.astype(np.float32))
    with pytest.raises(ValueError, match="max_size"):
        resize_longest_side(image, 0)
    with pytest.raises(ValueError, match="shape"):
        resize_longest_side(np.zeros((4, 4), np.float32), 2)


def test_resize_in_saved_model(tmp_path):
    module = tf.Module()
    module.resize = tf.function(
        lambda image: resize_longest_side(image, 16),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
    )
    tf.saved_model.save(module, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    out = loaded.resize(tf.zeros((5, 40, 3)))
    assert out.shape == (2, 16, 3)
