"""Query expansion and DBA against hand-computed cases and loop oracles."""

import numpy as np
import pytest

from keras_rmac.search import ExactIndex
from keras_rmac.search import ScannIndex
from keras_rmac.search import alpha_query_expansion
from keras_rmac.search import average_query_expansion
from keras_rmac.search import database_side_augmentation
from keras_rmac.search import expand_queries
from keras_rmac.search import search_with_query_expansion
from tests.search.helpers import clustered
from tests.search.helpers import unit_rows


def normalize(v):
    return v / np.linalg.norm(v)


def test_average_qe_hand_computed():
    q = np.array([[1.0, 0.0, 0.0]])
    n = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    got = average_query_expansion(q, n)
    np.testing.assert_allclose(got, [[1 / np.sqrt(3)] * 3], atol=1e-7)
    masked = average_query_expansion(q, n, mask=[[True, False]])
    np.testing.assert_allclose(masked, [[np.sqrt(0.5), np.sqrt(0.5), 0]])


def test_alpha_qe_hand_computed():
    q = np.array([[1.0, 0.0]])
    n = np.array([[[0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]])
    s = np.array([[0.5, 0.9, -0.2]])
    # Weights 0.5**3, 0.9**3 and 0 for the negative similarity.
    want = normalize(np.array([1.0, 0.0]) + 0.125 * n[0, 0] + 0.729 * n[0, 1])
    got = alpha_query_expansion(q, n, s, alpha=3)
    np.testing.assert_allclose(got[0], want, atol=1e-6)
    # alpha = 0 is average QE over the non-padded neighbours.
    s_pad = np.array([[0.5, 0.9, -np.inf]])
    np.testing.assert_allclose(
        alpha_query_expansion(q, n, s_pad, alpha=0),
        average_query_expansion(q, n, mask=[[True, True, False]]),
        atol=1e-7,
    )


def test_alpha_qe_rejects_negative_alpha_and_bad_shapes():
    q = np.ones((1, 2)) / np.sqrt(2)
    with pytest.raises(ValueError, match="alpha"):
        alpha_query_expansion(q, np.ones((1, 1, 2)), np.ones((1, 1)), -1)
    with pytest.raises(ValueError, match="neighbors"):
        average_query_expansion(q, np.ones((1, 1, 3)))


def loop_qe(db, q, k, alpha):
    """Per-query oracle: full sort, weighted sum in float64."""
    out = []
    for row in q.astype(np.float64):
        sims = db.astype(np.float64) @ row
        top = np.argsort(-sims, kind="stable")[:k]
        acc = row.copy()
        for j in top:
            w = 1.0 if alpha is None else max(sims[j], 0.0) ** alpha
            acc += w * db[j]
        out.append(normalize(acc))
    return np.array(out)


@pytest.mark.parametrize("alpha", [None, 0.0, 3.0])
def test_expand_queries_matches_oracle(alpha):
    rng = np.random.default_rng(4)
    db = clustered(rng, 400, 16, 20)
    q = clustered(rng, 9, 16, 20)
    index = ExactIndex(16)
    index.add(db, ids=np.arange(400)[::-1] * 3)  # ids unrelated to rows
    got = expand_queries(index, q, k=5, alpha=alpha)
    np.testing.assert_allclose(got, loop_qe(db, q, 5, alpha), atol=1e-5)
    # More neighbours than items: padding is ignored.
    small = ExactIndex(16)
    small.add(db[:3])
    got = expand_queries(small, q, k=10, alpha=alpha)
    np.testing.assert_allclose(got, loop_qe(db[:3], q, 3, alpha), atol=1e-5)


def test_search_with_qe_and_compact_index_needs_database():
    rng = np.random.default_rng(5)
    db = clustered(rng, 3000, 16, 100)
    q = clustered(rng, 5, 16, 100)
    compact = ScannIndex(16, mode="compact", bytes_per_vector=8)
    compact.add(db)
    with pytest.raises(ValueError, match="keeps no float"):
        expand_queries(compact, q, k=3)
    with pytest.raises(ValueError, match="one row per indexed vector"):
        expand_queries(compact, q, k=3, database=db[:10])
    expanded = expand_queries(compact, q, k=3, database=db)
    # Oracle with the neighbours compact search actually returned.
    ids, _ = compact.search(q, 3)
    want = [normalize(q[i] + db[ids[i]].sum(0)) for i in range(len(q))]
    np.testing.assert_allclose(expanded, want, atol=1e-5)
    exact = ExactIndex(16)
    exact.add(db)
    ids, scores = search_with_query_expansion(exact, q, k=4, qe_k=3)
    want_ids, want_scores = exact.search(loop_qe(db, q, 3, None), 4)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def loop_dba(db, k, alpha):
    out = []
    for i, row in enumerate(db.astype(np.float64)):
        sims = db.astype(np.float64) @ row
        order = [j for j in np.argsort(-sims, kind="stable") if j != i][:k]
        acc = row.copy()
        for j in order:
            w = 1.0 if alpha is None else max(sims[j], 0.0) ** alpha
            acc += w * db[j]
        out.append(normalize(acc))
    return np.array(out)


@pytest.mark.parametrize("alpha", [None, 3.0])
@pytest.mark.parametrize("k", [1, 4, 30])
def test_dba_matches_oracle(alpha, k):
    rng = np.random.default_rng(k)
    db = clustered(rng, 25, 8, 5)
    got = database_side_augmentation(db, k=k, alpha=alpha, batch_size=7)
    np.testing.assert_allclose(got, loop_dba(db, min(k, 24), alpha), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_dba_hand_computed_and_with_a_given_index():
    x = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    got = database_side_augmentation(x, k=1)
    want = [normalize([1.8, 0.6]), normalize([1.8, 0.6]), normalize([0.8, 1.6])]
    np.testing.assert_allclose(got, want, atol=1e-6)
    index = ExactIndex(2)
    index.add(x, ids=[30, 20, 10])
    np.testing.assert_allclose(
        database_side_augmentation(x, k=1, index=index), want, atol=1e-6
    )
    with pytest.raises(ValueError, match="exactly these vectors"):
        database_side_augmentation(x[:2], k=1, index=index)


def test_dba_excludes_self_among_duplicates():
    x = unit_rows(np.random.default_rng(0), 2, 4)
    db = np.concatenate([x[:1], x[:1], x[1:]])  # rows 0 and 1 identical
    got = database_side_augmentation(db, k=1)
    # Row 1's nearest other vector is row 0 (not itself).
    np.testing.assert_allclose(got[1], x[0], atol=1e-6)
    np.testing.assert_allclose(got[0], x[0], atol=1e-6)
