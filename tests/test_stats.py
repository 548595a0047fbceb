import numpy as np
import pytest

from keras_rmac.stats import mean_and_covariance


def test_blocks_give_numpy_mean_and_biased_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (37, 5)).astype(np.float32)
    # Uneven blocks, an empty one and a single row.
    blocks = [x[:10], x[10:10], x[10:11], x[11:]]
    mean, cov, count = mean_and_covariance(blocks)
    assert count == 37
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), atol=1e-12)
    np.testing.assert_allclose(
        cov, np.cov(x.astype(np.float64), rowvar=False, bias=True), atol=1e-10
    )


def test_single_vector_has_zero_covariance():
    mean, cov, count = mean_and_covariance([np.array([[1.0, -2.0]])])
    assert count == 1
    np.testing.assert_array_equal(mean, [1.0, -2.0])
    np.testing.assert_allclose(cov, np.zeros((2, 2)), atol=1e-15)


def test_no_rows_and_mismatched_blocks():
    assert mean_and_covariance([]) == (None, None, 0)
    assert mean_and_covariance([np.zeros((0, 3))]) == (None, None, 0)
    with pytest.raises(ValueError, match="4 after ones of dimension 3"):
        mean_and_covariance([np.zeros((2, 3)), np.zeros((2, 4))])
