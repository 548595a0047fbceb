"""The pure steps of hard-negative mining, on descriptors.

`mine_hard_negatives` (the hardest negatives of each query, at most one
per class, optionally semi-hard: less similar than the query's positive)
searches with a `keras_rmac.search` index; `select_positives` draws each
query's positive; `mean_cosine` measures how close a set of descriptors
has collapsed. `keras_rmac.data.mining` runs them with a model's current
weights during `fit` (`HardNegativeMiner`), and re-exports them.

Reference:
    - [Gordo et al., 2017](https://arxiv.org/abs/1610.07940)
    - [Schroff et al., 2015](https://arxiv.org/abs/1503.03832)
"""

import warnings

import numpy as np

from keras_rmac.search import make_index

POSITIVE_MODES = ("random", "most_similar")


def mean_cosine(descriptors) -> float:
    """Mean cosine between the L2-normalised rows of `descriptors`, over
    the pairs of different rows: `(|sum|^2 - sum of |d|^2) / (n (n - 1))`,
    without the `n x n` matrix. NaN for fewer than 2 rows."""
    d = np.asarray(descriptors, np.float64)
    n = len(d)
    if n < 2:
        return float("nan")
    total = d.sum(axis=0)
    return float((total @ total - np.sum(d * d)) / (n * (n - 1)))


OLD_INDEX_KINDS = {"scann": "fast", "numpy": "exact"}
"""Deprecated `index` spellings of 0.2.0 and the `make_index` kind of each."""


def index_kind(kind):
    """`kind` for `keras_rmac.search.make_index`, old spellings mapped."""
    if isinstance(kind, str) and kind in OLD_INDEX_KINDS:
        new = OLD_INDEX_KINDS[kind]
        warnings.warn(
            f"index={kind!r} is deprecated; use index={new!r}.",
            DeprecationWarning,
            stacklevel=3,
        )
        return new
    return kind


def mine_hard_negatives(
    query_descriptors,
    query_labels,
    pool_descriptors,
    pool_labels,
    num_negatives: int = 1,
    index="exact",
    max_similarity=None,
) -> np.ndarray:
    """The hardest negatives of each query, at most one per class.

    For each query, pool images are visited from the most to the least
    similar (inner product of L2-normalised descriptors, i.e. smallest
    Euclidean distance first); images of the query's class are skipped, as
    are images of a class that already gave a negative. The search asks the
    index for a few times `num_negatives` neighbours and widens the search
    for queries whose neighbourhood is filled by few classes.

    Args:
        query_descriptors: float array `(Q, D)`.
        query_labels: int array `(Q,)`.
        pool_descriptors: float array `(P, D)`.
        pool_labels: int array `(P,)`.
        num_negatives: int. Negatives per query. Defaults to `1`.
        index: the `kind` of `keras_rmac.search.make_index`: `"exact"`,
            `"fast"` (ScaNN, approximate, for pools of hundreds of
            thousands of images) or a callable `dimension -> Index`
            (`"numpy"` and `"scann"` are deprecated spellings of `"exact"`
            and `"fast"`). Defaults to `"exact"`.
        max_similarity: float array `(Q,)` or None. Semi-hard mining
            (Schroff et al., 2015): a negative must be less similar to its
            query than this bound (the query's similarity to its positive;
            exact inner products, whatever the index). Where fewer than
            `num_negatives` classes of the pool have such an image, the
            rest are the images at or above the bound that are closest to
            it (least similar first), still one per class. Defaults to
            None (no bound: the hardest negatives).

    Returns:
        int64 array `(Q, num_negatives)` of pool positions, hardest first
        (semi-hard ones before the fill), `-1` where fewer than
        `num_negatives` other classes exist.

    Example:

    >>> import numpy as np
    >>> angles = np.deg2rad([0, 10, 20, 90])
    >>> pool = np.stack([np.cos(angles), np.sin(angles)], 1)
    >>> mine_hard_negatives(pool[:1], [0], pool, [0, 1, 1, 2], 2)
    array([[1, 3]])
    """
    queries = np.asarray(query_descriptors, np.float32)
    pool = np.asarray(pool_descriptors, np.float32)
    query_labels = np.asarray(query_labels, np.int64)
    pool_labels = np.asarray(pool_labels, np.int64)
    if num_negatives < 1:
        raise ValueError(f"`num_negatives` must be >= 1, got {num_negatives}.")
    if len(pool_labels) != len(pool) or len(query_labels) != len(queries):
        raise ValueError(
            "One label per descriptor: got "
            f"{len(queries)} queries / {len(query_labels)} labels and "
            f"{len(pool)} pool vectors / {len(pool_labels)} labels."
        )
    bound = None
    if max_similarity is not None:
        bound = np.asarray(max_similarity, np.float64).reshape(-1)
        if len(bound) != len(queries):
            raise ValueError(
                f"One `max_similarity` per query: got {len(bound)} for "
                f"{len(queries)} queries."
            )
    out = np.full((len(queries), num_negatives), -1, np.int64)
    if not len(queries) or not len(pool):
        return out
    searcher = make_index(index_kind(index), pool.shape[1])
    searcher.add(pool, np.arange(len(pool), dtype=np.int64))
    todo = np.arange(len(queries))
    k = min(len(pool), 4 * num_negatives + 16)
    while len(todo):
        ids, _ = searcher.search(queries[todo], k)
        ids = np.asarray(ids, np.int64)
        unfinished = []
        for row, q in zip(ids, todo):
            row = row[row >= 0]
            above = None
            if bound is not None:  # Exact similarities, whatever the index.
                above = pool[row].astype(np.float64) @ queries[q] >= bound[q]
            found = _negatives_of(
                row,
                pool_labels,
                int(query_labels[q]),
                num_negatives,
                above,
                final=k >= len(pool),
            )
            out[q, : len(found)] = found
            if len(found) < num_negatives and k < len(pool):
                unfinished.append(q)
        todo = np.array(unfinished, np.int64)
        k = min(len(pool), 4 * k)
    return out


def _negatives_of(row, pool_labels, label, count, above_bound, final):
    """Up to `count` pool positions of `row` (best first), one per class
    other than `label`; with `above_bound` (bool per position of `row`)
    only those not above it, filled (when `final`: the row is the whole
    pool) with the ones above it nearest the bound."""
    used = {label}
    found, above = [], []
    for position, j in enumerate(row):
        other = int(pool_labels[j])
        if other in used:
            continue
        if above_bound is not None and above_bound[position]:
            above.append(j)
            continue
        used.add(other)
        found.append(int(j))
        if len(found) == count:
            return found
    if above_bound is not None and final:
        for j in reversed(above):
            other = int(pool_labels[j])
            if other not in used:
                used.add(other)
                found.append(int(j))
                if len(found) == count:
                    break
    return found


def select_positives(
    queries,
    labels,
    mode: str = "random",
    rng=None,
    pool=None,
    pool_descriptors=None,
    query_descriptors=None,
) -> np.ndarray:
    """A positive image for each query, from the query's class.

    Args:
        queries: int array `(Q,)` of image indices.
        labels: int array `(N,)`: class of every image.
        mode: `"random"` (any other image of the class) or
            `"most_similar"` (the most similar other image of the class in
            `pool`; random when the pool holds none). Defaults to
            `"random"`.
        rng: `np.random.Generator` or None. Defaults to a fresh one.
        pool: int array `(P,)` of image indices (for `"most_similar"`).
        pool_descriptors: float array `(P, D)`.
        query_descriptors: float array `(Q, D)`.

    Returns:
        int64 array `(Q,)` of image indices.
    """
    if mode not in POSITIVE_MODES:
        raise ValueError(
            f"Unknown positive mode {mode!r}; choose one of {POSITIVE_MODES}."
        )
    labels = np.asarray(labels, np.int64)
    rng = rng or np.random.default_rng()
    members = {}
    out = np.empty(len(queries), np.int64)
    for i, q in enumerate(np.asarray(queries, np.int64)):
        c = labels[q]
        if c not in members:
            members[c] = np.flatnonzero(labels == c)
        others = members[c][members[c] != q]
        if not len(others):
            raise ValueError(
                f"Image {q} is the only one of its class; it cannot be a query."
            )
        out[i] = others[rng.integers(len(others))]
        if mode == "most_similar":
            pool = np.asarray(pool, np.int64)
            same = np.flatnonzero((labels[pool] == c) & (pool != q))
            if len(same):
                sims = pool_descriptors[same] @ query_descriptors[i]
                out[i] = pool[same[int(np.argmax(sims))]]
    return out
