"""PCAProjection against an SVD oracle written independently."""

import numpy as np
import pytest

from keras_rmac.search.projection import PCAProjection


def _svd_oracle(x, dim):
    """Mean and top right singular vectors of the centred data (float64)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:dim].T, s


@pytest.mark.parametrize("n, d, dim", [(200, 12, 5), (7, 12, 12), (50, 3, 1)])
def test_fit_matches_svd(n, d, dim):
    rng = np.random.default_rng(n)
    # Anisotropic data with distinct variances so the subspace is unique.
    x = rng.standard_normal((n, d)) * np.geomspace(3, 0.1, d) + 0.5
    x = x.astype(np.float32)
    p = PCAProjection.fit(x, dim)
    mean, basis, _ = _svd_oracle(x, dim)
    np.testing.assert_allclose(p.mean, mean, atol=1e-5)
    assert p.matrix.shape == (d, dim) and p.matrix.dtype == np.float32
    # Orthonormal columns spanning the oracle's principal subspace (the
    # projector is sign- and rotation-free).
    np.testing.assert_allclose(p.matrix.T @ p.matrix, np.eye(dim), atol=1e-5)
    keep = min(dim, n - 1)  # centred rank is at most n - 1
    np.testing.assert_allclose(
        p.matrix[:, :keep] @ p.matrix[:, :keep].T,
        basis[:, :keep] @ basis[:, :keep].T,
        atol=1e-4,
    )
    # Sign convention: each column's largest-magnitude entry is positive.
    peak = np.abs(p.matrix).argmax(axis=0)
    assert (p.matrix[peak, np.arange(dim)] > 0).all()


def test_scores_preserved_on_a_subspace():
    # Data on a 3-d affine subspace: keeping 3 directions loses nothing,
    # so projected inner products + <q, mean> equal the exact ones.
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((10, 3)))[0]
    offset = rng.standard_normal(10)
    x = (rng.standard_normal((40, 3)) @ basis.T + offset).astype(np.float32)
    q = rng.standard_normal((6, 10)).astype(np.float32)
    p = PCAProjection.fit(x, 3)
    approx = p.project_queries(q) @ p.project_database(x).T
    approx += p.score_offset(q)[:, None]
    exact = q.astype(np.float64) @ x.astype(np.float64).T
    np.testing.assert_allclose(approx, exact, atol=1e-4)


def test_chunked_covariance_equals_one_block(monkeypatch):
    from keras_rmac.search import projection

    rng = np.random.default_rng(2)
    x = (rng.standard_normal((101, 6)) * np.arange(1, 7)).astype(np.float32)
    whole = PCAProjection.fit(x, 4)
    monkeypatch.setattr(projection, "_BLOCK_ROWS", 10)
    chunked = PCAProjection.fit(x, 4)
    np.testing.assert_allclose(chunked.matrix, whole.matrix, atol=1e-5)
    np.testing.assert_allclose(chunked.mean, whole.mean, atol=1e-6)


def test_single_vector():
    x = np.array([[0.6, 0.8, 0.0]], np.float32)
    p = PCAProjection.fit(x, 2)
    np.testing.assert_allclose(p.mean, x[0])
    np.testing.assert_allclose(p.project_database(x), 0.0, atol=1e-7)
    np.testing.assert_allclose(p.score_offset(x), [1.0], atol=1e-6)


@pytest.mark.parametrize(
    "matrix, mean, message",
    [
        (np.zeros((3, 4)), np.zeros(3), "dim <= D"),
        (np.zeros((3, 2)), np.zeros(2), "mean"),
        (np.full((3, 2), np.nan), np.zeros(3), "finite"),
    ],
)
def test_constructor_validates(matrix, mean, message):
    with pytest.raises(ValueError, match=message):
        PCAProjection(matrix, mean)


def test_fit_validates_dim():
    with pytest.raises(ValueError, match="dim"):
        PCAProjection.fit(np.ones((5, 3), np.float32), 4)


def test_variance_share_picks_the_fewest_directions():
    rng = np.random.default_rng(5)
    # Variances 16, 9, 4, 1, 0.01, ...: shares of the total are known.
    scales = np.array([4.0, 3.0, 2.0, 1.0] + [0.1] * 6)
    x = rng.standard_normal((4000, 10)) * scales
    x = (x - x.mean(0)) @ np.linalg.qr(rng.standard_normal((10, 10)))[0]
    _, _, s = _svd_oracle(x, 10)
    share = np.cumsum(s**2) / np.sum(s**2)
    for target in (0.5, 0.9, 0.99, 1.0):
        want = int(np.argmax(share >= target - 1e-12)) + 1
        p = PCAProjection.fit(x.astype(np.float32), 10, variance=target)
        assert p.projection_dim == want, target
    assert PCAProjection.fit(x, 2, variance=0.99).projection_dim == 2  # capped


def test_rotation_keeps_the_subspace_and_spreads_variance():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, 8)) * np.geomspace(5, 0.5, 8)
    plain = PCAProjection.fit(x, 4)
    rotated = PCAProjection.fit(x, 4, rotate=True, seed=3)
    np.testing.assert_allclose(
        rotated.matrix.T @ rotated.matrix, np.eye(4), atol=1e-5
    )
    np.testing.assert_allclose(
        rotated.matrix @ rotated.matrix.T,
        plain.matrix @ plain.matrix.T,
        atol=1e-5,
    )
    # PCA sorts the variance; the rotation evens it out.
    var_plain = plain.project_database(x).var(axis=0)
    var_rot = rotated.project_database(x).var(axis=0)
    assert var_plain[0] / var_plain[-1] > var_rot.max() / var_rot.min()
    np.testing.assert_allclose(var_rot.sum(), var_plain.sum(), rtol=1e-4)


def test_old_dimension_names_are_deprecated_aliases():
    p = PCAProjection(np.eye(4, 2), np.zeros(4))
    assert (p.dimension, p.projection_dim) == (4, 2)
    with pytest.warns(DeprecationWarning, match="dimension"):
        assert p.input_dim == 4
    with pytest.warns(DeprecationWarning, match="projection_dim"):
        assert p.output_dim == 2
