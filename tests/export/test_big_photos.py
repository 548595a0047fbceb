"""Reduced JPEG decoding in the serving graph equals `load_image`'s, and
the served descriptors of large JPEGs equal `RMACModel.extract`'s."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_rmac.data import image_io
from keras_rmac.export import decode_image_bytes
from keras_rmac.export import export_saved_model
from keras_rmac.export.serving import Serving

WIDTH, HEIGHT = 1203, 805  # Odd sizes: libjpeg rounds reduced sides up.


def _texture(mode):
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x % 256, y % 256, (x * 5 + y * 3) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """name -> path of 1203x805 JPEGs of several kinds."""
    folder = tmp_path_factory.mktemp("jpegs")
    kinds = {
        "420": ("RGB", {}),
        "444": ("RGB", {"subsampling": 0, "quality": 95}),
        "progressive": ("RGB", {"progressive": True}),
        "gray": ("L", {}),
        "cmyk": ("CMYK", {}),
    }
    paths = {}
    for name, (mode, options) in kinds.items():
        path = str(folder / f"{name}.jpg")
        _texture(mode).save(path, "JPEG", **options)
        paths[name] = path
    return paths


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _graph(**options):
    return tf.function(
        lambda data: decode_image_bytes(data, **options),
        input_signature=[tf.TensorSpec([], tf.string)],
    )


@pytest.mark.parametrize("draft_size", [64, 100, 300, 700])
def test_reduced_decoding_matches_load_image(jpegs, draft_size):
    decode = _graph(draft_size=draft_size, draft_above=0)
    for name, path in jpegs.items():
        expected = image_io.load_image(
            path, draft_size=draft_size, draft_above=0
        )
        # 1/8, 1/4, 1/2, whole: the longest side stays >= 2 * draft_size.
        assert max(expected.shape) < WIDTH or 4 * draft_size > WIDTH
        got = decode(tf.constant(_read(path))).numpy()
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_threshold_is_exclusive(jpegs):
    data = tf.constant(_read(jpegs["420"]))
    whole = _graph(draft_size=64, draft_above=WIDTH * HEIGHT)(data)
    assert whole.shape == (HEIGHT, WIDTH, 3)
    reduced = _graph(draft_size=64, draft_above=WIDTH * HEIGHT - 1)(data)
    assert reduced.shape == (101, 151, 3)  # ceil(805 / 8), ceil(1203 / 8)
    assert _graph(draft_above=0)(data).shape == (HEIGHT, WIDTH, 3)


def test_max_pixels_on_the_reduced_size(jpegs):
    small = 200_000  # Below 1203 x 805, above the reduced 1/4 size.
    data = tf.constant(_read(jpegs["420"]))
    decode = _graph(max_pixels=small, draft_size=150, draft_above=0)
    assert decode(data).shape == (202, 301, 3)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="header declares 1203x805"
    ):
        _graph(max_pixels=small)(data)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="decoded at scale 1/2 to 602x403"
    ):
        _graph(max_pixels=small, draft_size=300, draft_above=0)(data)
    # A progressive JPEG is held to its declared size, as in load_image.
    progressive = tf.constant(_read(jpegs["progressive"]))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="header declares 1203x805"
    ):
        decode(progressive)
    with pytest.raises(image_io.ImageError, match="progressive"):
        image_io.load_image(
            jpegs["progressive"],
            max_pixels=small,
            draft_size=150,
            draft_above=0,
        )


def test_serving_equals_extract_on_large_jpegs(tiny_model, jpegs):
    paths = [jpegs["420"], jpegs["gray"]]
    scales, max_size = (1.0, 0.5), 64
    serving = Serving(tiny_model, scales, max_size, 10**8, 8, draft_above=0)
    got = serving.from_bytes(tf.constant([_read(p) for p in paths]))
    got = got["descriptor"].numpy()
    expected = tiny_model.extract(
        paths, max_size=max_size, scales=scales, draft_above=0
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    whole = tiny_model.extract(
        paths, max_size=max_size, scales=scales, draft_above=None
    )
    assert np.abs(whole - expected).max() > 1e-4  # Reduction took place.


def test_export_records_the_threshold(tiny_model, tmp_path):
    out = export_saved_model(
        tiny_model, tmp_path / "rmac", max_size=64, warmup_images=()
    )
    with open(os.path.join(out, "assets.extra", "keras_rmac_export.json")) as f:
        meta = json.load(f)
    assert meta["draft_above"] == image_io.DEFAULT_DRAFT_ABOVE
    # Below the threshold the export decodes whole, as extract does.
    buf = io.BytesIO()
    _texture("RGB").save(buf, "JPEG")
    served = (
        tf.saved_model.load(out)
        .signatures["serving_default"](
            image_bytes=tf.constant([buf.getvalue()])
        )["descriptor"]
        .numpy()
    )
    pixels = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    np.testing.assert_allclose(
        served, tiny_model.extract(pixels, max_size=64), atol=1e-5
    )
