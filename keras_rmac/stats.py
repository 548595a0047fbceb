"""Streaming first and second moments of row vectors (NumPy, float64)."""

from collections.abc import Iterable

import numpy as np


def mean_and_covariance(
    blocks: Iterable[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and (biased) covariance of the rows of all `blocks`.

    Accumulates the sum and the sum of outer products block by block in
    float64, so the vectors never need to be in memory at once.

    Args:
        blocks: iterable of `(n_i, D)` arrays (any float dtype); blocks with
            no rows are allowed.

    Returns:
        `(mean, cov, count)`: `(D,)`, `(D, D)` float64 arrays with
        `cov = sum (x - mean)(x - mean)^T / count`, and the row count.
        `mean` and `cov` are None when no block had a row.

    Raises:
        ValueError: blocks of different dimensions.
    """
    total = outer = None
    count = 0
    for block in blocks:
        block = np.asarray(block, np.float64)
        if total is None:
            total = np.zeros(block.shape[1])
            outer = np.zeros((block.shape[1], block.shape[1]))
        elif block.shape[1] != total.shape[0]:
            raise ValueError(
                f"Vectors of dimension {block.shape[1]} after ones of "
                f"dimension {total.shape[0]}: all blocks must match."
            )
        total += block.sum(axis=0)
        outer += block.T @ block
        count += len(block)
    if not count:
        return None, None, 0
    mean = total / count
    return mean, outer / count - np.outer(mean, mean), count


def principal_components(
    cov: np.ndarray, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of a covariance, largest first.

    The one eigendecomposition behind PCA-whitening (`ShiftPCA`) and the
    compact index's projection (`keras_rmac.search.projection`).

    Args:
        cov: `(D, D)` symmetric matrix (float64 recommended).
        count: int or None. How many components to keep; all by default.

    Returns:
        `(values, vectors)`: `(count,)` eigenvalues in decreasing order
        (ties keep NumPy's ascending-order position, reversed stably) and
        the `(D, count)` matching unit eigenvectors as columns.

    Example:

    >>> values, vectors = principal_components(np.diag([1.0, 3.0, 2.0]))
    >>> values.tolist()
    [3.0, 2.0, 1.0]
    >>> np.abs(vectors[:, 0]).tolist()
    [0.0, 1.0, 0.0]
    """
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(-values, kind="stable")[:count]
    return values[order], vectors[:, order]
