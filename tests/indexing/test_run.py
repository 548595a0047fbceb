"""keras_rmac.indexing.index_folder: incremental runs and their settings."""

import json
import logging
import os

import numpy as np
import pytest

from keras_rmac import fileio
from keras_rmac import indexing
from keras_rmac.indexing import DescriptorStore
from keras_rmac.indexing import layout
from tests.cli import photos


@pytest.fixture(scope="module")
def model():
    return photos.tiny_model(seed=0)


def _folder(root, count, start=0):
    for i in range(start, start + count):
        photos.save(root / f"p{i:02d}.png", photos.photo(i))
    return root


def test_new_index_needs_a_model(tmp_path):
    _folder(tmp_path / "photos", 1)
    with pytest.raises(ValueError, match="pass `model=`"):
        indexing.index_folder(tmp_path / "photos", tmp_path / "index")


def test_settings_mismatch_refused(tmp_path, model):
    root = _folder(tmp_path / "photos", 3)
    index_dir = tmp_path / "index"
    indexing.index_folder(
        root, index_dir, model=model, max_size=64, mode="exact"
    )
    with pytest.raises(indexing.IndexMismatchError, match="max_size=64"):
        indexing.index_folder(root, index_dir, max_size=96)
    with pytest.raises(indexing.IndexMismatchError, match="scales"):
        indexing.index_folder(root, index_dir, scales=(1.0, 0.5))
    # Left out, they are the index's own.
    report = indexing.index_folder(root, index_dir, verbose=0)
    assert (report.extracted, report.reused) == (0, 3)


def test_mode_change_rebuilds_without_describing(tmp_path, model):
    root = _folder(tmp_path / "photos", 4)
    index_dir = tmp_path / "index"
    indexing.index_folder(
        root, index_dir, model=model, max_size=64, mode="exact"
    )
    report = indexing.index_folder(root, index_dir, mode="fast", verbose=0)
    assert (report.extracted, report.rebuilt, report.mode) == (0, True, "fast")
    with open(index_dir / "index.json") as f:
        assert json.load(f)["mode"] == "fast"


def test_hash_contents(tmp_path, model):
    root = tmp_path / "photos"
    for i in range(3):  # BMP: same size for any pixels of the same shape.
        photos.save(root / f"p{i}.bmp", photos.photo(i))
    index_dir = tmp_path / "index"
    kwargs = dict(max_size=64, mode="exact", verbose=0)
    indexing.index_folder(
        root, index_dir, model=model, hash_contents=True, **kwargs
    )
    # Touched: same bytes, new mtime. Not described again with hashing.
    st0 = os.stat(root / "p0.bmp")
    os.utime(root / "p0.bmp", ns=(st0.st_atime_ns, st0.st_mtime_ns + 10**9))
    # Edited, size and mtime kept: only the hash sees it.
    st1 = os.stat(root / "p1.bmp")
    photos.save(root / "p1.bmp", photos.photo(50))
    os.utime(root / "p1.bmp", ns=(st1.st_atime_ns, st1.st_mtime_ns))
    assert os.stat(root / "p1.bmp").st_size == st1.st_size
    report = indexing.index_folder(
        root, index_dir, hash_contents=True, **kwargs
    )
    assert (report.extracted, report.reused) == (1, 2)
    hits = indexing.PhotoIndex(index_dir).search(root / "p1.bmp", k=1)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # new content
    # Without hashing, touched files are described again: p2 now, and p0
    # whose record kept the mtime it was described with.
    st2 = os.stat(root / "p2.bmp")
    os.utime(root / "p2.bmp", ns=(st2.st_atime_ns, st2.st_mtime_ns + 10**9))
    report = indexing.index_folder(root, index_dir, **kwargs)
    assert (report.extracted, report.reused) == (2, 1)


def test_without_kept_descriptors(tmp_path, model, caplog):
    root = _folder(tmp_path / "photos", 4)
    index_dir = tmp_path / "index"
    kwargs = dict(max_size=64, mode="exact", verbose=0)
    first = indexing.index_folder(
        root, index_dir, model=model, keep_descriptors=False, **kwargs
    )
    assert first.indexed == 4
    shards = os.listdir(index_dir / ".work" / "shards")
    assert not [n for n in shards if n.endswith(".npy")]
    hits = indexing.PhotoIndex(index_dir).search(root / "p02.png", k=1)
    assert hits[0].path == str(root / "p02.png")
    # Query expansion takes the floats from the exact index itself.
    hits = indexing.PhotoIndex(index_dir).search(root / "p02.png", k=1, qe=1)
    assert hits[0].path == str(root / "p02.png")

    # Nothing changed: nothing to describe.
    again = indexing.index_folder(
        root, index_dir, keep_descriptors=False, **kwargs
    )
    assert (again.extracted, again.reused, again.rebuilt) == (0, 4, False)
    # A new photo: every photo has to be described again (documented).
    _folder(root, 1, start=10)
    with caplog.at_level(logging.WARNING):
        grown = indexing.index_folder(
            root, index_dir, keep_descriptors=False, **kwargs
        )
    assert "must be described again" in caplog.text
    assert (grown.extracted, grown.indexed) == (5, 5)


def test_report_file_and_summary(tmp_path, model):
    root = _folder(tmp_path / "photos", 2)
    (root / "zero.jpg").write_bytes(b"")
    index_dir = tmp_path / "index"
    report = indexing.index_folder(
        root, index_dir, model=model, max_size=64, mode="exact", verbose=0
    )
    with open(index_dir / "report.json") as f:
        saved = json.load(f)
    assert saved == report.to_dict()
    assert saved["failed"] == [
        {"path": "zero.jpg", "reason": "empty file (0 bytes)"}
    ]
    text = report.summary()
    assert "described 2" in text and "zero.jpg: empty file" in text


def test_extract_matches_model_on_files(tmp_path, model):
    """Stored descriptors are the model's descriptors of the files."""
    root = _folder(tmp_path / "photos", 5)
    index_dir = tmp_path / "index"
    indexing.index_folder(
        root,
        index_dir,
        model=model,
        max_size=40,
        scales=(1.0, 0.5),
        mode="exact",
        shard_size=2,
        batch_size=3,
        verbose=0,
    )
    index = indexing.PhotoIndex(index_dir)
    stored = index.stored_descriptors(np.arange(5))
    files = [str(root / p) for p in index.paths]
    expected = model.extract(files, max_size=40, scales=(1.0, 0.5), verbose=0)
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1, atol=1e-5)


def test_removed_files_are_forgotten_once(tmp_path, model):
    root = _folder(tmp_path / "photos", 4)
    index_dir = tmp_path / "index"
    kwargs = dict(max_size=64, mode="exact", verbose=0)
    indexing.index_folder(root, index_dir, model=model, **kwargs)
    os.remove(root / "p01.png")
    report = indexing.index_folder(root, index_dir, **kwargs)
    assert (report.removed, report.indexed, report.rebuilt) == (1, 3, True)
    report = indexing.index_folder(root, index_dir, **kwargs)
    assert (report.removed, report.extracted, report.rebuilt) == (0, 0, False)
    store = DescriptorStore(str(index_dir / ".work"), 16, writable=False)
    assert sorted(store.records) == ["p00.png", "p02.png", "p03.png"]
    # The file comes back: described again.
    _folder(root, 1, start=1)
    report = indexing.index_folder(root, index_dir, **kwargs)
    assert (report.extracted, report.indexed) == (1, 4)


def test_moved_folder(tmp_path, model):
    root = _folder(tmp_path / "photos", 3)
    index_dir = tmp_path / "index"
    kwargs = dict(max_size=64, mode="exact", verbose=0)
    indexing.index_folder(root, index_dir, model=model, **kwargs)
    moved = tmp_path / "moved"
    os.rename(root, moved)  # Keeps sizes and modification times.
    report = indexing.index_folder(moved, index_dir, **kwargs)
    assert (report.extracted, report.reused, report.rebuilt) == (0, 3, True)
    hits = indexing.PhotoIndex(index_dir).search(moved / "p02.png", k=1)
    assert hits[0].path == str(moved / "p02.png")


def test_second_indexer_is_refused(tmp_path, model):
    root = _folder(tmp_path / "photos", 1)
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    with fileio.FileLock(index_dir / layout.LOCK_FILE):
        with pytest.raises(indexing.IndexBusyError, match="Another process"):
            indexing.index_folder(root, index_dir, model=model, verbose=0)
    # Released: a run now goes through.
    indexing.index_folder(root, index_dir, model=model, max_size=64, verbose=0)
