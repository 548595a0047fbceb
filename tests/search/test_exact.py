"""ExactIndex and top_k_inner_product against a full-sort NumPy oracle."""

import numpy as np
import pytest

from keras_rmac.search import ExactIndex
from keras_rmac.search import top_k_inner_product
from tests.search.helpers import oracle_top_k
from tests.search.helpers import unit_rows


@pytest.mark.parametrize("n", [1, 2, 7, 300])
@pytest.mark.parametrize("k", [1, 5, 300])
@pytest.mark.parametrize("block_bytes", [64 * 2**20, 4 * 3 * 5])
def test_top_k_matches_oracle(n, k, block_bytes):
    rng = np.random.default_rng(n * 1000 + k)
    db = unit_rows(rng, n, 16)
    q = unit_rows(rng, 5, 16)
    k = min(k, n)
    rows, scores = top_k_inner_product(q, db, k, block_bytes=block_bytes)
    want_rows, want_scores = oracle_top_k(db, q, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)
    assert rows.dtype == np.int64 and scores.dtype == np.float32


def test_ties_go_to_the_earlier_row_across_blocks():
    rng = np.random.default_rng(0)
    base = unit_rows(rng, 4, 8)
    # Rows 0, 5, 10 are identical; so are 1, 6, 11 ...
    db = np.concatenate([base, unit_rows(rng, 1, 8)] * 3)
    q = base[:2]
    rows, _ = top_k_inner_product(q, db, 3, block_bytes=4 * 2 * 4)
    np.testing.assert_array_equal(rows, [[0, 5, 10], [1, 6, 11]])


def test_search_maps_rows_to_ids_and_pads():
    rng = np.random.default_rng(1)
    db = unit_rows(rng, 4, 8)
    q = unit_rows(rng, 3, 8)
    index = ExactIndex(8)
    ids = np.array([40, 7, 1000, 3], np.int64)
    index.add(db[:2], ids[:2])
    index.add(db[2:], ids[2:])
    found, scores = index.search(q, 6)
    want_rows, want_scores = oracle_top_k(db, q, 4)
    np.testing.assert_array_equal(found[:, :4], ids[want_rows])
    np.testing.assert_allclose(scores[:, :4], want_scores, atol=1e-6)
    assert (found[:, 4:] == -1).all()
    assert np.isneginf(scores[:, 4:]).all()
    assert found.shape == scores.shape == (3, 6)


def test_single_query_vector_and_empty_index():
    index = ExactIndex(3)
    ids, scores = index.search(np.array([1, 0, 0], np.float32), 2)
    assert ids.tolist() == [[-1, -1]] and np.isneginf(scores).all()
    index.add(np.eye(3, dtype=np.float32))
    ids, scores = index.search(np.array([0, 1, 0], np.float32), 1)
    assert ids.tolist() == [[1]] and scores.tolist() == [[1.0]]


def test_default_ids_continue_after_the_largest():
    index = ExactIndex(2)
    index.add(np.eye(2, dtype=np.float32), ids=[5, 9])
    index.add(np.eye(2, dtype=np.float32))
    assert index.ids.tolist() == [5, 9, 10, 11]
    assert len(index) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(descriptors=np.ones((2, 3), np.float32)), "L2-normalised"),
        (dict(descriptors=np.eye(4, dtype=np.float32)), r"shape \(N, 3\)"),
        (dict(descriptors=np.eye(3, dtype=np.int64)), "float"),
        (dict(ids=[1, 1, 2]), "duplicates"),
        (dict(ids=[0, -1, 2]), ">= 0"),
        (dict(ids=[0.0, 1.0, 2.0]), "integers"),
        (dict(ids=[1, 2]), r"shape \(3,\)"),
        (dict(paths=["a", "b"]), "2 entries for 3"),
        (dict(paths="abc"), "not one str"),
    ],
)
def test_add_rejects_bad_input(kwargs, message):
    index = ExactIndex(3)
    args = dict(descriptors=np.eye(3, dtype=np.float32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        index.add(**args)
    assert len(index) == 0


def test_add_rejects_nan_and_known_ids_and_partial_paths():
    index = ExactIndex(2)
    bad = np.array([[1, 0], [np.nan, 0]], np.float32)
    with pytest.raises(ValueError, match="row 1"):
        index.add(bad)
    index.add(np.eye(2, dtype=np.float32), ids=[3, 4])
    with pytest.raises(ValueError, match="id 4 is already"):
        index.add(np.eye(2, dtype=np.float32), ids=[4, 8])
    with pytest.raises(ValueError, match="without paths"):
        index.add(np.eye(2, dtype=np.float32), ids=[5, 6], paths=["a", "b"])
    with_paths = ExactIndex(2)
    with_paths.add(np.eye(2, dtype=np.float32), paths=["a", "b"])
    with pytest.raises(ValueError, match="pass `paths`"):
        with_paths.add(np.eye(2, dtype=np.float32))
    assert len(index) == 2 and with_paths.paths == ["a", "b"]


def test_search_rejects_bad_k_and_dimension():
    index = ExactIndex(2)
    index.add(np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="k"):
        index.search(np.eye(2, dtype=np.float32), 0)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        index.search(np.eye(3, dtype=np.float32), 1)


def test_rows_of_and_get_vectors():
    rng = np.random.default_rng(2)
    x = unit_rows(rng, 5, 4)
    index = ExactIndex(4)
    index.add(x, ids=[50, 10, 40, 20, 30])
    np.testing.assert_array_equal(
        index.rows_of([[10, 30], [99, -1]]), [[1, 4], [-1, -1]]
    )
    got = index.get_vectors(np.array([[30, -1]]))
    np.testing.assert_array_equal(got[0, 0], x[4])
    np.testing.assert_array_equal(got[0, 1], np.zeros(4))
    with pytest.raises(KeyError, match="99"):
        index.get_vectors([99])


@pytest.mark.parametrize("block_bytes", [64 * 2**20, 4 * 2 * 3, 4 * 2 * 7])
@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_ties_straddling_the_kth_place_go_to_the_earlier_rows(k, block_bytes):
    # Ten copies of one vector (rows 2, 4, 6 ... 20) among other vectors:
    # the top k of a query equal to it are its k earliest copies, however
    # the database is split into blocks.
    rng = np.random.default_rng(5)
    target = unit_rows(rng, 1, 8)
    others = unit_rows(rng, 11, 8)
    db = np.empty((21, 8), np.float32)
    db[0::2] = others
    db[1::2] = target
    q = np.repeat(target, 2, axis=0)
    rows, scores = top_k_inner_product(q, db, k, block_bytes=block_bytes)
    want_rows, _ = oracle_top_k(db, q, k)
    np.testing.assert_array_equal(rows, want_rows)
    assert rows[0].tolist() == list(range(1, 2 * min(k, 10), 2))[:k]


def test_mining_contract():
    # What hard-negative mining (keras_rmac.data.mining) relies on: ids
    # given over several adds, queries scored in blocks (more than one
    # block of 1024), results in stable order (score, then position), and
    # k above N padded with id -1 and score -inf.
    rng = np.random.default_rng(0)
    data = unit_rows(rng, 50, 6)
    data[30] = data[10]  # an exact tie: position 10 (id 110) comes first
    queries = unit_rows(rng, 1100, 6)
    queries[0] = data[10]
    index = ExactIndex(6, block_bytes=4 * 1024 * 7)
    index.add(data[:20], np.arange(100, 120))
    index.add(data[20:], np.arange(120, 150))
    ids, scores = index.search(queries, 5)
    sims = queries.astype(np.float64) @ data.astype(np.float64).T
    want = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, want + 100)
    assert ids[0, :2].tolist() == [110, 130]
    np.testing.assert_allclose(
        scores, np.take_along_axis(sims, want, 1), rtol=0, atol=1e-6
    )
    ids, scores = index.search(queries[:7], 60)  # more than stored
    assert ids.shape == scores.shape == (7, 60)
    np.testing.assert_array_equal(
        ids[:, :50], np.argsort(-sims[:7], axis=1, kind="stable") + 100
    )
    assert (ids[:, 50:] == -1).all() and np.isneginf(scores[:, 50:]).all()
