"""In-graph decoding (`decode_image_bytes`) against `image_io.load_image`."""

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_rmac.data import image_io
from keras_rmac.export import decode_image_bytes
from tests.export.helpers import png_bytes


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decode_graph(data):
    return decode_image_bytes(data)


def _encode(image, fmt, **kwargs):
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _rng_image(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def _extra_files():
    """name -> bytes of colour modes not in `write_images`."""
    rgb = _rng_image(21, 34)
    rgba = _rng_image(21, 34, 4)
    rgba[0, :5, 3] = 0  # Fully transparent pixels.
    rgba[1, :5, 3] = 255
    palette = Image.fromarray(rgb).quantize(8)
    rng = np.random.default_rng(1)
    gray16 = rng.integers(0, 65536, (17, 12), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    rgba16 = rng.integers(0, 65536, (9, 11, 4), dtype=np.uint16)
    return {
        "rgba.png": _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "la.png": _encode(Image.fromarray(rgba[..., ::3], "LA"), "PNG"),
        "palette_trns.png": _encode(palette, "PNG", transparency=2),
        "bilevel.png": _encode(Image.fromarray(rgb[..., 0] > 128), "PNG"),
        "gray16.png": _encode(Image.fromarray(gray16), "PNG"),
        "rgb16.png": png_bytes(
            11, 9, 16, 2, [r.astype(">u2").tobytes() for r in rgb16]
        ),
        "rgba16.png": png_bytes(
            11, 9, 16, 6, [r.astype(">u2").tobytes() for r in rgba16]
        ),
        "q95_444.jpg": _encode(
            Image.fromarray(rgb), "JPEG", quality=95, subsampling=0
        ),
        "progressive.jpg": _encode(
            Image.fromarray(rgb), "JPEG", progressive=True
        ),
        "cmyk.jpg": _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "lossless.webp": _encode(Image.fromarray(rgb), "WEBP", lossless=True),
    }


def test_decoding_matches_load_image(image_files, tmp_path):
    files = {p: open(p, "rb").read() for p in image_files}
    for name, data in _extra_files().items():
        path = tmp_path / name
        path.write_bytes(data)
        files[str(path)] = data
    for path, data in files.items():
        expected = image_io.load_image(path)
        got = _decode_graph(tf.constant(data)).numpy()
        assert got.dtype == np.uint8, path
        assert got.shape == expected.shape, path
        diff = np.abs(got.astype(int) - expected.astype(int)).max()
        assert diff == 0, f"{path}: max difference {diff}"


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "empty"),
        (b"this is not an image at all", "Unknown image file format"),
        (b"<html><body>404</body></html>", "Unknown image file format"),
    ],
)
def test_non_images_raise_invalid_argument(data, fragment):
    with pytest.raises(tf.errors.InvalidArgumentError, match=fragment):
        _decode_graph(tf.constant(data))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_raise_invalid_argument(fmt):
    data = _encode(Image.fromarray(_rng_image(40, 50)), fmt)
    _decode_graph(tf.constant(data))  # The whole file is fine.
    with pytest.raises(tf.errors.InvalidArgumentError):
        _decode_graph(tf.constant(data[: len(data) // 2]))


def test_declared_size_checked_before_decoding():
    # A 50000 x 40000 PNG header with no pixel data: refused on the header
    # (the message gives the declared size), never decoded.
    bomb = png_bytes(50000, 40000, 8, 2, None)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="header declares 50000x40000"
    ):
        _decode_graph(tf.constant(bomb))


@pytest.mark.parametrize(
    "fmt, width, height",
    [("JPEG", 40, 30), ("PNG", 60, 41), ("GIF", 36, 24)],
)
def test_max_pixels_on_header(fmt, width, height):
    image = Image.fromarray(_rng_image(height, width))
    data = tf.constant(_encode(image, fmt))
    pixels = width * height
    out = decode_image_bytes(data, max_pixels=pixels)  # Limit inclusive.
    assert out.shape == (height, width, 3)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=f"header declares {width}x{height} pixels",
    ):
        decode_image_bytes(data, max_pixels=pixels - 1)


def test_max_pixels_after_decoding_for_bmp():
    data = tf.constant(_encode(Image.fromarray(_rng_image(30, 31)), "BMP"))
    assert decode_image_bytes(data, max_pixels=930).shape == (30, 31, 3)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="decoded size 31x30"
    ):
        decode_image_bytes(data, max_pixels=929)


def test_min_side(tmp_path):
    ok = _encode(Image.fromarray(_rng_image(20, 8)), "PNG")
    assert _decode_graph(tf.constant(ok)).shape == (20, 8, 3)
    small = _encode(Image.fromarray(_rng_image(20, 7)), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"small \(7x20\)"):
        _decode_graph(tf.constant(small))
    # The same policy as load_image, which refuses the same file.
    path = tmp_path / "thin.png"
    path.write_bytes(small)
    with pytest.raises(image_io.ImageError, match="too small"):
        image_io.load_image(path)


def test_gif_header_size_is_width_then_height():
    # GIF stores the logical screen as little-endian width, height.
    data = _encode(Image.fromarray(_rng_image(24, 36)), "GIF")
    assert struct.unpack("<HH", data[6:10]) == (36, 24)
    with pytest.raises(tf.errors.InvalidArgumentError, match="36x24"):
        decode_image_bytes(tf.constant(data), max_pixels=100)
