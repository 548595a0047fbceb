import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.layers import ShiftPCA
from tests.helpers import run_layer_test


def correlated(n, d, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3, 0.1, d)[None, :]
    return rng.normal(size=(n, d)) @ mix.T + rng.normal(size=d) * 5


def test_identity_before_adapt_so_unadapted_model_is_plain_rmac():
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    np.testing.assert_allclose(ShiftPCA()(x).numpy(), x, atol=1e-7)


def test_identity_on_first_units_coordinates():
    x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    np.testing.assert_allclose(
        ShiftPCA(units=3)(x).numpy(), x[:, :3], atol=1e-7
    )


def test_adapt_whitens_training_data():
    data = correlated(2000, 6)
    layer = ShiftPCA()
    layer.adapt(data)
    y = layer(data.astype("float32")).numpy().astype(np.float64)
    # Shift: zero mean. Full whitening (power 0.5): identity covariance.
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(6), atol=1e-3)


def test_adapt_matches_independent_svd_oracle_up_to_sign():
    data = correlated(500, 7, seed=1)
    units, power = 4, 0.5
    layer = ShiftPCA(units=units)
    layer.adapt(data, power=power)
    # Oracle: SVD of the centred data. Right singular vectors are the
    # principal axes, eigenvalues s^2 / n.
    centred = data - data.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    eig = s**2 / len(data)
    want = centred @ vt[:units].T / eig[:units] ** power
    got = layer(data.astype("float32")).numpy()
    signs = np.sign(np.sum(want * got, axis=0))
    np.testing.assert_allclose(got * signs, want, rtol=1e-3, atol=1e-3)


def test_power_zero_only_rotates_and_shifts():
    data = correlated(300, 5, seed=2)
    layer = ShiftPCA()
    layer.adapt(data, power=0.0)
    y = layer(data.astype("float32")).numpy()
    # Distances between points are unchanged by shift + rotation.
    d_in = np.linalg.norm(data[:10, None] - data[None, :10], axis=-1)
    d_out = np.linalg.norm(y[:10, None] - y[None, :10], axis=-1)
    np.testing.assert_allclose(d_out, d_in, rtol=1e-4)


def test_streamed_dataset_equals_in_memory_adapt():
    data = correlated(640, 6, seed=3).astype("float32")
    a, b = ShiftPCA(), ShiftPCA()
    a.adapt(data)
    b.adapt(
        tf.data.Dataset.from_tensor_slices(data.reshape(64, 10, 6)).batch(4)
    )
    np.testing.assert_allclose(
        a.kernel.numpy(), b.kernel.numpy(), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        a.bias.numpy(), b.bias.numpy(), rtol=1e-4, atol=1e-4
    )


def test_generator_of_blocks_equals_in_memory_adapt():
    data = correlated(300, 5, seed=4)
    a, b = ShiftPCA(), ShiftPCA()
    a.adapt(data)
    b.adapt(block for block in np.split(data, 3))
    np.testing.assert_allclose(
        a.kernel.numpy(), b.kernel.numpy(), rtol=1e-4, atol=1e-5
    )


def test_adapt_kernel_and_bias_match_numpy_svd_oracle_up_to_sign():
    data = correlated(400, 5, seed=5)
    layer = ShiftPCA(units=3)
    layer.adapt(data)
    # Oracle: principal axes from the SVD of the centred data, eigenvalues
    # s^2 / n; kernel = V diag(l^-1/2), bias = -mean @ kernel.
    mean = data.mean(0)
    _, s, vt = np.linalg.svd(data - mean, full_matrices=False)
    want_kernel = vt[:3].T / np.sqrt(s[:3] ** 2 / len(data))
    want_bias = -mean @ want_kernel
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    signs = np.sign(np.sum(want_kernel * kernel, axis=0))
    np.testing.assert_allclose(kernel * signs, want_kernel, rtol=1e-4)
    np.testing.assert_allclose(bias * signs, want_bias, rtol=1e-4, atol=1e-5)


def test_empty_direction_is_scaled_by_the_eigenvalue_floor():
    # The third coordinate is constant: its variance is 0, and the
    # whitening scale of that direction is capped at
    # (epsilon * largest eigenvalue)^-power instead of blowing up.
    rng = np.random.default_rng(7)
    data = np.concatenate(
        [rng.normal(size=(300, 2)) * [3.0, 1.0], np.full((300, 1), 2.0)],
        axis=1,
    )
    epsilon, power = 1e-4, 0.5
    layer = ShiftPCA(epsilon=epsilon)
    layer.adapt(data, power=power)
    largest = np.linalg.svd(data - data.mean(0), compute_uv=False)[0] ** 2
    cap = (epsilon * largest / len(data)) ** -power
    np.testing.assert_allclose(
        np.abs(layer.kernel.numpy()[:, 2]), [0, 0, cap], rtol=1e-4, atol=1e-3
    )


def test_weights_stay_trainable_after_adapt():
    layer = ShiftPCA()
    layer.adapt(correlated(50, 4))
    assert {w.name for w in layer.trainable_weights} == {"kernel", "bias"}


def test_adapt_rejects_a_different_units_once_built():
    layer = ShiftPCA(units=3)
    layer.build((None, 5))
    with pytest.raises(ValueError, match="units=2"):
        layer.adapt(correlated(50, 5), units=2)


def test_adapt_rejects_wrong_dimension_and_empty_data():
    layer = ShiftPCA()
    layer.build((None, 5))
    with pytest.raises(ValueError, match="dimension 4"):
        layer.adapt(correlated(50, 4))
    with pytest.raises(ValueError, match="no vectors"):
        ShiftPCA().adapt(iter([]))


def test_units_larger_than_input_rejected():
    with pytest.raises(ValueError, match="units"):
        ShiftPCA(units=9).build((None, 4))


def test_layer_contract():
    layer_data = (
        np.random.default_rng(6).normal(size=(2, 3, 4)).astype("float32")
    )
    run_layer_test(
        ShiftPCA,
        {"units": 2, "power": 0.3},
        layer_data,
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
    )
