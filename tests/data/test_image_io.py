"""Tests for keras_rmac.data.image_io.

Every file, good or bad, is generated here in tmp_path with Pillow or raw
bytes (a small hand-written PNG encoder gives 16-bit and forged headers
independently of Pillow's writer). Expected colours come from the format
definitions (ink colours, EXIF orientation semantics, alpha compositing
formula), not from the code under test.
"""

import pathlib
import pickle
import struct
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL import ImageFile

from keras_rmac.data import image_io
from keras_rmac.data.image_io import DEFAULT_MAX_PIXELS
from keras_rmac.data.image_io import IMAGE_EXTENSIONS
from keras_rmac.data.image_io import MIN_SIDE
from keras_rmac.data.image_io import ImageError
from keras_rmac.data.image_io import list_images
from keras_rmac.data.image_io import load_image
from keras_rmac.data.image_io import load_images

# ---------------------------------------------------------------------------
# Helpers: an independent minimal PNG writer and test images.
# ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(pixels: np.ndarray, color_type: int, extra=b"") -> bytes:
    """PNG bytes for a uint8/uint16 (H, W[, C]) array, filter type 0."""
    height, width = pixels.shape[:2]
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    ihdr = struct.pack(
        ">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0
    )
    big_endian = pixels.astype(pixels.dtype.newbyteorder(">"))
    rows = big_endian.reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def _forge_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrites the IHDR width/height (and its CRC) of a valid PNG."""
    data = bytearray(png)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def _quadrants(height=48, width=80) -> np.ndarray:
    """Asymmetric image: four flat colours with a white top-left marker."""
    image = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    image[:h2, :w2] = (220, 30, 30)
    image[:h2, w2:] = (30, 220, 30)
    image[h2:, :w2] = (30, 30, 220)
    image[h2:, w2:] = (220, 220, 30)
    image[:8, :8] = 255
    return image


def _write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.write_bytes(data)
    return path


def _assert_image_error(path, match, **kwargs):
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    assert str(err) == f"{path}: {err.reason}"
    assert match in err.reason, err.reason
    return err


# ---------------------------------------------------------------------------
# Bad files.
# ---------------------------------------------------------------------------


@pytest.fixture
def good_jpeg(tmp_path):
    path = tmp_path / "good.jpg"
    Image.fromarray(_quadrants()).save(path, quality=95)
    return path


def test_good_jpeg_str_and_path(good_jpeg):
    for path in (good_jpeg, str(good_jpeg)):
        image = load_image(path)
        assert image.shape == (48, 80, 3)
        assert image.dtype == np.uint8
        assert np.abs(image.astype(int) - _quadrants()).mean() < 3


def test_truncated_jpeg(tmp_path, good_jpeg):
    data = good_jpeg.read_bytes()
    path = _write(tmp_path / "cut.jpg", data[: len(data) // 2])
    _assert_image_error(path, "corrupt or truncated JPEG")


def test_jpeg_with_destroyed_header(tmp_path, good_jpeg):
    data = bytearray(good_jpeg.read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = b"\x00\x00\x00\x00"  # 0x0 frame size
    path = _write(tmp_path / "header.jpg", bytes(data))
    _assert_image_error(path, "corrupt JPEG header")


def test_jpeg_with_garbage_in_scan_data(tmp_path, good_jpeg):
    # libjpeg resynchronises on some scan damage and decodes with artefacts
    # (it only warns); either outcome is acceptable, anything else is not.
    data = bytearray(good_jpeg.read_bytes())
    middle = len(data) // 2
    rng = np.random.default_rng(0)
    data[middle : middle + 64] = rng.integers(0, 255, 64, np.uint8).tobytes()
    path = _write(tmp_path / "garbage.jpg", bytes(data))
    try:
        image = load_image(path)
    except ImageError as err:
        assert str(path) in str(err)
    else:
        assert image.shape == (48, 80, 3) and image.dtype == np.uint8


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("This is a text file, not a photo.\nSecond line.\n")
    _assert_image_error(path, "not an image file (looks like text)")


def test_html_error_page_named_jpg(tmp_path):
    path = tmp_path / "page.jpg"
    path.write_text("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>")
    _assert_image_error(path, "looks like HTML")


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(1)
    path = _write(tmp_path / "noise.png", rng.bytes(500))
    _assert_image_error(path, "not a recognised image format")


def test_zero_byte_file(tmp_path):
    path = _write(tmp_path / "empty.jpg", b"")
    _assert_image_error(path, "empty file (0 bytes)")


def test_one_pixel_image(tmp_path):
    path = tmp_path / "pixel.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    err = _assert_image_error(path, "image too small (1x1)")
    assert f"{MIN_SIDE}x{MIN_SIDE}" in err.reason


def test_min_side_boundary(tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (500, MIN_SIDE - 1)).save(thin)
    _assert_image_error(thin, f"(500x{MIN_SIDE - 1})")
    ok = tmp_path / "ok.png"
    Image.new("RGB", (MIN_SIDE, MIN_SIDE), (1, 2, 3)).save(ok)
    assert load_image(ok).shape == (MIN_SIDE, MIN_SIDE, 3)
    assert load_image(thin, min_side=1).shape == (MIN_SIDE - 1, 500, 3)


def test_directory_named_jpg(tmp_path):
    path = tmp_path / "x.jpg"
    path.mkdir()
    _assert_image_error(path, "is a directory")


def test_missing_file(tmp_path):
    _assert_image_error(tmp_path / "missing.jpg", "file not found")


def test_png_with_bad_header_crc(tmp_path):
    png = bytearray(_png(np.zeros((8, 8), np.uint8), color_type=0))
    png[29] ^= 0xFF  # IHDR CRC
    path = _write(tmp_path / "crc.png", bytes(png))
    _assert_image_error(path, "corrupt PNG header")


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 255, (64, 64, 3), np.uint8)
    png = _png(pixels, color_type=2)
    path = _write(tmp_path / "cut.png", png[: len(png) // 2])
    _assert_image_error(path, "corrupt or truncated PNG")


def test_no_raw_exception_escapes_random_damage(tmp_path):
    # Truncations and byte flips at many positions of a JPEG and a PNG:
    # the result is always an array or an ImageError naming the file.
    rng = np.random.default_rng(3)
    image = _quadrants(32, 40)
    sources = []
    for fmt in ("JPEG", "PNG"):
        path = tmp_path / f"src.{fmt.lower()}"
        Image.fromarray(image).save(path, format=fmt)
        sources.append(path.read_bytes())
    outcomes = {"array": 0, "error": 0}
    for i in range(120):
        data = bytearray(sources[i % 2])
        if i % 3 == 0:
            data = data[: rng.integers(1, len(data))]
        else:
            for pos in rng.integers(0, len(data), size=1 + i % 5):
                data[pos] = rng.integers(0, 256)
        path = _write(tmp_path / f"damaged_{i}.img", bytes(data))
        try:
            result = load_image(path)
        except ImageError as err:
            assert str(path) in str(err) and err.reason
            outcomes["error"] += 1
        else:
            assert result.dtype == np.uint8 and result.ndim == 3
            assert result.shape[2] == 3
            outcomes["array"] += 1
    assert outcomes["error"] > 0


# ---------------------------------------------------------------------------
# Decompression bombs.
# ---------------------------------------------------------------------------


@pytest.fixture
def no_decode(monkeypatch):
    """Records (instead of running) any pixel decoding."""
    calls = []

    def fake_load(self):
        calls.append(self.size)
        raise RuntimeError("pixel decoding must not start")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fake_load)
    return calls


@pytest.mark.parametrize(
    "width, height, match",
    [
        # Above 2 * PIL.Image.MAX_IMAGE_PIXELS: Pillow refuses in open().
        (50000, 50000, "image too large"),
        # Between Pillow's warning level and ours: our declared-size check.
        (12000, 12000, "declared 12000x12000 pixels exceeds max_pixels"),
    ],
)
def test_decompression_bomb_rejected_before_decoding(
    tmp_path, no_decode, width, height, match
):
    small = _png(np.zeros((16, 16), np.uint8), color_type=0)
    path = _write(tmp_path / "bomb.png", _forge_png_size(small, width, height))
    assert width * height > DEFAULT_MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's bomb warning must not leak
        _assert_image_error(path, match)
    assert no_decode == []


def test_max_pixels_argument(tmp_path, no_decode):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(path)
    _assert_image_error(
        path, "declared 20x10 pixels exceeds max_pixels=199", max_pixels=199
    )
    assert no_decode == []


def test_pillow_bomb_limits_become_image_error(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (5, 6, 7)).save(path)  # 256 pixels
    # Pillow warns (256 > 200) but our max_pixels allows it: loads, and the
    # warning does not leak.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).shape == (16, 16, 3)
    # Pillow's hard error (256 > 2 * 100) becomes ImageError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _assert_image_error(path, "decompression bomb")


# ---------------------------------------------------------------------------
# Colour modes.
# ---------------------------------------------------------------------------


def test_cmyk_jpeg_colours(tmp_path):
    inks = {  # CMYK ink -> RGB by definition of the inks
        (255, 0, 0, 0): (0, 255, 255),
        (0, 255, 0, 0): (255, 0, 255),
        (0, 0, 255, 0): (255, 255, 0),
        (0, 0, 0, 255): (0, 0, 0),
        (0, 0, 0, 0): (255, 255, 255),
    }
    image = Image.new("CMYK", (16 * len(inks), 16))
    for i, ink in enumerate(inks):
        image.paste(ink, (16 * i, 0, 16 * (i + 1), 16))
    path = tmp_path / "cmyk.jpg"
    image.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    rgb = load_image(path)
    assert rgb.shape == (16, 16 * len(inks), 3)
    for i, expected in enumerate(inks.values()):
        got = rgb[8, 16 * i + 8].astype(int)
        assert np.abs(got - expected).max() <= 12, (i, got, expected)


def test_16bit_grayscale_png_scaled_by_value(tmp_path):
    values = np.array(
        [0, 1, 128, 129, 257, 1000, 32896, 65535]
        + list(range(300, 56300, 1000)),
        np.uint16,
    ).reshape(8, 8)
    path = _write(tmp_path / "gray16.png", _png(values, color_type=0))
    assert Image.open(path).mode.startswith("I")
    rgb = load_image(path)
    expected = np.round(values / 257.0)  # no ties: 257 is odd
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], expected)
    assert rgb[0, 5, 0] == 4  # 1000 is scaled, not clipped to 255


def test_16bit_grayscale_png_with_transparent_value(tmp_path):
    values = np.full((8, 8), 25700, np.uint16)  # 25700 / 257 = 100
    values[0, :] = 1234
    trns = _chunk(b"tRNS", struct.pack(">H", 1234))
    path = _write(tmp_path / "trns16.png", _png(values, 0, extra=trns))
    rgb = load_image(path)
    assert (rgb[0] == 255).all()  # transparent -> white
    assert (rgb[1:] == 100).all()


def test_16bit_rgb_png(tmp_path):
    rng = np.random.default_rng(4)
    values = rng.integers(0, 65536, (8, 12, 3)).astype(np.uint16)
    values[0, 0] = (0, 65535, 1000)
    path = _write(tmp_path / "rgb16.png", _png(values, color_type=2))
    rgb = load_image(path)
    assert rgb.shape == (8, 12, 3)
    np.testing.assert_allclose(rgb, np.round(values / 257.0), atol=1)
    np.testing.assert_array_equal(rgb[0, 0], (0, 255, 3))


def _on_white(colour, alpha):
    """Reference compositing in floating point."""
    a = alpha / 255.0
    return np.floor(np.asarray(colour) * a + 255.0 * (1 - a) + 0.5)


def test_palette_png_with_per_entry_alpha(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
    alphas = [255, 0, 128, 64]
    indices = np.repeat(np.arange(4, dtype=np.uint8), 4).reshape(1, 16)
    image = Image.fromarray(np.repeat(indices, 8, axis=0), mode="P")
    image.putpalette(palette)
    path = tmp_path / "palette.png"
    image.save(path, transparency=bytes(alphas))
    assert Image.open(path).mode == "P"
    rgb = load_image(path)
    assert rgb.shape == (8, 16, 3)
    for i, alpha in enumerate(alphas):
        expected = _on_white(palette[3 * i : 3 * i + 3], alpha)
        np.testing.assert_array_equal(rgb[4, 4 * i], expected)


def test_palette_png_with_transparent_index(tmp_path):
    indices = np.zeros((8, 8), np.uint8)
    indices[:, 4:] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 40, 80, 120])
    path = tmp_path / "index.png"
    image.save(path, transparency=0)
    rgb = load_image(path)
    assert (rgb[:, :4] == 255).all()
    assert (rgb[:, 4:] == (40, 80, 120)).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_white(tmp_path, mode):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50) if mode == "RGBA" else 100
    rgba[..., 3] = np.arange(64).reshape(8, 8) * 4
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    path = tmp_path / f"{mode}.png"
    image.save(path)
    rgb = load_image(path)
    colour = (200, 100, 50) if mode == "RGBA" else (100, 100, 100)
    expected = _on_white(colour, rgba[..., 3:4].astype(float))
    np.testing.assert_array_equal(rgb, expected)


def test_grayscale_jpeg(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.new("L", (10, 12), 77).save(path)
    rgb = load_image(path)
    assert rgb.shape == (12, 10, 3)
    assert (np.abs(rgb.astype(int) - 77) <= 1).all()


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(path), "n_frames", 1) == 2
    rgb = load_image(path)
    assert rgb.shape == (10, 12, 3)
    assert (rgb == (255, 0, 0)).all()


# ---------------------------------------------------------------------------
# EXIF orientation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "orientation, stored_from_upright",
    [
        # 6: row 0 is the visual right side -> stored = upright turned CCW.
        (6, lambda u: np.rot90(u, 1)),
        # 3: rotated 180 degrees.
        (3, lambda u: np.rot90(u, 2)),
        # 8: row 0 is the visual left side -> stored = upright turned CW.
        (8, lambda u: np.rot90(u, -1)),
    ],
)
def test_exif_orientation(tmp_path, orientation, stored_from_upright):
    upright = _quadrants()
    stored = np.ascontiguousarray(stored_from_upright(upright))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"orient{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    plain = tmp_path / "plain.jpg"
    Image.fromarray(stored).save(plain, quality=95)

    rgb = load_image(path)
    assert rgb.shape == upright.shape
    assert np.abs(rgb.astype(int) - upright).mean() < 3
    # Without the tag the stored pixels come back as stored.
    assert np.abs(load_image(plain).astype(int) - stored).mean() < 3


# ---------------------------------------------------------------------------
# ImageError.
# ---------------------------------------------------------------------------


def test_image_error_attributes_and_pickle():
    err = ImageError("a/b.jpg", "empty file (0 bytes)")
    assert isinstance(err, ValueError)
    assert str(err) == "a/b.jpg: empty file (0 bytes)"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, str(copy)) == (
        err.path,
        err.reason,
        str(err),
    )


def test_bad_arguments(tmp_path, good_jpeg):
    with pytest.raises(TypeError, match="path"):
        load_image(None)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(good_jpeg, max_pixels=0)
    with pytest.raises(ValueError, match="num_workers"):
        load_images([good_jpeg], num_workers=-1)


# ---------------------------------------------------------------------------
# load_images.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 3])
def test_load_images_mixed_order(tmp_path, good_jpeg, num_workers):
    text = tmp_path / "t.jpg"
    text.write_text("hello world")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    other = tmp_path / "other.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(other)
    paths = [good_jpeg, text, other, tmp_path / "gone.jpg", tiny, str(other)]
    results = list(load_images(paths, num_workers=num_workers))
    assert [i for i, _ in results] == list(range(len(paths)))
    kinds = [isinstance(r, ImageError) for _, r in results]
    assert kinds == [False, True, False, True, True, False]
    np.testing.assert_array_equal(results[0][1], load_image(good_jpeg))
    assert results[2][1].shape == (20, 30, 3)
    assert "looks like text" in results[1][1].reason
    assert "file not found" in results[3][1].reason
    assert "too small" in results[4][1].reason
    assert results[3][1].path == str(tmp_path / "gone.jpg")


def test_load_images_threads_keep_order_and_bound_lookahead(monkeypatch):
    threads = set()

    def fake_load(path, max_pixels, min_side, **draft):
        threads.add(threading.current_thread().name)
        time.sleep(0.02 * (path % 3 == 0))  # some slow, finishing late
        return np.full((1, 1, 3), path, np.uint8)

    monkeypatch.setattr(image_io, "load_image", fake_load)
    pulled = []

    def paths():
        for i in range(100):
            pulled.append(i)
            yield i

    stream = load_images(paths(), num_workers=3, prefetch=5)
    index, first = next(stream)
    assert index == 0 and first[0, 0, 0] == 0
    assert len(pulled) == 5  # bounded look-ahead, not the whole list
    rest = list(stream)
    assert [i for i, _ in rest] == list(range(1, 100))
    assert all(r[0, 0, 0] == i for i, r in rest)
    assert threading.current_thread().name not in threads
    assert all(name.startswith("keras_rmac_decode") for name in threads)


def test_load_images_early_close(monkeypatch):
    calls = []

    def fake_load(path, max_pixels, min_side, **draft):
        calls.append(path)
        time.sleep(0.01)
        return np.zeros((1, 1, 3), np.uint8)

    monkeypatch.setattr(image_io, "load_image", fake_load)
    stream = load_images(range(1000), num_workers=2, prefetch=4)
    for index, _ in stream:
        if index == 2:
            break
    stream.close()
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count  # nothing keeps decoding after close
    assert count <= 3 + 4


# ---------------------------------------------------------------------------
# list_images.
# ---------------------------------------------------------------------------


def test_list_images(tmp_path):
    files = [
        "a.JPG",
        "b.png",
        "c.txt",
        ".hidden.jpg",
        ".git/x.jpg",
        "sub/d.jpeg",
        "sub/deep/e.WebP",
        "sub/f.TIFF",
        "noext",
        "g.ppm",
    ]
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()
    expected = sorted(
        str(tmp_path / n)
        for n in [
            "a.JPG",
            "b.png",
            "g.ppm",
            "sub/d.jpeg",
            "sub/deep/e.WebP",
            "sub/f.TIFF",
        ]
    )
    assert list_images(tmp_path) == expected
    assert list_images(str(tmp_path), recursive=False) == sorted(
        str(tmp_path / n) for n in ["a.JPG", "b.png", "g.ppm"]
    )
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "b.png")


def test_extension_set_includes_pgm_and_pillow_reads_every_one(tmp_path):
    # The one extension set of the package: every member is a format that
    # load_image decodes (written here by Pillow), `.pgm` included.
    assert ".pgm" in IMAGE_EXTENSIONS
    assert IMAGE_EXTENSIONS == {
        ".bmp",
        ".gif",
        ".jpeg",
        ".jpg",
        ".pgm",
        ".png",
        ".ppm",
        ".tif",
        ".tiff",
        ".webp",
    }
    pixels = np.full((9, 11, 3), 90, np.uint8)
    for extension in sorted(IMAGE_EXTENSIONS):
        path = tmp_path / f"img{extension}"
        image = Image.fromarray(pixels)
        if extension == ".pgm":
            image = image.convert("L")
        image.save(path)
        got = load_image(path)
        assert got.shape == (9, 11, 3), extension
        assert abs(int(got[4, 5, 0]) - 90) <= 2, extension
    assert list_images(tmp_path) == sorted(
        str(tmp_path / f"img{e}") for e in IMAGE_EXTENSIONS
    )


def test_sixteen_bit_pgm_scaled_by_value(tmp_path):
    # A binary 16-bit PGM (maxval 65535, big-endian), written by hand.
    values = np.array([[0, 257, 32896, 65535]], ">u2")
    path = tmp_path / "deep.PGM"
    path.write_bytes(b"P5\n4 1\n65535\n" + values.tobytes())
    got = load_image(path, min_side=1)
    assert got[0, :, 0].tolist() == [0, 1, 128, 255]
    assert image_io.is_image_file(path)


def test_is_image_file():
    assert image_io.is_image_file("a/b/Cat.JPG")
    assert image_io.is_image_file(pathlib.Path("x.pgm"))
    assert not image_io.is_image_file("a/.hidden.png")
    assert not image_io.is_image_file("notes.txt")
    assert not image_io.is_image_file("noext")
