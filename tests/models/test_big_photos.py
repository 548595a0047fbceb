"""`RMACModel.extract(draft_above=...)`: large JPEG files are decoded at
reduced scale, down to the largest size they are resized to."""

import numpy as np
import pytest
from PIL import Image

from keras_rmac.data import image_io
from tests.export.helpers import tiny_rmac_model


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    y, x = np.mgrid[0:800, 0:1200]
    rgb = np.stack([x % 256, y % 256, (x * 5 + y * 3) % 256], -1)
    path = str(tmp_path_factory.mktemp("photo") / "photo.jpg")
    Image.fromarray(rgb.astype(np.uint8)).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def model():
    return tiny_rmac_model()


def test_extract_decodes_large_jpegs_reduced(model, photo):
    # At scales (1, 0.5) the largest resize is 64 and 1200 >= 2 * 8 * 64:
    # the 1200x800 file is decoded at 1/8 (150x100).
    scales = (1.0, 0.5)
    reduced = image_io.load_image(photo, draft_size=64, draft_above=0)
    assert reduced.shape == (100, 150, 3)
    got = model.extract([photo], max_size=64, scales=scales, draft_above=0)
    expected = model.extract(reduced, max_size=64, scales=scales)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    whole = model.extract(
        image_io.load_image(photo), max_size=64, scales=scales
    )
    assert np.abs(got - whole).max() > 1e-4  # The reduction took place.
    # Not above the threshold (equal; the default 100 MP), or no threshold:
    # decoded whole, as before.
    for draft_above in (1200 * 800, image_io.DEFAULT_DRAFT_ABOVE, None):
        np.testing.assert_allclose(
            model.extract(
                [photo], max_size=64, scales=scales, draft_above=draft_above
            ),
            whole,
            atol=1e-6,
        )
    np.testing.assert_allclose(
        model.extract([photo], max_size=64, scales=scales), whole, atol=1e-6
    )


def test_larger_scale_sets_the_reduction(model, photo):
    # With a scale of 2 at max_size 150 the largest resize is 300: only 1/2
    # keeps the longest side at least twice that (600 >= 600).
    got = model.extract([photo], max_size=150, scales=(2.0,), draft_above=0)
    reduced = image_io.load_image(photo, draft_size=300, draft_above=0)
    assert reduced.shape == (400, 600, 3)
    expected = model.extract(reduced, max_size=150, scales=(2.0,))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # No max_size: images keep their size, nothing is reduced.
    native = model.extract([photo], draft_above=0)
    np.testing.assert_allclose(
        native, model.extract(image_io.load_image(photo)), atol=1e-6
    )
