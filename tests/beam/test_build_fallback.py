"""A remote runner's parts missing the merged recall target: built again."""

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from keras_rmac.beam import folder  # noqa: E402
from keras_rmac.search import ScannIndex  # noqa: E402
from keras_rmac.search import ShardedIndex  # noqa: E402
from keras_rmac.search import scann_policy  # noqa: E402
from tests.search.helpers import clustered  # noqa: E402
from tests.search.helpers import structured  # noqa: E402

ROWS, D = 1500, 32


def _builder(db, parts=2):
    """A `build(options)` as `build_on_beam`'s: parts built each on its
    own with the options (here in this process), joined and tuned."""
    calls = []

    def build(options):
        calls.append(dict(options))
        shards = []
        for rows in np.array_split(np.arange(len(db)), parts):
            shard = ScannIndex(D, mode="fast", **options)
            shard.add(db[rows], ids=rows)
            shards.append(shard)
        index = ShardedIndex.from_shards(shards)
        index.tune(db)
        return index

    return build, calls


def _leaves(rows, total):
    leaves = scann_policy.shard_num_leaves(rows, total, "fast")
    assert leaves > 0  # The policy gives these parts a tree.
    return leaves


def test_unstructured_parts_are_built_again_without_a_tree():
    # About one row per centre: no leaf holds a neighbourhood, and the
    # parts' trees miss the merged target; parts under MIN_TREE_SIZE rows
    # are then built without a tree, as ShardedIndex does itself.
    db = clustered(np.random.default_rng(0), 2 * ROWS, D, 2 * ROWS)
    build, calls = _builder(db)
    leaves = _leaves(ROWS, 2 * ROWS)
    index = folder.build_with_fallback(
        build, {"num_leaves": leaves}, "fast", ROWS
    )
    assert calls == [{"num_leaves": leaves}, {"num_leaves": 0}]
    assert [s.built_params["num_leaves"] for s in index.shards] == [0, 0]
    assert index.operating_point.reached


def test_structured_parts_are_built_once():
    rng = np.random.default_rng(1)
    db, _ = structured(rng, 2 * ROWS, D, 10)
    build, calls = _builder(db)
    leaves = _leaves(ROWS, 2 * ROWS)
    index = folder.build_with_fallback(
        build, {"num_leaves": leaves}, "fast", ROWS
    )
    assert index.operating_point.reached
    assert calls == [{"num_leaves": leaves}]


def test_large_parts_get_more_leaves_and_other_modes_are_kept():
    # A miss on parts of MIN_TREE_SIZE rows or more: more, smaller leaves.
    missed = type("Missed", (), {})()
    missed.operating_point = type("Point", (), {"reached": False})()
    options = []

    def build(given):
        options.append(given)
        return missed

    rows = scann_policy.MIN_TREE_SIZE
    folder.build_with_fallback(build, {"num_leaves": 100}, "fast", rows)
    assert options == [{"num_leaves": 100}, {"num_leaves": 200}]
    options.clear()
    # Compact parts (PQ codes only) and exact parts are built once.
    for mode, given in (("compact", {"num_leaves": 100}), ("exact", {})):
        folder.build_with_fallback(build, given, mode, rows)
    assert options == [{"num_leaves": 100}, {}]
