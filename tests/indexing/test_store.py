"""keras_rmac.indexing.store: the descriptor store."""

import json
import logging
import os

import numpy as np

from keras_rmac.indexing import DescriptorStore
from keras_rmac.indexing.store import Record


def _records(names):
    return [Record(n, 10 + i, 1000 + i) for i, n in enumerate(names)]


def test_store_round_trip_and_latest_record_wins(tmp_path):
    store = DescriptorStore(str(tmp_path), dimension=3)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    first = _records(["x.png", "bad.png", "y.png"])
    first[1].error = "empty file (0 bytes)"
    store.commit(first, a)
    b = np.full((1, 3), 7.0, np.float32)
    store.commit([Record("y.png", 99, 5)], b)  # y changed

    reopened = DescriptorStore(str(tmp_path), dimension=3)
    assert reopened.shards == [1, 2]
    recs = reopened.records
    assert set(recs) == {"x.png", "bad.png", "y.png"}
    assert recs["bad.png"].error == "empty file (0 bytes)"
    assert not reopened.has_descriptor(recs["bad.png"])
    assert (recs["y.png"].size, recs["y.png"].mtime_ns) == (99, 5)
    got = reopened.descriptors([recs["y.png"], recs["x.png"]])
    np.testing.assert_array_equal(got, np.stack([b[0], a[0]]))
    # One live descriptor is stale: y's first version.
    assert reopened.stale_rows({"x.png", "y.png", "bad.png"}) == 1


def test_store_ignores_uncommitted_and_damaged_shards(tmp_path, caplog):
    store = DescriptorStore(str(tmp_path), dimension=2)
    store.commit(_records(["a.png"]), np.ones((1, 2)))
    shard_dir = tmp_path / "shards"
    # A run killed while writing shard 2: descriptors, no records.
    np.save(shard_dir / "000002.npy", np.zeros((4, 2), np.float32))
    (shard_dir / ".tmp-xyz-000002.json").write_text("{")
    # Shard 3: records whose descriptors have the wrong shape.
    np.save(shard_dir / "000003.npy", np.zeros((5, 2), np.float32))
    (shard_dir / "000003.json").write_text(
        json.dumps({"records": [r.to_json() for r in _records(["b.png"])]})
    )
    before = sorted(os.listdir(shard_dir))
    # Read-only (a search running beside an indexer): nothing is touched.
    with caplog.at_level(logging.WARNING):
        reader = DescriptorStore(str(tmp_path), dimension=2, writable=False)
    assert set(reader.records) == {"a.png"}
    assert "000003.npy" in caplog.text
    assert sorted(os.listdir(shard_dir)) == before
    # The writer (under the index lock) cleans up.
    reopened = DescriptorStore(str(tmp_path), dimension=2)
    assert set(reopened.records) == {"a.png"}
    assert sorted(os.listdir(shard_dir)) == ["000001.json", "000001.npy"]
    assert reopened.next_number == 2


def test_store_compaction_keeps_live_descriptors(tmp_path):
    store = DescriptorStore(str(tmp_path), dimension=2)
    for i in range(3):
        store.commit(_records([f"f{i}.png"]), np.full((1, 2), i, np.float32))
    live = [store.records["f0.png"], store.records["f2.png"]]
    store.compact(live)
    reopened = DescriptorStore(str(tmp_path), dimension=2)
    assert set(reopened.records) == {"f0.png", "f2.png"}
    assert len(os.listdir(tmp_path / "shards")) == 2
    got = reopened.descriptors(
        [reopened.records["f2.png"], reopened.records["f0.png"]]
    )
    np.testing.assert_array_equal(got, [[2, 2], [0, 0]])
