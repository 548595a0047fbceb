"""A fast ScannIndex missing its target: more leaves, then no tree."""

import json

import numpy as np
import pytest

from keras_rmac.search import ScannIndex
from keras_rmac.search import load_index
from keras_rmac.search import saved_operating_point
from keras_rmac.search import scann_builds as B
from keras_rmac.search import scann_policy as P
from keras_rmac.search import scann_tuning as T
from tests.search.helpers import clustered
from tests.search.helpers import oracle_top_k
from tests.search.helpers import structured

D = 32


def independent_recalls(index, db, queries, k=10):
    """Per-query recall@k of `index` against the NumPy oracle."""
    truth, _ = oracle_top_k(db, queries, k)
    found, _ = index.search(queries, k)
    return np.array(
        [len(set(f) & set(t)) / k for f, t in zip(found.tolist(), truth)]
    )


@pytest.fixture(scope="module")
def unstructured():
    # About one row per centre (the centres of the rows and of the
    # queries are all distinct): no cluster for a tree's leaves to hold.
    n = P.MIN_TREE_SIZE
    x = clustered(np.random.default_rng(0), n + 1000, D, n + 1000)
    index = ScannIndex(D)
    index.add(x[:n])
    index.build()
    return index, x[:n], x[n:]


def test_unstructured_rows_fall_back_to_no_tree(unstructured):
    index, db, queries = unstructured
    point = index.operating_point
    leaves = P.num_leaves_for_target(len(db))
    assert leaves > 0
    # Both trees (the policy's, then twice the leaves) missed the target,
    # with the re-order depths and a quarter of the leaves searched.
    assert [p[0] for p in point.discarded] == [
        leaves,
        T.REBUILD_LEAVES_FACTOR * leaves,
    ]
    assert all(p[1] < 0.95 for p in point.discarded)
    assert index.built_params["num_leaves"] == 0
    assert index.built_params["scoring"] == "ah"
    assert point.reached and point.num_leaves_to_search == 0
    assert point.recall >= 0.95
    # Independent queries from the same generator reach the target within
    # two standard errors of their own mean (the tuner's promise).
    per_query = independent_recalls(index, db, queries)
    error = per_query.std() / np.sqrt(len(per_query))
    assert per_query.mean() >= 0.95 - 2 * error
    assert per_query.mean() >= point.recall - 0.02
    line = point.describe()
    assert "no tree" in line and "builds discarded" in line
    assert f"{leaves} leaves (recall {point.discarded[0][1]:.3f})" in line


def test_fallback_round_trip(unstructured, tmp_path):
    index, db, queries = unstructured
    index.save(tmp_path / "i")
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    recorded = manifest["params"]["operating_point"]
    assert recorded["discarded"] == index.operating_point.discarded
    assert manifest["params"]["built"]["num_leaves"] == 0
    loaded = load_index(tmp_path / "i")
    assert loaded.operating_point == index.operating_point
    assert saved_operating_point(tmp_path / "i") == index.operating_point
    assert loaded.built_params == index.built_params
    for a, b in zip(loaded.search(queries, 10), index.search(queries, 10)):
        np.testing.assert_array_equal(a, b)


def test_manifest_without_discarded_builds_loads(unstructured, tmp_path):
    # Manifests written before the rebuilds were recorded.
    index, _, queries = unstructured
    index.save(tmp_path / "i")
    path = tmp_path / "i" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["params"]["operating_point"]["discarded"]
    path.write_text(json.dumps(manifest))
    point = load_index(tmp_path / "i").operating_point
    assert point.discarded == []
    assert point == T.OperatingPoint.from_dict(
        {**index.operating_point.to_dict(), "discarded": []}
    )
    assert "discarded" not in point.describe()


def test_structured_rows_keep_the_tree(monkeypatch):
    # Clustered rows reach the target with the policy's tree, built once
    # and measured as before: nothing rebuilt, nothing discarded.
    db, draw = structured(np.random.default_rng(1), 8000, D, 50)
    builds = []
    original = ScannIndex._build_searcher

    def counted(self, x, params):
        builds.append(params.num_leaves)
        return original(self, x, params)

    monkeypatch.setattr(ScannIndex, "_build_searcher", counted)
    index = ScannIndex(D)
    index.add(db)
    index.build()
    point = index.operating_point
    leaves = P.num_leaves_for_target(len(db))
    assert builds == [leaves] and leaves > 0
    assert index.built_params["num_leaves"] == leaves
    assert point.reached and point.discarded == []
    assert 0 < point.num_leaves_to_search <= leaves * T.MAX_SEARCHED_SHARE
    assert "discarded" not in point.describe()
    per_query = independent_recalls(index, db, draw(600))
    error = per_query.std() / np.sqrt(len(per_query))
    assert per_query.mean() >= 0.95 - 2 * error


def test_rebuild_order():
    assert B.rebuild_leaves(P.MIN_TREE_SIZE - 1, 100) == [0]
    assert B.rebuild_leaves(P.MIN_TREE_SIZE, 141) == [
        T.REBUILD_LEAVES_FACTOR * 141,
        0,
    ]


def test_rebuild_num_leaves():
    small, least = P.MIN_TREE_SIZE - 1, P.MIN_TREE_SIZE
    assert B.rebuild_num_leaves(small, 100) == 0
    assert B.rebuild_num_leaves(small, 100, 3) == 0
    assert B.rebuild_num_leaves(least, 141) == T.REBUILD_LEAVES_FACTOR * 141
    assert B.rebuild_num_leaves(least, 141, 3) == 423


class FakeSearcher:
    """Finds the true neighbours of a share of the queries, set per leaf
    count of the current build; the other queries find nothing."""

    def __init__(self, x, rows, truth, share):
        self.full = np.concatenate([rows[:, None], truth], axis=1)
        self.share = share
        self.builds = []

    def rebuild(self, params):
        self.builds.append(params.num_leaves)

    def search(self, queries, k, leaves, pre):
        found = self.full[:, :k].copy()
        found[int(self.share[self.builds[-1]] * len(found)) :] = -1
        return found, np.zeros(found.shape, np.float32)


@pytest.mark.parametrize(
    "share, kept, discarded, again",
    [
        # The tree with more leaves is the most accurate: built again.
        ({70: 0.6, 140: 0.7, 0: 0.5}, 140, [[70, 0.6], [0, 0.5]], [140]),
        # No tree reaches the target: kept, both trees discarded.
        ({70: 0.6, 140: 0.7, 0: 0.99}, 0, [[70, 0.6], [140, 0.7]], []),
        # The first tree stays the best: built again.
        ({70: 0.8, 140: 0.7, 0: 0.5}, 70, [[140, 0.7], [0, 0.5]], [70]),
    ],
)
def test_the_most_accurate_build_is_kept(share, kept, discarded, again):
    n = P.MIN_TREE_SIZE
    x = np.zeros((n, 4), np.float32)
    rows = np.arange(200, dtype=np.int64)
    truth = (rows[:, None] + np.arange(1, 11)) % n
    options = P.ScannOptions(dimension=4)
    params = P.resolve_params(P.ScannOptions(dimension=4, num_leaves=70), n)
    fake = FakeSearcher(x, rows, truth, share)
    fake.builds.append(70)
    point, final = B.tune_built_index(
        x, params, options, fake.search, fake.rebuild, sample=(rows, truth)
    )
    assert fake.builds == [70, 140, 0] + again
    assert fake.builds[-1] == kept == final.num_leaves
    assert point.discarded == discarded
    assert point.recall == pytest.approx(share[kept], abs=0.01)
    assert point.reached == (share[kept] >= 0.95)
