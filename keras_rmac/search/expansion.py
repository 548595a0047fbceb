"""Query expansion (average, alpha-QE) and database-side augmentation.

All three re-weight descriptors by their nearest neighbours:

- average query expansion (AQE, Chum et al. 2007): the query becomes
  `L2norm(q + sum of its top-k database vectors)`;
- alpha query expansion (alpha-QE, Radenovic et al. 2018): the same with
  weights `max(s_i, 0) ** alpha`, `s_i` the similarity of neighbour `i`
  to the query (the query itself has weight 1); `alpha = 0` is AQE;
- database-side augmentation (DBA, Arandjelovic & Zisserman 2012, Gordo
  et al. 2017): every database vector becomes `L2norm(d + sum of weighted
  top-k neighbours of d)` (itself excluded), with weight 1 or
  `max(s_i, 0) ** alpha`. The result is a new database to re-index.

The array functions (`average_query_expansion`, `alpha_query_expansion`)
take the neighbours explicitly; `expand_queries` and
`search_with_query_expansion` fetch them from any `Index`. A compact
`ScannIndex` keeps no float descriptors: pass them as `database`, row
`i` being the vector added `i`-th (`index.ids[i]`).

Reference: Radenovic, Tolias, Chum, "Fine-tuning CNN Image Retrieval with
No Human Annotation", TPAMI 2018, https://arxiv.org/abs/1711.02512;
Gordo et al., "End-to-end Learning of Deep Visual Representations for
Image Retrieval", IJCV 2017, https://arxiv.org/abs/1610.07940
"""

import numpy as np

from keras_rmac.search.base import Index
from keras_rmac.search.factory import make_index


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _as_matrix(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"`{what}` must have shape (N, D), got {x.shape}.")
    return x


def _check_neighbors(queries, neighbors, what="neighbors"):
    neighbors = np.asarray(neighbors, dtype=np.float32)
    if (
        neighbors.ndim != 3
        or neighbors.shape[0] != queries.shape[0]
        or (neighbors.shape[2] != queries.shape[1])
    ):
        raise ValueError(
            f"`{what}` must have shape (Q, k, D) = ({queries.shape[0]}, k, "
            f"{queries.shape[1]}), got {neighbors.shape}."
        )
    return neighbors


def _check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"`alpha` must be >= 0. Received: alpha={alpha!r}")
    return alpha


def _check_k(k, name="k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`{name}` must be an int >= 1. Received: {k!r}")
    return int(k)


def _weighted_sum(base, neighbors, weights):
    # Accumulate in float64: sums of many near-parallel unit vectors.
    total = base.astype(np.float64) + np.einsum(
        "qk,qkd->qd", weights.astype(np.float64), neighbors
    )
    return _l2_normalize(total)


def average_query_expansion(
    queries: np.ndarray,
    neighbors: np.ndarray,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Average query expansion: `L2norm(q + sum_i n_i)`.

    Args:
        queries: float array `(Q, D)`.
        neighbors: float array `(Q, k, D)`, the top-k database vectors of
            each query.
        mask: bool array `(Q, k)` or None. False entries (e.g. padding of
            missing results) are left out. Defaults to None (all used).

    Returns:
        float32 array `(Q, D)`, rows L2-normalised.

    Example:

    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]])
    >>> n = np.array([[[0.0, 1.0]]])
    >>> average_query_expansion(q, n).round(4)
    array([[0.7071, 0.7071]], dtype=float32)
    """
    queries = _as_matrix(queries, "queries")
    neighbors = _check_neighbors(queries, neighbors)
    weights = np.ones(neighbors.shape[:2])
    if mask is not None:
        weights = weights * np.asarray(mask, bool)
    return _weighted_sum(queries, neighbors, weights)


def alpha_query_expansion(
    queries: np.ndarray,
    neighbors: np.ndarray,
    similarities: np.ndarray,
    alpha: float = 3.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Alpha query expansion: `L2norm(q + sum_i max(s_i, 0)**alpha n_i)`.

    Negative similarities get weight 0 (a negative base to a fractional
    power is undefined). `alpha=0` weighs every neighbour 1 (average QE).

    Args:
        queries: float array `(Q, D)`.
        neighbors: float array `(Q, k, D)`.
        similarities: float array `(Q, k)`: similarity of each neighbour
            to its query (the search scores). Non-finite entries (padding)
            get weight 0.
        alpha: float >= 0. Defaults to 3.0 (Radenovic et al.).
        mask: bool array `(Q, k)` or None. False entries are left out.
            Defaults to None.

    Returns:
        float32 array `(Q, D)`, rows L2-normalised.

    Example:

    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]])
    >>> n = np.array([[[0.0, 1.0], [0.6, 0.8]]])
    >>> s = np.array([[0.5, 0.6]])
    >>> e = 1 * q[0] + 0.5**2 * n[0, 0] + 0.6**2 * n[0, 1]
    >>> np.allclose(alpha_query_expansion(q, n, s, alpha=2),
    ...             e / np.linalg.norm(e))
    True
    """
    queries = _as_matrix(queries, "queries")
    neighbors = _check_neighbors(queries, neighbors)
    alpha = _check_alpha(alpha)
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.shape != neighbors.shape[:2]:
        raise ValueError(
            f"`similarities` must have shape {neighbors.shape[:2]}, got "
            f"{sims.shape}."
        )
    valid = np.isfinite(sims)
    if mask is not None:
        valid &= np.asarray(mask, bool)
    weights = np.power(np.maximum(np.where(valid, sims, 0.0), 0.0), alpha)
    return _weighted_sum(queries, neighbors, np.where(valid, weights, 0.0))


def _neighbor_vectors(
    index: Index, ids: np.ndarray, database: np.ndarray | None
) -> np.ndarray:
    """Float vectors of result ids `(Q, k)`; padding (-1) gives zeros."""
    if database is None:
        return index.get_vectors(ids)
    database = np.asarray(database)
    if database.shape != (len(index), index.dimension):
        raise ValueError(
            f"`database` must have shape ({len(index)}, {index.dimension}) "
            f"(one row per indexed vector, in the order they were added), "
            f"got {database.shape}."
        )
    rows = index.rows_of(ids)
    out = np.zeros(ids.shape + (index.dimension,), np.float32)
    valid = rows >= 0
    out[valid] = database[rows[valid]]
    return out


def expand_queries(
    index: Index,
    queries: np.ndarray,
    k: int = 10,
    alpha: float | None = None,
    database: np.ndarray | None = None,
) -> np.ndarray:
    """Expanded queries: AQE (alpha None) or alpha-QE over `index`'s top-k.

    Args:
        index: an `Index` holding the database.
        queries: float array `(Q, D)`.
        k: int >= 1. Neighbours used for the expansion. Defaults to 10.
        alpha: float or None. None: average QE; a number: alpha-QE with
            that exponent. Defaults to None.
        database: float array `(len(index), D)` or None. The database
            vectors in row order; needed for a compact `ScannIndex`.
            Defaults to None (taken from the index).

    Returns:
        float32 array `(Q, D)`, rows L2-normalised.
    """
    queries = _as_matrix(queries, "queries")
    ids, scores = index.search(queries, _check_k(k))
    neighbors = _neighbor_vectors(index, ids, database)
    mask = ids >= 0
    if alpha is None:
        return average_query_expansion(queries, neighbors, mask)
    return alpha_query_expansion(queries, neighbors, scores, alpha, mask)


def search_with_query_expansion(
    index: Index,
    queries: np.ndarray,
    k: int,
    qe_k: int = 10,
    alpha: float | None = None,
    database: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Searches, expands the queries with their top `qe_k`, searches again.

    Args:
        index: an `Index`.
        queries: float array `(Q, D)`.
        k: int >= 1. Results per query of the final search.
        qe_k: int >= 1. Neighbours used for the expansion. Defaults to 10.
        alpha: float or None. See `expand_queries`. Defaults to None.
        database: float array or None. See `expand_queries`.

    Returns:
        `(ids, scores)` of the expanded queries, as `Index.search`.
    """
    expanded = expand_queries(index, queries, qe_k, alpha, database)
    return index.search(expanded, k)


def database_side_augmentation(
    database: np.ndarray,
    k: int = 10,
    alpha: float | None = None,
    index: Index | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Database-side augmentation: each vector plus its top-k neighbours.

    `d' = L2norm(d + sum_i w_i n_i)` over the `k` nearest other database
    vectors `n_i` (the vector itself is excluded by id; if it is not among
    the `k + 1` results, e.g. among exact duplicates, the last result is
    dropped instead), with `w_i = 1` (alpha None) or
    `max(s_i, 0) ** alpha`. Index the returned vectors in place of the
    originals; queries may then be expanded the same way (QE).

    Args:
        database: float array `(N, D)`, rows L2-normalised.
        k: int >= 1. Neighbours added to each vector. Defaults to 10.
        alpha: float or None. Weighting exponent; None for uniform weights.
            Defaults to None.
        index: `Index` or None. An index over `database` (row `i` of
            `database` added `i`-th) used to find the neighbours, e.g. a
            `ScannIndex` for large N. Defaults to None: an `ExactIndex`.
        batch_size: int. Database vectors searched at once. Defaults to
            1024.

    Returns:
        float32 array `(N, D)`, rows L2-normalised.

    Example:

    >>> import numpy as np
    >>> x = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    >>> database_side_augmentation(x, k=1).round(3)
    array([[0.949, 0.316],
           [0.949, 0.316],
           [0.447, 0.894]], dtype=float32)
    """
    x = _as_matrix(database, "database")
    k = _check_k(k)
    batch_size = _check_k(batch_size, "batch_size")
    if alpha is not None:
        alpha = _check_alpha(alpha)
    if index is None:
        index = make_index("exact", x.shape[1])
        index.add(x)
    elif len(index) != len(x) or index.dimension != x.shape[1]:
        raise ValueError(
            f"`index` holds {len(index)} vectors of dimension "
            f"{index.dimension}; `database` is {x.shape}. Pass an index "
            "built from exactly these vectors, in this order."
        )
    own_ids = index.ids
    out = np.empty_like(x)
    for start in range(0, len(x), batch_size):
        block = x[start : start + batch_size]
        ids, scores = index.search(block, k + 1)
        is_self = ids == own_ids[start : start + len(block), None]
        # Stable sort moves the self match (if any) last, keeping order.
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(ids, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        valid = ids >= 0
        neighbors = np.zeros(ids.shape + (x.shape[1],), np.float32)
        neighbors[valid] = x[index.rows_of(ids[valid])]
        if alpha is None:
            weights = valid.astype(np.float64)
        else:
            sims = np.where(valid, scores, 0.0).astype(np.float64)
            weights = np.where(
                valid, np.power(np.maximum(sims, 0.0), alpha), 0.0
            )
        out[start : start + len(block)] = _weighted_sum(
            block, neighbors, weights
        )
    return out
