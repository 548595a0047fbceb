"""Big photos: reduced JPEG decoding above `draft_above`, and `max_pixels`
on the decoded size (keras_rmac.data.pixel_limits through load_image).

The large files are 6000x4000 (24 MP) images written once per module in a
temporary folder; the thresholds are lowered to match instead of writing
108 MP files.
"""

import warnings

import numpy as np
import pytest
from PIL import Image
from PIL import ImageFile

from keras_rmac.data import pixel_limits
from keras_rmac.data.image_io import DEFAULT_DRAFT_ABOVE
from keras_rmac.data.image_io import DEFAULT_MAX_PIXELS
from keras_rmac.data.image_io import ImageError
from keras_rmac.data.image_io import load_image
from keras_rmac.data.image_io import load_images

WIDTH, HEIGHT = 6000, 4000
PIXELS = WIDTH * HEIGHT


def _pixels():
    """A 4000x6000 RGB image with gradients and fine stripes (detail)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack(
        [x * 255 // WIDTH, y * 255 // HEIGHT, (x * 7 + y * 3) % 256], -1
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """name -> path of 6000x4000 files: baseline, progressive and gray
    JPEGs and a PNG."""
    folder = tmp_path_factory.mktemp("big")
    image = Image.fromarray(_pixels())
    paths = {
        "jpeg": folder / "big.jpg",
        "progressive": folder / "progressive.jpg",
        "gray": folder / "gray.jpg",
        "png": folder / "big.png",
    }
    image.save(paths["jpeg"], quality=90)
    image.save(paths["progressive"], quality=90, progressive=True)
    image.convert("L").save(paths["gray"], quality=90)
    image.save(paths["png"], compress_level=1)
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture
def no_decode(monkeypatch):
    """Fails any pixel decoding."""

    def fake_load(self):
        raise AssertionError("pixel decoding must not start")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fake_load)


def _pillow_draft(path, scale):
    """Pillow's own reduced decoding at 1/scale (the oracle)."""
    with Image.open(path) as im:
        im.draft(im.mode, (im.size[0] // scale, im.size[1] // scale))
        return np.asarray(im.convert("RGB"))


def test_reduced_decoding_only_above_the_threshold(big):
    path = big["jpeg"]
    whole = (HEIGHT, WIDTH, 3)
    # Above draft_above: 1/4, the largest reduction whose longest side
    # (1500) is still at least twice the 512 the resize needs (1/8 would
    # give 750 < 1024).
    reduced = load_image(path, draft_size=512, draft_above=PIXELS - 1)
    assert reduced.shape == (1000, 1500, 3)
    np.testing.assert_array_equal(reduced, _pillow_draft(path, 4))
    # Not above the threshold (equal), no threshold, no size: whole.
    assert load_image(path, draft_size=512, draft_above=PIXELS).shape == whole
    assert load_image(path, draft_size=512, draft_above=None).shape == whole
    assert load_image(path, draft_above=0).shape == whole
    # The default threshold (100 MP) leaves this 24 MP photo whole.
    assert load_image(path, draft_size=512).shape == whole
    # The reduction keeps the longest side >= 2 * draft_size.
    for draft_size, shape in [
        (375, (500, 750, 3)),  # 6000 = 2 * 8 * 375
        (376, (1000, 1500, 3)),
        (800, (2000, 3000, 3)),
        (1500, (2000, 3000, 3)),  # 6000 = 2 * 2 * 1500
        (1501, whole),
    ]:
        image = load_image(path, draft_size=draft_size, draft_above=0)
        assert image.shape == shape, draft_size


def test_other_formats_never_reduced(big):
    image = load_image(big["png"], draft_size=512, draft_above=0)
    assert image.shape == (HEIGHT, WIDTH, 3)


def test_big_jpeg_above_max_pixels_accepted_when_reduced(big):
    # 24 MP declared, 10 MP allowed: decodable at 1/4 (1,500,000 pixels).
    for name in ("jpeg", "gray"):
        image = load_image(
            big[name],
            max_pixels=10_000_000,
            draft_size=512,
            draft_above=10_000_000,
        )
        assert image.shape == (1000, 1500, 3)
        np.testing.assert_array_equal(image, _pillow_draft(big[name], 4))
    stream = load_images(
        [big["jpeg"]],
        num_workers=1,
        max_pixels=10_000_000,
        draft_size=512,
        draft_above=10_000_000,
    )
    assert [image.shape for _, image in stream] == [(1000, 1500, 3)]


def _assert_refused(path, *fragments, **options):
    with pytest.raises(ImageError) as info:
        load_image(path, **options)
    message = str(info.value)
    assert info.value.path == path
    for fragment in (path, *fragments):
        assert fragment in message, message


def test_max_pixels_still_refuses_a_big_png(big, no_decode):
    _assert_refused(
        big["png"],
        "declared 6000x4000 pixels exceeds max_pixels=10,000,000",
        "24,000,000 pixels",
        "--max-pixels",
        "max_pixels=",
        max_pixels=10_000_000,
        draft_size=512,
        draft_above=0,
    )


def test_jpeg_refused_when_not_reduced(big, no_decode):
    # No size to reduce to (e.g. max_size=None): decoded whole, refused.
    _assert_refused(
        big["jpeg"],
        "declared 6000x4000 pixels exceeds max_pixels=10,000,000",
        "--max-pixels",
        max_pixels=10_000_000,
        draft_above=0,
    )
    # Reduced, but still too large: the reduced size is named.
    _assert_refused(
        big["jpeg"],
        "decoded at reduced scale to 3000x2000 = 6,000,000 pixels",
        "max_pixels=5,000,000",
        "--max-pixels",
        max_pixels=5_000_000,
        draft_size=800,
        draft_above=0,
    )


def test_progressive_jpeg_held_to_its_declared_size(big, no_decode):
    # libjpeg buffers a progressive JPEG's whole coefficients, reduced or
    # not: the declared size counts.
    _assert_refused(
        big["progressive"],
        "declared 6000x4000 pixels exceeds max_pixels=10,000,000",
        "progressive JPEG",
        "--max-pixels",
        max_pixels=10_000_000,
        draft_size=512,
        draft_above=0,
    )


def test_progressive_jpeg_reduced_within_the_limit(big):
    image = load_image(big["progressive"], draft_size=512, draft_above=0)
    assert image.shape == (1000, 1500, 3)
    np.testing.assert_array_equal(image, _pillow_draft(big["progressive"], 4))


def test_jpeg_above_pillows_hard_limit(big, monkeypatch):
    # Pillow refuses above 2 * MAX_IMAGE_PIXELS (about 179 MP by default)
    # in Image.open; a JPEG is opened all the same and our limits decide.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(big["jpeg"], draft_size=512, draft_above=0)
    assert image.shape == (1000, 1500, 3)
    # Other formats are still refused by Pillow, with the way out named.
    _assert_refused(big["png"], "PIL.Image.MAX_IMAGE_PIXELS", "--max-pixels")


def test_default_limits_take_big_phone_photos():
    # The 108 MP (12000x9000) and a 200 MP (16320x12240) photo at
    # max_size 512 decode at 1/8 and fit the default limit; a 12 MP photo
    # (below the threshold) decodes whole, as in 0.2.0.
    for width, height in ((12000, 9000), (16320, 12240)):
        scale = pixel_limits.jpeg_scale(width, height, 512, DEFAULT_DRAFT_ABOVE)
        assert scale == 8
        decoded = pixel_limits.reduced_size(width, height, scale)
        assert max(decoded) >= 2 * 512
        assert (
            pixel_limits.too_large(width, height, decoded, DEFAULT_MAX_PIXELS)
            is None
        )
        # Progressive or not reduced: refused as before.
        assert pixel_limits.too_large(
            width, height, decoded, DEFAULT_MAX_PIXELS, progressive=True
        )
        assert pixel_limits.too_large(
            width, height, (width, height), DEFAULT_MAX_PIXELS
        )
    assert pixel_limits.jpeg_scale(4000, 3000, 512, DEFAULT_DRAFT_ABOVE) == 1
    assert pixel_limits.reduced_size(16321, 12241, 8) == (2041, 1531)


def test_bad_draft_arguments(big):
    with pytest.raises(ValueError, match="draft_size"):
        load_image(big["jpeg"], draft_size=0)
    with pytest.raises(ValueError, match="draft_above"):
        load_image(big["jpeg"], draft_above=-1)
    with pytest.raises(TypeError, match="draft_size"):
        load_image(big["jpeg"], draft_size="512")
    with pytest.raises(TypeError, match="draft_above"):
        list(load_images([big["jpeg"]], draft_above=1.5))
