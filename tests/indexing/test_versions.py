"""The version marker: generations built aside, switched atomically."""

import json
import os
import shutil

import numpy as np
import pytest

from keras_rmac import indexing
from keras_rmac.indexing import layout
from tests.cli import photos
from tests.cli.photos import cli
from tests.indexing import interrupt

KWARGS = dict(max_size=64, mode="exact", verbose=0)


@pytest.fixture(scope="module")
def model():
    return photos.tiny_model(seed=0)


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


def _folder(root, count, start=0):
    for i in range(start, start + count):
        photos.save(root / f"p{i:02d}.png", photos.photo(i))
    return root


def _args(root, index_dir, model_file, *extra):
    return [
        "index",
        str(root),
        "--index",
        str(index_dir),
        "--model",
        model_file,
        "--max-size",
        "64",
        "--mode",
        "exact",
        "--shard-size",
        "2",
        "-q",
        *extra,
    ]


def _hits(index_dir, query, k=4):
    hits = indexing.PhotoIndex(index_dir).search(query, k=k)
    return [(h.path, round(h.score, 5)) for h in hits]


def _generations(index_dir):
    root = index_dir / layout.GENERATIONS_DIR
    return sorted(int(n) for n in os.listdir(root)) if root.is_dir() else []


def test_each_change_is_a_new_generation_and_readers_follow_the_marker(
    tmp_path, model
):
    root = _folder(tmp_path / "photos", 3)
    index_dir = tmp_path / "index"
    assert indexing.current_generation(index_dir) is None
    indexing.index_folder(root, index_dir, model=model, **KWARGS)
    assert indexing.current_generation(index_dir) == 1
    first = indexing.PhotoIndex(index_dir)
    assert (first.version, first.is_current, len(first)) == (1, True, 3)

    # Nothing changed: no new version.
    indexing.index_folder(root, index_dir, **KWARGS)
    assert indexing.current_generation(index_dir) == 1

    _folder(root, 1, start=3)
    indexing.index_folder(root, index_dir, **KWARGS)
    assert indexing.current_generation(index_dir) == 2
    assert not first.is_current and len(first) == 3  # Still usable.
    second = indexing.PhotoIndex(index_dir)
    assert (second.version, len(second)) == (2, 4)
    assert _generations(index_dir) == [1, 2]  # The previous one is kept.

    # A reader opens whatever the marker names.
    marker = layout.read_marker(index_dir)
    layout.fileio.atomic_write_json(
        index_dir / layout.CURRENT_FILE, dict(marker, generation=1)
    )
    assert indexing.PhotoIndex(index_dir).version == 1
    assert len(indexing.PhotoIndex(index_dir)) == 3
    layout.fileio.atomic_write_json(index_dir / layout.CURRENT_FILE, marker)

    # The next switch deletes the generation before the previous one.
    os.remove(root / "p00.png")
    indexing.index_folder(root, index_dir, **KWARGS)
    assert indexing.current_generation(index_dir) == 3
    assert _generations(index_dir) == [2, 3]
    assert sorted(indexing.PhotoIndex(index_dir).paths) == [
        "p01.png",
        "p02.png",
        "p03.png",
    ]


def test_killed_between_build_and_switch_leaves_the_old_version(
    tmp_path, tiny_keras
):
    root = _folder(tmp_path / "photos", 4)
    index_dir = tmp_path / "index"
    assert cli(_args(root, index_dir, tiny_keras)) == 0
    before = _hits(index_dir, root / "p01.png")
    _folder(root, 2, start=4)

    interrupt.kill_at("switch", _args(root, index_dir, tiny_keras), tmp_path)
    # The new version was built (generation 2) but is not the current one.
    assert _generations(index_dir) == [1, 2]
    assert indexing.current_generation(index_dir) == 1
    index = indexing.PhotoIndex(index_dir)
    assert (index.version, len(index)) == (1, 4)
    assert _hits(index_dir, root / "p01.png") == before

    assert cli(_args(root, index_dir, tiny_keras)) == 0  # Finishes.
    with open(index_dir / layout.REPORT_FILE) as f:
        assert json.load(f)["extracted"] == 0  # The shards were committed.
    assert indexing.current_generation(index_dir) == 3
    assert _generations(index_dir) == [1, 3]  # The unused 2 is gone.
    assert len(indexing.PhotoIndex(index_dir)) == 6


def test_rebuild_builds_aside_and_never_wipes_first(tmp_path, tiny_keras):
    root = _folder(tmp_path / "photos", 6)
    index_dir = tmp_path / "index"
    assert cli(_args(root, index_dir, tiny_keras)) == 0
    before = _hits(index_dir, root / "p02.png")
    old_fingerprint = indexing.PhotoIndex(index_dir).fingerprint
    other = tmp_path / "other.keras"
    photos.tiny_model(seed=1).save(other)
    rebuild = _args(root, index_dir, str(other), "--rebuild")

    # Killed in the middle of the rebuild: the old version is untouched.
    interrupt.kill_at("commit:1", rebuild, tmp_path)
    assert (index_dir / layout.REBUILD_DIR).is_dir()
    index = indexing.PhotoIndex(index_dir)
    assert (index.version, index.fingerprint) == (1, old_fingerprint)
    assert _hits(index_dir, root / "p02.png") == before
    recorded = indexing.recorded_settings(index_dir)
    assert recorded["fingerprint"] == old_fingerprint
    # The old store was not touched either: a plain run reuses it all
    # (and drops the abandoned rebuild).
    assert cli(_args(root, index_dir, tiny_keras)) == 0
    with open(index_dir / layout.REPORT_FILE) as f:
        report = json.load(f)
    assert (report["extracted"], report["reused"]) == (0, 6)
    assert not (index_dir / layout.REBUILD_DIR).exists()

    # A rebuild that finishes switches to the new model's version.
    assert cli(rebuild) == 0
    after = indexing.PhotoIndex(index_dir)
    assert after.version == 2
    assert after.fingerprint == indexing.load_rmac_model(other).fingerprint()
    assert after.fingerprint != old_fingerprint
    assert indexing.recorded_settings(index_dir)["fingerprint"] == (
        after.fingerprint
    )
    assert not (index_dir / layout.REBUILD_DIR).exists()
    # The store is the new model's: a plain run describes nothing.
    assert cli(_args(root, index_dir, str(other))) == 0
    with open(index_dir / layout.REPORT_FILE) as f:
        assert json.load(f)["extracted"] == 0


def test_a_move_cut_short_after_the_switch_is_completed(tmp_path):
    index_dir = tmp_path / "index"
    staging = index_dir / layout.REBUILD_DIR
    (staging / ".work" / "shards").mkdir(parents=True)
    (staging / ".work" / "shards" / "new").write_text("new")
    (index_dir / ".work" / "shards").mkdir(parents=True)
    (index_dir / ".work" / "shards" / "old").write_text("old")
    (staging / layout.SETTINGS_FILE).write_text('{"new": 1}')
    (index_dir / layout.SETTINGS_FILE).write_text('{"old": 1}')
    layout.mark_rebuild_complete(str(index_dir))
    # model.keras was already moved when the run was killed.
    (index_dir / layout.MODEL_FILE).write_text("new model")

    layout.finish_rebuild(str(index_dir))
    assert os.listdir(index_dir / ".work" / "shards") == ["new"]
    assert (index_dir / layout.SETTINGS_FILE).read_text() == '{"new": 1}'
    assert (index_dir / layout.MODEL_FILE).read_text() == "new model"
    assert not staging.exists()

    # Without the flag (killed before its switch) a rebuild is dropped.
    (staging / ".work").mkdir(parents=True)
    layout.finish_rebuild(str(index_dir))
    assert not staging.exists()
    assert os.listdir(index_dir / ".work" / "shards") == ["new"]


def _as_written_by_0_2_0(index_dir):
    """Turns an index directory into the layout keras_rmac 0.2.0 wrote."""
    version = layout.current_version(index_dir)
    shutil.move(version.searchable, index_dir / layout.SEARCHABLE_DIR)
    shutil.rmtree(index_dir / layout.GENERATIONS_DIR)
    os.remove(index_dir / layout.CURRENT_FILE)
    manifest_path = index_dir / layout.SEARCHABLE_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    metadata = manifest["metadata"]
    metadata["descriptor_dim"] = metadata.pop("dimension")
    manifest_path.write_text(json.dumps(manifest))
    settings_path = index_dir / layout.SETTINGS_FILE
    settings = json.loads(settings_path.read_text())
    settings["descriptor_dim"] = settings.pop("dimension")
    settings["format"] = 1
    settings_path.write_text(json.dumps(settings))


def test_an_index_of_0_2_0_opens_and_is_upgraded(tmp_path, model):
    root = _folder(tmp_path / "photos", 4)
    index_dir = tmp_path / "index"
    indexing.index_folder(root, index_dir, model=model, **KWARGS)
    before = _hits(index_dir, root / "p03.png")
    _as_written_by_0_2_0(index_dir)

    assert indexing.current_generation(index_dir) == 0
    index = indexing.PhotoIndex(index_dir)
    assert (index.version, index.dimension) == (0, 16)
    assert _hits(index_dir, root / "p03.png") == before
    assert indexing.recorded_settings(index_dir)["dimension"] == 16
    # Query expansion reads the 0.2.0 store.
    ids = np.arange(len(index))
    assert index.stored_descriptors(ids).shape == (4, 16)

    # A run with nothing to do upgrades it without rebuilding.
    report = indexing.index_folder(root, index_dir, **KWARGS)
    assert (report.extracted, report.rebuilt) == (0, False)
    assert indexing.current_generation(index_dir) == 1
    assert _hits(index_dir, root / "p03.png") == before
    settings = json.loads((index_dir / layout.SETTINGS_FILE).read_text())
    assert settings["format"] == layout.SETTINGS_FORMAT
    assert settings["dimension"] == 16 and "descriptor_dim" not in settings
    # The 0.2.0 searchable/ is the previous version until the next switch.
    assert (index_dir / layout.SEARCHABLE_DIR).is_dir()
    _folder(root, 1, start=4)
    report = indexing.index_folder(root, index_dir, **KWARGS)
    assert (report.extracted, report.rebuilt) == (1, True)
    assert indexing.current_generation(index_dir) == 2
    assert not (index_dir / layout.SEARCHABLE_DIR).exists()
