"""Descriptor shards: complete or absent, keyed by settings and files."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from keras_rmac.beam import shards  # noqa: E402
from keras_rmac.beam.pipeline import make_options  # noqa: E402


def _entries(n):
    return [(f"p{i}.png", 100 + i, 10**9 + i, None) for i in range(n)]


def test_plan_splits_in_order_and_keys_depend_on_everything():
    specs = shards.plan_shards(_entries(7), 3, {"fingerprint": "a"})
    assert [s.number for s in specs] == [0, 1, 2]
    assert [len(s.entries) for s in specs] == [3, 3, 1]
    assert [e[0] for s in specs for e in s.entries] == [
        f"p{i}.png" for i in range(7)
    ]
    assert len({s.key for s in specs}) == 3
    other_model = shards.plan_shards(_entries(7), 3, {"fingerprint": "b"})
    assert all(a.key != b.key for a, b in zip(specs, other_model))
    touched = _entries(7)
    touched[4] = ("p4.png", 104, 5, None)  # Another mtime.
    changed = shards.plan_shards(touched, 3, {"fingerprint": "a"})
    assert [a.key == b.key for a, b in zip(specs, changed)] == [
        True,
        False,
        True,
    ]
    assert shards.plan_shards([], 3, {}) == []


def test_a_shard_is_complete_or_absent(tmp_path):
    out = str(tmp_path)
    spec = shards.plan_shards(_entries(3), 3, {"fingerprint": "a"})[0]
    assert shards.read_shard(out, spec, 4) is None  # Absent.
    records = [
        {"path": "p0.png", "size": 100, "mtime_ns": 10**9},
        {"path": "p1.png", "size": 101, "mtime_ns": 10**9 + 1, "error": "x"},
        {"path": "p2.png", "size": 102, "mtime_ns": 10**9 + 2},
    ]
    x = np.eye(4, dtype=np.float32)[:2]
    with pytest.raises(AssertionError):
        shards.write_shard(out, spec, records, np.eye(4, dtype=np.float32))
    shards.write_shard(out, spec, records, x)
    got, array = shards.read_shard(out, spec, 4)
    assert got == records
    np.testing.assert_array_equal(array, x)
    # Records written for other settings: not this shard.
    other = shards.plan_shards(_entries(3), 3, {"fingerprint": "b"})[0]
    assert shards.read_shard(out, other, 4) is None
    # Descriptors cut short or of another size: the shard is redone.
    np.save(os.path.join(out, "000000.npy"), x[:1])
    assert shards.read_shard(out, spec, 4) is None
    # Records cut short (a torn JSON never appears: written atomically,
    # but a damaged file must not count either).
    with open(os.path.join(out, "000000.json"), "w") as f:
        f.write('{"key": "')
    assert shards.read_records(out, spec) is None
    with open(os.path.join(out, "000000.json"), "w") as f:
        json.dump({"key": spec.key, "records": records[:2]}, f)
    assert shards.read_records(out, spec) is None


def test_manifest_names_model_marker_and_shards(tmp_path):
    specs = shards.plan_shards(_entries(5), 2, {"fingerprint": "f"})
    marker = {"generation": 3, "settings_format": 2}
    shards.write_manifest(str(tmp_path), specs, "f", marker)
    manifest = shards.read_manifest(str(tmp_path))
    assert manifest["fingerprint"] == "f"
    assert manifest["version_marker"] == marker
    assert [s["key"] for s in manifest["shards"]] == [s.key for s in specs]
    assert [s["files"] for s in manifest["shards"]] == [2, 2, 1]


def test_options_name_the_runner_and_quiet_the_workers():
    options = make_options("DirectRunner", ["--runner=X", "--foo=1"])
    args = options.get_all_options(retain_unknown_options=True)
    assert args["runner"] == "DirectRunner"
    assert args["default_sdk_harness_log_level"] == "WARNING"
    loud = make_options(
        "DirectRunner", ["--default_sdk_harness_log_level=INFO"]
    )
    assert loud.get_all_options()["default_sdk_harness_log_level"] == "INFO"
