"""Big photos in an index: reduced JPEG decoding (`draft_above`, recorded
in the index) and the pixel limit (`max_pixels`, retried on every run).

A JPEG over 100 megapixels is too big to write in a test, so these use a
small `draft_above`: the rules are the same at any threshold.
"""

import json

import numpy as np
import pytest

from keras_rmac import indexing
from keras_rmac.data import image_io
from keras_rmac.indexing import IndexSettings
from keras_rmac.indexing import plan
from tests.cli import photos

DRAFT = 1_000_000  # Below the 3 MP of the big JPEG.


@pytest.fixture(scope="module")
def model():
    return photos.tiny_model(seed=0)


def _big_jpeg(path, seed=0):
    """2000x1500 (3 MP): a smooth photo with fine noise, so reduced and
    whole decoding give clearly different pixels after the resize."""
    rng = np.random.default_rng(seed)
    base = photos.photo(seed, 2000, 1500).astype(np.int16)
    noisy = base + rng.integers(-40, 41, base.shape, dtype=np.int16)
    return photos.save(path, np.clip(noisy, 0, 255).astype(np.uint8))


def _folder(root):
    _big_jpeg(root / "big.jpg")
    photos.save(root / "small.png", photos.photo(1))
    return root


def _recorded(index_dir):
    with open(index_dir / "index.json") as f:
        return json.load(f)


def test_big_jpeg_decoded_reduced_as_extract(tmp_path, model):
    root = _folder(tmp_path / "photos")
    index_dir = tmp_path / "index"
    report = indexing.index_folder(
        root,
        index_dir,
        IndexSettings(draft_above=DRAFT, max_size=64, mode="exact"),
        model=model,
        verbose=0,
    )
    assert (report.indexed, report.failed) == (2, [])
    big = str(root / "big.jpg")
    reduced = model.extract([big], max_size=64, draft_above=DRAFT, verbose=0)
    whole = model.extract([big], max_size=64, draft_above=None, verbose=0)
    assert np.abs(reduced - whole).max() > 1e-3  # The test can tell them.
    index = indexing.PhotoIndex(index_dir)
    stored = index.stored_descriptors(np.array([index.paths.index("big.jpg")]))
    np.testing.assert_allclose(stored, reduced, atol=1e-5)
    # Queries are decoded as the photos were.
    assert index.draft_above == DRAFT
    np.testing.assert_allclose(index.extract(big), reduced[0], atol=1e-5)
    assert index.search(big, k=1)[0].path.endswith("big.jpg")
    recorded = _recorded(index_dir)
    assert recorded["draft_above"] == DRAFT
    assert recorded["max_pixels"] == image_io.DEFAULT_MAX_PIXELS


def test_draft_above_needs_a_rebuild_to_change(tmp_path, model):
    root = _folder(tmp_path / "photos")
    index_dir = tmp_path / "index"
    kwargs = dict(max_size=64, mode="exact", verbose=0)
    indexing.index_folder(root, index_dir, model=model, **kwargs)
    assert _recorded(index_dir)["draft_above"] == 100_000_000
    with pytest.raises(
        indexing.IndexMismatchError,
        match=r"draft_above=100,000,000 .*not 1,000,000: descriptors of two "
        r"decodings do not mix.*--rebuild",
    ):
        indexing.index_folder(root, index_dir, draft_above=DRAFT, **kwargs)
    assert _recorded(index_dir)["draft_above"] == 100_000_000
    report = indexing.index_folder(
        root, index_dir, draft_above=DRAFT, rebuild=True, **kwargs
    )
    assert report.extracted == 2
    assert _recorded(index_dir)["draft_above"] == DRAFT
    assert indexing.PhotoIndex(index_dir).draft_above == DRAFT
    # max_pixels may change between runs: it only decides what is taken.
    report = indexing.index_folder(
        root, index_dir, draft_above=DRAFT, max_pixels=4_000_000, **kwargs
    )
    assert (report.extracted, report.reused) == (0, 2)
    assert _recorded(index_dir)["max_pixels"] == 4_000_000


def test_unrecorded_draft_above_reads_as_100_megapixels(tmp_path, model):
    """Indexes older than the setting (0.2.0 refused every photo over
    100 MP, so decoded all of them whole) are read as 100 MP."""
    root = _folder(tmp_path / "photos")
    index_dir = tmp_path / "index"
    kwargs = dict(max_size=64, mode="exact", verbose=0)
    indexing.index_folder(root, index_dir, model=model, **kwargs)
    recorded = _recorded(index_dir)
    del recorded["draft_above"], recorded["max_pixels"]
    (index_dir / "index.json").write_text(json.dumps(recorded))
    with pytest.raises(indexing.IndexMismatchError, match="100,000,000"):
        indexing.index_folder(root, index_dir, draft_above=None, **kwargs)
    report = indexing.index_folder(root, index_dir, **kwargs)
    assert (report.extracted, report.reused) == (0, 2)
    assert indexing.recorded_draft_above({"max_size": 512}) == 100_000_000
    assert indexing.recorded_draft_above({"draft_above": None}) is None


def test_too_large_photos_are_retried(tmp_path, model):
    root = tmp_path / "photos"
    photos.save(root / "big.png", photos.photo(0, 200, 150))  # 30,000 px
    photos.save(root / "small.png", photos.photo(1))  # 3,072 px
    index_dir = tmp_path / "index"
    kwargs = dict(max_size=64, mode="exact", verbose=0)
    report = indexing.index_folder(
        root, index_dir, model=model, max_pixels=20_000, **kwargs
    )
    assert report.indexed == 1 and report.new_failures == 1
    assert report.failed[0]["path"] == "big.png"
    assert report.failed[0]["reason"].startswith(plan.TOO_LARGE)
    # Unchanged and still too large: tried again, refused as before.
    report = indexing.index_folder(root, index_dir, max_pixels=20_000, **kwargs)
    assert (report.indexed, report.new_failures, report.reused) == (1, 0, 2)
    assert report.extracted == 0 and len(report.failed) == 1
    # Raising the limit indexes it, without touching the file.
    report = indexing.index_folder(root, index_dir, max_pixels=40_000, **kwargs)
    assert (report.indexed, report.extracted, report.failed) == (2, 1, [])
    assert {
        r.path
        for r in indexing.PhotoIndex(index_dir).search(
            str(root / "big.png"), k=2
        )
    } == {str(root / "big.png"), str(root / "small.png")}
    # keras_rmac 0.2.0's reason starts the same way: its refusals of 108
    # and 200 MP phone photos are retried after the upgrade too.
    old = (
        "image too large: declared 12000x9000 pixels exceeds "
        "max_pixels=100,000,000 (possible decompression bomb); pass a "
        "larger `max_pixels` if the image is genuine"
    )
    assert old.startswith(plan.TOO_LARGE)
    # Other failures are not retried until the file changes.
    (root / "broken.jpg").write_bytes(b"not an image")
    indexing.index_folder(root, index_dir, **kwargs)
    report = indexing.index_folder(root, index_dir, **kwargs)
    assert (report.extracted, report.reused, report.new_failures) == (0, 3, 0)


def test_settings_validate_the_pixel_options():
    assert IndexSettings().max_pixels == image_io.DEFAULT_MAX_PIXELS
    assert IndexSettings().draft_above == image_io.DEFAULT_DRAFT_ABOVE
    assert IndexSettings(draft_above=None).draft_above is None
    with pytest.raises(ValueError, match="`max_pixels` must be an int >= 1"):
        IndexSettings(max_pixels=0)
    with pytest.raises(ValueError, match="`draft_above` must be an int >= 0"):
        IndexSettings(draft_above=-1)
    with pytest.raises(TypeError, match="`draft_above`"):
        IndexSettings(draft_above=1.5)
