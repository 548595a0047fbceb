"""Saving and loading indexes: round trips, relocation, checks, atomicity."""

import json
import os
import re

import numpy as np
import pytest

from keras_rmac.search import ExactIndex
from keras_rmac.search import IndexMismatchError
from keras_rmac.search import ScannIndex
from keras_rmac.search import load_index
from keras_rmac.search import storage
from tests.search.helpers import clustered
from tests.search.helpers import unit_rows

D = 32


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    x = clustered(rng, 3100, D, 150)
    return x[:3000], x[3000:]


def make(kind, db, paths=True):
    if kind == "exact":
        index = ExactIndex(D)
    elif kind == "fast":
        index = ScannIndex(D, mode="fast", num_leaves=30)
    elif kind == "fast_int8":
        index = ScannIndex(D, mode="fast", num_leaves=30, reorder_dtype="int8")
    else:
        index = ScannIndex(D, mode="compact", bytes_per_vector=8, num_leaves=30)
    ids = np.arange(len(db), dtype=np.int64) * 7 + 3
    index.add(db, ids, [f"img/{i}.jpg" for i in ids] if paths else None)
    index.metadata.update(
        {"weights_fingerprint": "abc123", "model_config": {"backbone": "x"}}
    )
    return index


KINDS = ["exact", "fast", "fast_int8", "compact"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_and_relocation(kind, data, tmp_path):
    db, q = data
    index = make(kind, db)
    want = index.search(q, 10)
    index.save(tmp_path / "a")
    os.rename(tmp_path / "a", tmp_path / "moved")
    loaded = load_index(tmp_path / "moved")
    assert type(loaded) is type(index) and len(loaded) == len(db)
    got = loaded.search(q, 10)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(loaded.ids, index.ids)
    assert loaded.paths == index.paths
    assert loaded.metadata == index.metadata
    if kind != "compact":
        np.testing.assert_array_equal(loaded.get_vectors(index.ids[:5]), db[:5])
    manifest = json.loads((tmp_path / "moved" / "manifest.json").read_text())
    assert manifest["format_version"] == storage.INDEX_FORMAT_VERSION
    assert manifest["count"] == len(db) and manifest["dimension"] == D
    assert manifest["metadata"]["weights_fingerprint"] == "abc123"
    for root, _, files in os.walk(tmp_path / "moved"):
        assert not [f for f in files if f.endswith(".pkl")]
    # A loaded index saves again (from memory) to the same results.
    loaded.save(tmp_path / "again")
    again = load_index(tmp_path / "again").search(q, 10)
    np.testing.assert_array_equal(again[0], want[0])


def test_fast_mode_stores_the_floats_once(data, tmp_path):
    db, _ = data
    make("fast", db).save(tmp_path / "f")
    assert not (tmp_path / "f" / "vectors.npy").exists()
    stored = np.load(tmp_path / "f" / "scann" / "dataset.npy")
    np.testing.assert_array_equal(stored, db)


def test_loads_despite_absolute_asset_paths(data, tmp_path):
    # Older ScaNN writers store absolute asset paths; moving the directory
    # must not break loading.
    db, q = data
    index = make("fast", db)
    index.save(tmp_path / "a")
    pbtxt = tmp_path / "a" / "scann" / "scann_assets.pbtxt"
    text = re.sub(
        r'asset_path: "([^"]*)"',
        lambda m: f'asset_path: "{tmp_path}/a/scann/{m.group(1)}"',
        pbtxt.read_text(),
    )
    pbtxt.write_text(text)
    os.rename(tmp_path / "a", tmp_path / "b")
    got = load_index(tmp_path / "b").search(q, 5)
    np.testing.assert_array_equal(got[0], index.search(q, 5)[0])


def test_ids_without_paths_and_empty_indexes(tmp_path):
    x = unit_rows(np.random.default_rng(0), 4, D)
    index = ExactIndex(D)
    index.add(x, ids=[9, 8, 7, 6])
    index.save(tmp_path / "e")
    loaded = load_index(tmp_path / "e")
    assert loaded.paths is None and loaded.ids.tolist() == [9, 8, 7, 6]
    assert not (tmp_path / "e" / "paths.json").exists()
    for empty in (ExactIndex(D), ScannIndex(D), ScannIndex(D, "compact")):
        empty.save(tmp_path / "z")
        back = load_index(tmp_path / "z")
        assert len(back) == 0 and type(back) is type(empty)
        assert (back.search(x[:1], 2)[0] == -1).all()


@pytest.mark.parametrize(
    "expect, shown",
    [
        ({"weights_fingerprint": "zzz"}, ["'abc123'", "'zzz'"]),
        ({"dimension": 64}, ["32", "64"]),
        ({"model_config": {"backbone": "y"}}, ["'x'", "'y'"]),
        ({"missing_key": 1}, ["absent", "1"]),
        ({"format_version": 0}, ["format_version", "0"]),
    ],
)
def test_expectation_mismatch_names_both_values(expect, shown, tmp_path):
    x = unit_rows(np.random.default_rng(0), 4, D)
    index = make("exact", x)
    index.save(tmp_path / "i")
    with pytest.raises(IndexMismatchError) as info:
        load_index(tmp_path / "i", expect=expect)
    message = str(info.value)
    for text in shown:
        assert text in message
    assert "Rebuild" in message or "rebuild" in message
    # Matching expectations load.
    ok = {"weights_fingerprint": "abc123", "dimension": D}
    assert len(ExactIndex.load(tmp_path / "i", expect=ok)) == 4


def test_format_version_and_type_mismatch(tmp_path):
    x = unit_rows(np.random.default_rng(0), 4, D)
    make("exact", x).save(tmp_path / "i")
    with pytest.raises(IndexMismatchError, match="'exact' index, not 'scann'"):
        ScannIndex.load(tmp_path / "i")
    path = tmp_path / "i" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="=99.*version 1, 2"):
        load_index(tmp_path / "i")


def test_missing_index_and_non_index_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No search index"):
        load_index(tmp_path / "nothing")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    x = unit_rows(np.random.default_rng(0), 2, D)
    with pytest.raises(FileExistsError, match="not a search index"):
        make("exact", x).save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_metadata_must_be_json(tmp_path):
    x = unit_rows(np.random.default_rng(0), 2, D)
    index = make("exact", x)
    index.metadata["weights"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"metadata\['weights'\]"):
        index.save(tmp_path / "i")
    assert not os.listdir(tmp_path)


def _leftovers(parent):
    return [p for p in os.listdir(parent) if ".tmp-" in p or ".old-" in p]


@pytest.mark.parametrize("kind", ["exact", "compact"])
def test_crash_while_writing_keeps_the_previous_index(
    kind, data, tmp_path, monkeypatch
):
    db, q = data
    old = make(kind, db[:1000])
    old.save(tmp_path / "i")
    want = load_index(tmp_path / "i").search(q, 5)
    new = make(kind, db)
    real = storage.write_json

    def crash(path, value):
        if os.path.basename(path) == storage.MANIFEST:
            raise OSError("disk full (simulated)")
        real(path, value)

    monkeypatch.setattr(storage, "write_json", crash)
    with pytest.raises(OSError, match="simulated"):
        new.save(tmp_path / "i")
    monkeypatch.undo()
    assert _leftovers(tmp_path) == []
    kept = load_index(tmp_path / "i")
    assert len(kept) == 1000
    np.testing.assert_array_equal(kept.search(q, 5)[0], want[0])
    # The same save succeeds afterwards and replaces the index.
    new.save(tmp_path / "i")
    assert len(load_index(tmp_path / "i")) == len(db)
    assert _leftovers(tmp_path) == []


def test_crash_while_swapping_restores_the_previous_index(
    tmp_path, monkeypatch
):
    x = unit_rows(np.random.default_rng(0), 6, D)
    make("exact", x[:3]).save(tmp_path / "i")
    real = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old aside worked; moving the new one in fails
            raise OSError("rename failed (simulated)")
        real(src, dst)

    monkeypatch.setattr(storage.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        make("exact", x).save(tmp_path / "i")
    monkeypatch.undo()
    assert len(load_index(tmp_path / "i")) == 3
    assert _leftovers(tmp_path) == []


def test_interrupted_swap_is_reported(tmp_path):
    x = unit_rows(np.random.default_rng(0), 3, D)
    make("exact", x).save(tmp_path / "i")
    os.rename(tmp_path / "i", tmp_path / ".i.old-abc")  # killed mid-swap
    with pytest.raises(FileNotFoundError, match=r"\.i\.old-abc"):
        load_index(tmp_path / "i")


def test_scann_settings_survive_save_and_load(data, tmp_path):
    db, _ = data
    index = ScannIndex(
        D,
        mode="compact",
        dimensions_per_block=4,
        num_leaves=25,
        num_leaves_to_search=5,
        spherical_tree=False,
        anisotropic_quantization_threshold=float("nan"),
        training_sample_size=2000,
        hash_type="lut16",
        projection_dim=0,
    )
    index.add(db)
    index.save(tmp_path / "s")
    loaded = load_index(tmp_path / "s")
    assert loaded.hash_type == "lut16" and loaded.projection_dim == 0
    assert np.isnan(loaded.anisotropic_quantization_threshold)
    assert loaded.spherical_tree is False
    assert loaded.bytes_per_vector is None
    assert loaded.dimensions_per_block == 4
    assert loaded.num_leaves_to_search == 5
    assert loaded.built_params == index.built_params
    assert loaded.built_params["code_bytes_per_vector"] == 4
    assert loaded.built_params["training_sample_size"] == 2000
    assert loaded.built_params["anisotropic_quantization_threshold"] is None


def test_format_version_1_scann_index_still_loads(data, tmp_path):
    # An index written before format_version 2 has no hash_type or
    # projection settings: it must load as 4-bit codes, no projection.
    db, q = data
    index = ScannIndex(
        D, "compact", bytes_per_vector=8, hash_type="lut16", projection_dim=0
    )
    index.add(db)
    index.save(tmp_path / "v1")
    path = tmp_path / "v1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 1
    for params in (manifest["params"], manifest["params"]["built"]):
        del params["hash_type"], params["projection_dim"]
    path.write_text(json.dumps(manifest))
    loaded = load_index(tmp_path / "v1")
    assert loaded.built_params["hash_type"] == "lut16"
    for a, b in zip(loaded.search(q, 5), index.search(q, 5)):
        np.testing.assert_array_equal(a, b)


def test_damaged_projection_is_reported(data, tmp_path):
    db, _ = data
    index = ScannIndex(D, "compact", bytes_per_vector=8)
    index.add(db)
    index.save(tmp_path / "p")
    np.save(tmp_path / "p" / "projection_matrix.npy", np.zeros((D, 1)))
    with pytest.raises(ValueError, match="projection_matrix.npy.*damaged"):
        load_index(tmp_path / "p")


def test_format_version_alias_is_deprecated():
    import keras_rmac.search

    with pytest.warns(DeprecationWarning, match="INDEX_FORMAT_VERSION"):
        assert keras_rmac.search.FORMAT_VERSION == storage.INDEX_FORMAT_VERSION
    assert "FORMAT_VERSION" not in keras_rmac.search.__all__
