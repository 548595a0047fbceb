"""Index-wide linear projection of descriptors before product quantisation.

Product quantisation splits a vector into blocks and quantises each with
its own small codebook; it works best when the dimensions it sees carry
the variance of the data and are decorrelated across blocks. R-MAC
descriptors straight out of a network are neither: many of the 1280
MobileNetV2 channels are near-constant and the rest are correlated. The
R-MAC paper compresses PCA-reduced descriptors for the same reason.

`PCAProjection` learns, from the indexed descriptors themselves, the mean
`m` and the top `dim` principal directions `P` (`D x dim`, orthonormal
columns) and maps a database vector to `y = P^T (x - m)` and a query to
`P^T q`. Inner products are preserved up to the discarded directions:

    <q, x> = <q, m> + <q, x - m>
           ~ <q, m> + <P^T q, P^T (x - m)>,

so scores stay on the cosine scale once `<q, m>` is added back per query.
It is one matrix and one vector for the whole index, not per-image state,
and is saved as two `.npy` files.

Reference: Gordo et al., "End-to-end Learning of Deep Visual
Representations for Image Retrieval", IJCV 2017 (Section 6.3,
compressed descriptors), https://arxiv.org/abs/1610.07940
"""

import warnings

import numpy as np

from keras_rmac.stats import mean_and_covariance
from keras_rmac.stats import principal_components


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"PCAProjection.{old} is deprecated; use PCAProjection.{new}.",
        DeprecationWarning,
        stacklevel=3,
    )


# Rows accumulated at a time when computing the covariance.
_BLOCK_ROWS = 65_536


class PCAProjection:
    """Centre-and-project map `x -> P^T (x - m)` learned by PCA.

    Args:
        matrix: float array `(D, dim)` with orthonormal columns, the
            principal directions in order of decreasing variance.
        mean: float array `(D,)`, the mean of the training vectors.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((100, 8))
    >>> p = PCAProjection.fit(x.astype(np.float32), dim=3)
    >>> p.project_database(x[:2]).shape
    (2, 3)
    """

    def __init__(self, matrix: np.ndarray, mean: np.ndarray):
        matrix = np.asarray(matrix)
        mean = np.asarray(mean)
        if matrix.ndim != 2 or matrix.shape[1] > matrix.shape[0]:
            raise ValueError(
                "`matrix` must be (D, dim) with dim <= D. Received shape "
                f"{matrix.shape}."
            )
        if mean.shape != (matrix.shape[0],):
            raise ValueError(
                f"`mean` must have shape ({matrix.shape[0]},) to match "
                f"`matrix` {matrix.shape}. Received shape {mean.shape}."
            )
        if not (np.isfinite(matrix).all() and np.isfinite(mean).all()):
            raise ValueError("`matrix` and `mean` must be finite.")
        self.matrix = np.ascontiguousarray(matrix, np.float32)
        self.mean = np.ascontiguousarray(mean, np.float32)

    @property
    def dimension(self) -> int:
        """Dimension D of the descriptors."""
        return int(self.matrix.shape[0])

    @property
    def projection_dim(self) -> int:
        """Dimension of the projected vectors."""
        return int(self.matrix.shape[1])

    @property
    def input_dim(self) -> int:
        """Deprecated alias of `dimension`."""
        _deprecated("input_dim", "dimension")
        return self.dimension

    @property
    def output_dim(self) -> int:
        """Deprecated alias of `projection_dim`."""
        _deprecated("output_dim", "projection_dim")
        return self.projection_dim

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        dim: int,
        *,
        variance: float | None = None,
        rotate: bool = False,
        seed: int = 0,
    ) -> "PCAProjection":
        """Learns the mean and the top principal directions of `x`.

        The covariance is accumulated in float64 over row blocks, so `x`
        may be large (an `(N, D)` float32 array or memory map) without an
        `N x D` temporary.

        Args:
            x: float array `(N, D)`, N >= 1.
            dim: int. Number of directions kept, 1 <= dim <= D (with
                `variance`, the most kept).
            variance: float in (0, 1] or None. Keep the fewest directions
                (at most `dim`, at least 1) whose variance is at least this
                share of the total. Defaults to None (keep `dim`).
            rotate: bool. Follow the PCA by a random rotation of the kept
                subspace (drawn from `seed`), which spreads the variance
                evenly over the dimensions, so every product-quantisation
                block gets a similar share. Defaults to False.
            seed: int. Seed of the rotation. Defaults to 0.

        Returns:
            A `PCAProjection`. Without rotation, directions are sorted by
            decreasing variance, each signed so that its largest-magnitude
            entry is positive (a deterministic choice among `v` and `-v`).
        """
        n, d = x.shape
        if n < 1:
            raise ValueError("PCAProjection.fit needs at least one vector.")
        if not 1 <= dim <= d:
            raise ValueError(
                f"`dim` must be in [1, {d}] for {d}-d vectors. Received: "
                f"dim={dim!r}"
            )
        if variance is not None and not 0 < variance <= 1:
            raise ValueError(
                f"`variance` must be in (0, 1]. Received: {variance!r}"
            )
        mean, cov, _ = mean_and_covariance(
            x[start : start + _BLOCK_ROWS] for start in range(0, n, _BLOCK_ROWS)
        )
        # Symmetrised first: float64 accumulation leaves cov a hair from it.
        values, vectors = principal_components((cov + cov.T) / 2)
        if variance is not None:
            share = np.cumsum(np.clip(values, 0, None))
            if share[-1] > 0:
                share /= share[-1]
                needed = int(np.searchsorted(share, variance - 1e-12)) + 1
            else:  # all vectors equal: one direction is as good as any
                needed = 1
            dim = max(1, min(dim, needed))
        top = vectors[:, :dim]  # a view, column-major like eigh's output
        peak = np.argmax(np.abs(top), axis=0)
        top *= np.sign(top[peak, np.arange(dim)])
        if rotate:
            g = np.random.default_rng(seed).standard_normal((dim, dim))
            q, r = np.linalg.qr(g)
            # Sign fix so the rotation is uniformly distributed.
            top = top @ (q * np.where(np.diag(r) < 0, -1.0, 1.0))
        return cls(top, mean)

    def project_database(self, x: np.ndarray) -> np.ndarray:
        """`(N, D)` -> `(N, dim)`: `(x - mean) @ matrix`, float32."""
        return np.ascontiguousarray(
            (np.asarray(x, np.float32) - self.mean) @ self.matrix
        )

    def project_queries(self, q: np.ndarray) -> np.ndarray:
        """`(Q, D)` -> `(Q, dim)`: `q @ matrix`, float32."""
        return np.ascontiguousarray(np.asarray(q, np.float32) @ self.matrix)

    def score_offset(self, q: np.ndarray) -> np.ndarray:
        """`(Q,)` float32: `q @ mean`, added to projected scores."""
        return np.asarray(q, np.float32) @ self.mean
