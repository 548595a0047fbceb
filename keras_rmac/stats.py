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
