"""Exact (brute-force) inner-product search in NumPy: the oracle."""

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_rmac.search import storage
from keras_rmac.search.base import Index

logger = logging.getLogger(__name__)

VECTORS_FILE = "vectors.npy"


def top_k_inner_product(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    block_bytes: int = 64 * 2**20,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` rows of `database` by inner product with each query.

    Scores are computed block by block (a matrix product per block, then
    `argpartition`), keeping a running top-`k`, so memory stays bounded
    by `block_bytes` of scores whatever the database size; queries are
    scored 1024 at a time. Ties are broken by the smaller row index, also
    when they straddle the `k`-th place (the result is that of a stable
    sort of each query's scores).

    Args:
        queries: float32 array `(Q, D)`.
        database: float32 array `(N, D)` (may be memory-mapped).
        k: int, 1 <= k <= N.
        block_bytes: int. Approximate size of one block of scores.
            Defaults to 64 MiB.

    Returns:
        A tuple `(rows, scores)`: int64 and float32 arrays `(Q, k)`, best
        first.
    """
    n = database.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be in [1, {n}]. Received: k={k}")
    nq = queries.shape[0]
    q_block = max(1, min(nq, 1024))
    db_block = max(k, block_bytes // (4 * q_block))
    rows_out = np.empty((nq, k), np.int64)
    scores_out = np.empty((nq, k), np.float32)
    for qs in range(0, nq, q_block):
        q = queries[qs : qs + q_block]
        best_rows = np.empty((len(q), 0), np.int64)
        best_scores = np.empty((len(q), 0), np.float32)
        for ds in range(0, n, db_block):
            block = np.asarray(database[ds : ds + db_block])
            scores = q @ block.T
            if scores.shape[1] > k:
                part = _top_k_columns(scores, np.arange(ds, ds + len(block)), k)
                scores = np.take_along_axis(scores, part, axis=1)
            else:
                part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
            best_rows = np.concatenate([best_rows, part + ds], axis=1)
            best_scores = np.concatenate([best_scores, scores], axis=1)
            if best_rows.shape[1] > k:
                part = _top_k_columns(best_scores, best_rows, k)
                best_rows = np.take_along_axis(best_rows, part, axis=1)
                best_scores = np.take_along_axis(best_scores, part, axis=1)
        # Best first; ties by smaller row (lexsort: last key is primary).
        order = np.lexsort((best_rows, -best_scores), axis=1)
        rows_out[qs : qs + len(q)] = np.take_along_axis(best_rows, order, 1)
        scores_out[qs : qs + len(q)] = np.take_along_axis(best_scores, order, 1)
    return rows_out, scores_out


def _top_k_columns(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Columns of the `k` best entries of each line: score, then row.

    `argpartition` picks any of several equal scores at the `k`-th place;
    the few lines where that leaves out a tied entry are redone with a full
    stable ordering, so a tie always goes to the smaller row.

    Args:
        scores: `(Q, M)` array, M > k.
        rows: the database rows of the columns, `(M,)` or `(Q, M)`.
        k: int >= 1.

    Returns:
        int64 `(Q, k)` column indices (in no particular order).
    """
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    chosen = (np.take_along_axis(scores, part, axis=1) == kth).sum(axis=1)
    tied = np.nonzero((scores == kth).sum(axis=1) > chosen)[0]
    if tied.size:
        rows = np.broadcast_to(rows, scores.shape)
        part = part.copy()
        for i in tied:
            part[i] = np.lexsort((rows[i], -scores[i]))[:k]
    return part


class ExactIndex(Index):
    """Brute-force inner-product index: exact results, the oracle.

    Scores every database vector with a NumPy matrix product, in blocks
    whose score matrices stay under `block_bytes`, and keeps the top `k`
    with `argpartition`. Search time grows linearly with the collection;
    use `ScannIndex` for large ones. Saved as `vectors.npy` (float32),
    which `load` memory-maps read-only.

    Args:
        dimension: int. Descriptor dimension D.
        metadata: dict or None. Stored in the manifest. Defaults to None.
        block_bytes: int. Memory bound for one block of scores. Defaults
            to 64 MiB.

    Example:

    >>> import numpy as np
    >>> x = np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32)
    >>> index = ExactIndex(2)
    >>> index.add(x, ids=[7, 8, 9])
    >>> ids, scores = index.search(np.array([[0.8, 0.6]], np.float32), k=4)
    >>> ids
    array([[ 8,  7,  9, -1]])
    >>> scores.round(2)
    array([[0.96, 0.8 , 0.6 , -inf]], dtype=float32)
    """

    index_type = "exact"

    def __init__(
        self,
        dimension: int,
        metadata: Mapping[str, Any] | None = None,
        block_bytes: int = 64 * 2**20,
    ):
        super().__init__(dimension, metadata)
        if int(block_bytes) < 1:
            raise ValueError(
                f"`block_bytes` must be positive. Received: {block_bytes!r}"
            )
        self.block_bytes = int(block_bytes)
        self._chunks: list[np.ndarray] = []
        self._vectors = np.empty((0, self.dimension), np.float32)

    @property
    def vectors(self) -> np.ndarray:
        """All stored descriptors, float32 `(N, D)` in row order."""
        self._consolidate()
        return self._vectors

    def _consolidate(self) -> None:
        if self._chunks:
            if len(self._vectors) == 0 and len(self._chunks) == 1:
                self._vectors = self._chunks[0]  # no copy
            else:
                self._vectors = np.concatenate([self._vectors] + self._chunks)
            self._chunks = []

    def _options_config(self) -> dict[str, Any]:
        return {"block_bytes": self.block_bytes}

    def _add_vectors(self, x: np.ndarray) -> None:
        self._chunks.append(x)

    def _search_rows(self, q, k):
        return top_k_inner_product(
            q, self.vectors, k, block_bytes=self.block_bytes
        )

    def _vectors_at_rows(self, rows):
        return np.asarray(self.vectors[rows])

    def _write_payload(self, directory):
        np.save(
            os.path.join(directory, VECTORS_FILE),
            np.ascontiguousarray(self.vectors),
            allow_pickle=False,
        )
        return self._options_config(), {"vectors": VECTORS_FILE}

    @classmethod
    def _from_saved(cls, directory, manifest):
        index = cls.from_config(
            {"dimension": manifest["dimension"], **manifest["params"]}
        )
        name = manifest.get("files", {}).get("vectors", VECTORS_FILE)
        vectors = storage.load_array(directory, name, mmap_mode="r")
        expected = (manifest["count"], manifest["dimension"])
        if vectors.dtype != np.float32 or vectors.shape != expected:
            raise ValueError(
                f"{os.path.join(directory, name)} holds {vectors.dtype} "
                f"{vectors.shape}, expected float32 {expected}: the index is "
                "damaged; rebuild it."
            )
        index._vectors = vectors
        return index
