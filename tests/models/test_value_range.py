"""Pixel value ranges: `value_range=` and the [0, 1] warning (issue 10)."""

import re
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_rmac.models import ValueRangeWarning
from keras_rmac.models import rescale_to_255
from keras_rmac.models import validate_value_range
from tests.models.test_rmac_model import tiny_model


def uint8_images(n=3, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def unit_floats(images):
    """What `tf.image.convert_image_dtype` makes of uint8 images."""
    out = tf.image.convert_image_dtype(images, tf.float32).numpy()
    assert out.dtype == np.float32 and 0.0 < out.max() <= 1.0
    return out


def range_warnings(record):
    return [w for w in record if issubclass(w.category, ValueRangeWarning)]


def test_unit_floats_with_value_range_match_uint8_descriptors():
    model = tiny_model()
    pixels = uint8_images()
    floats = unit_floats(pixels)
    for kwargs in ({}, {"max_size": 20, "scales": (1.0, 0.5)}):
        want = model.extract(pixels, verbose=0, **kwargs)
        got = model.extract(floats, value_range=(0, 1), verbose=0, **kwargs)
        np.testing.assert_allclose(got, want, atol=1e-5)
        # The same through a list of arrays and a batched dataset.
        for source in (
            list(floats),
            tf.data.Dataset.from_tensor_slices(floats).batch(2),
        ):
            got = model.extract(source, value_range=(0, 1), verbose=0, **kwargs)
            np.testing.assert_allclose(got, want, atol=1e-5)
    # Another range: [-1, 1] pixels.
    got = model.extract(floats * 2 - 1, value_range=(-1, 1), verbose=0)
    np.testing.assert_allclose(got, model.extract(pixels), atol=1e-5)
    # Unscaled, the [0, 1] floats give other descriptors: the check below
    # guards against a real mistake.
    with pytest.warns(ValueRangeWarning):
        wrong = model.extract(floats, verbose=0)
    assert np.abs(wrong - model.extract(pixels)).max() > 1e-2


def test_adapt_pca_takes_value_range():
    pixels = uint8_images(8, 32, 40, seed=1)
    want = tiny_model(pca_dim=4)
    want.adapt_pca(pixels, verbose=0)
    got = tiny_model(pca_dim=4)
    used = got.adapt_pca(unit_floats(pixels), value_range=(0, 1), verbose=0)
    assert used > 0
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(
            getattr(got.shift_pca, name).numpy(),
            getattr(want.shift_pca, name).numpy(),
            atol=1e-4,
        )


def test_default_range_leaves_descriptors_unchanged():
    model = tiny_model()
    pixels = uint8_images(seed=2)
    default = model.extract(pixels, verbose=0)
    explicit = model.extract(pixels, value_range=(0, 255), verbose=0)
    np.testing.assert_array_equal(explicit, default)
    # `rescale_to_255` returns 0..255 pixels themselves.
    assert rescale_to_255(pixels, (0.0, 255.0)) is pixels


def test_unit_range_floats_warn_once_per_model():
    model = tiny_model()
    floats = unit_floats(uint8_images(seed=3))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = model.extract(floats, verbose=0)
        second = model.extract(floats[:1], verbose=0)
        want = model.extract(floats, value_range=(0, 255), verbose=0)
        model.adapt_pca(floats, verbose=0)
    found = range_warnings(record)
    assert len(found) == 1
    message = str(found[0].message)
    assert "value_range=(0, 1)" in message
    assert "multiply" in message and "255" in message
    assert "RMACModel.extract" in message
    # Reported at the caller's line, not inside keras_rmac.
    assert found[0].filename == __file__
    # Carries on unchanged: the descriptors of the floats as given.
    np.testing.assert_allclose(second, first[:1], atol=1e-6)
    np.testing.assert_array_equal(first, want)


@pytest.mark.parametrize("source", ["dataset", "list", "adapt_pca"])
def test_unit_range_floats_warn_from_every_entry(source):
    model = tiny_model()
    floats = unit_floats(uint8_images(seed=4))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if source == "dataset":
            # Only the first element is checked: a batch of [0, 1] floats.
            data = tf.data.Dataset.from_tensor_slices(floats).batch(2)
            model.extract(data, verbose=0)
        elif source == "list":
            model.extract(list(floats), verbose=0)
        else:
            model.adapt_pca(floats, verbose=0)
    assert len(range_warnings(record)) == 1


def test_no_warning_for_0_255_integers_zeros_files_or_explicit_range(tmp_path):
    model = tiny_model()
    pixels = uint8_images(seed=5)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    floats = unit_floats(pixels)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.extract(pixels.astype(np.float32), verbose=0)  # 0..255 floats
        model.extract(pixels, verbose=0)  # uint8
        model.extract((pixels > 128).astype(np.uint8), verbose=0)  # 0/1 ints
        model.extract(np.zeros((2, 20, 20, 3), np.float32), verbose=0)
        model.extract(paths, verbose=0)
        model.extract(floats, value_range=(0, 1), verbose=0)
        model.extract(floats, value_range=(0, 255), verbose=0)
        model.adapt_pca(pixels, verbose=0)
        model.extract(tf.data.Dataset.from_tensor_slices(pixels), verbose=0)
    assert range_warnings(record) == []
    # The check is alive on this model: [0, 1] floats still warn.
    with pytest.warns(ValueRangeWarning):
        model.extract(floats, verbose=0)


@pytest.mark.parametrize(
    "value",
    [
        (1, 0),
        (1, 1),
        (0,),
        (0, 1, 2),
        5,
        "01",
        ("0", "1"),
        (0, float("nan")),
        (0, float("inf")),
        (False, True),
    ],
)
def test_bad_value_range_raises_naming_the_value(value):
    expected = re.escape(f"value_range={value!r}")
    with pytest.raises(ValueError, match=expected):
        validate_value_range(value)
    model = tiny_model()
    images = uint8_images(1)
    with pytest.raises(ValueError, match=expected):
        model.extract(images, value_range=value, verbose=0)
    with pytest.raises(ValueError, match=expected):
        model.adapt_pca(images, value_range=value, verbose=0)


def test_validate_value_range_accepts_numbers():
    assert validate_value_range(None) is None
    assert validate_value_range([0, 1]) == (0.0, 1.0)
    assert validate_value_range((np.float32(-1), np.int64(1))) == (-1.0, 1.0)
    got = rescale_to_255(np.array([-1.0, 0.0, 1.0]), (-1.0, 1.0))
    np.testing.assert_allclose(got, [0.0, 127.5, 255.0])
    tensor = rescale_to_255(tf.constant([0.0, 0.5, 1.0]), (0.0, 1.0))
    np.testing.assert_array_equal(tensor.numpy(), [0.0, 127.5, 255.0])
