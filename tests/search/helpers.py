"""Shared data and oracles for the search tests (independent of the code)."""

import numpy as np


def unit_rows(rng, n, d):
    """n random unit vectors of dimension d, float32."""
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng, n, d, n_centres, noise=0.7):
    """Unit vectors around unit centres: L2norm(c + noise * e / sqrt(d))."""
    centres = unit_rows(rng, n_centres, d).astype(np.float64)
    labels = rng.integers(0, n_centres, n)
    x = centres[labels] + noise * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def oracle_top_k(database, queries, k):
    """Full score matrix in float64, stable sort: ties go to the lower row."""
    scores = queries.astype(np.float64) @ database.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def recall_at_k(found, truth):
    """Mean fraction of each row of `truth` present in the row of `found`."""
    hits = [
        len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)
    ]
    return float(np.mean(hits) / truth.shape[1])


def recalls_own_row_excluded(found, truth, rows, k=10):
    """Per-query recall@k of database rows used as queries: each query's
    own row dropped from its results and from its truth (both of k + 1)."""
    return np.array(
        [
            len(set(f[f != own][:k]) & set(t[t != own][:k])) / k
            for f, t, own in zip(found, truth, rows)
        ]
    )


def structured(rng, n, d, per_cluster, noise=0.7, min_members=11):
    """Unit vectors around Gaussian centres, about `per_cluster` per centre.

    With `per_cluster` <= `min_members` every centre gets exactly
    `min_members` rows (the rest drawn at random), so a query's true
    top-10 lies inside its cluster; otherwise centres are drawn uniformly.
    Returns `(rows, sample)` where `sample(m)` draws `m` more rows the same
    way (independent queries).
    """
    if per_cluster <= min_members:
        count = n // min_members
        labels = np.concatenate(
            [
                np.repeat(np.arange(count), min_members),
                rng.integers(0, count, n - count * min_members),
            ]
        )
    else:
        count = n // per_cluster
        labels = rng.integers(0, count, n)
    centres = unit_rows(rng, count, d).astype(np.float64)

    def around(which):
        x = centres[which] + noise * rng.standard_normal((len(which), d)) / (
            np.sqrt(d)
        )
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return around(labels), lambda m: around(rng.integers(0, count, m))


def recalls_at_levels(index, db, queries, levels, k=10):
    """`{level: recall@k of search(queries, k, recall=level)}` against the
    exact oracle, with the measured point each level chose (checked: the
    search used it, and its sample recall cleared the level by two of its
    standard errors)."""
    truth, _ = oracle_top_k(db, queries, k)
    index.build()
    point = index.operating_point
    out = {}
    for level in levels:
        leaves, reorder = point.setting_for(level)
        chosen = [p for p in point.points if p[:2] == [leaves, reorder]][0]
        assert chosen[2] >= level + 2 * chosen[4] - 5e-5, (level, chosen)
        found, _ = index.search(queries, k, recall=level)
        same, _ = index.search(
            queries,
            k,
            leaves_to_search=leaves or None,
            reorder_num_neighbors=reorder,
        )
        np.testing.assert_array_equal(found, same)
        out[level] = (recall_at_k(found, truth), chosen)
    return out
