"""ShiftPCA.adapt from no more vectors than dimensions (issue 10 item 3).

From N <= D vectors the sample covariance is singular (rank <= N - 1).
Whitening it as is maps the centred training vectors to equidistant points
(their descriptors come out nearly orthogonal); by default the layer then
learns shift + PCA without whitening and says so. From N > D vectors it
whitens exactly as before (bit for bit).
"""

import logging

import numpy as np
import pytest

from keras_rmac.layers import ShiftPCA
from keras_rmac.layers import functional
from tests.helpers import run_layer_test

D = 6


def vectors(n, d=D, seed=0):
    """`n` correlated vectors with unequal variances and a non-zero mean."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3, 0.2, d)[None, :]
    return rng.normal(size=(n, d)) @ mix.T + rng.normal(size=d) * 4


def todays_whitening(data, units, power=0.5, epsilon=1e-6):
    """The kernel and bias ShiftPCA.adapt learned before item 3, in NumPy.

    One block of rows: sums in float64, biased covariance, eigh, largest
    first (stable), eigenvalues floored at epsilon * largest, scaled by
    l^-power, bias = -mean @ kernel; stored as float32.
    """
    data = np.asarray(data, np.float64)
    count = len(data)
    mean = data.sum(axis=0) / count
    cov = (data.T @ data) / count - np.outer(mean, mean)
    values, vecs = np.linalg.eigh(cov)
    order = np.argsort(-values, kind="stable")[:units]
    values, vecs = values[order], vecs[:, order]
    floor = epsilon * max(float(values[0]), np.finfo(np.float64).tiny)
    kernel = vecs * np.maximum(values, floor)[None, :] ** (-power)
    bias = -mean @ kernel
    return kernel.astype(np.float32), bias.astype(np.float32)


def adapted(data, **kwargs):
    power = kwargs.pop("power", None)
    layer = ShiftPCA(**kwargs)
    layer.adapt(data, power=power)
    return layer


def centred_oracle(data):
    """Mean, principal axes (rows) and eigenvalues from the SVD."""
    mean = data.mean(0)
    _, s, vt = np.linalg.svd(data - mean, full_matrices=False)
    return mean, vt, s**2 / len(data)


# ---------------------------------------------------------------------------
# More vectors than dimensions: exactly today's kernel and bias.


@pytest.mark.parametrize("count", [D + 1, D + 2, 5 * D, 400])
@pytest.mark.parametrize("units", [None, 3])
@pytest.mark.parametrize("shrinkage", ["auto", None])
def test_over_determined_is_bit_identical_to_todays_whitening(
    count, units, shrinkage, caplog
):
    data = vectors(count, seed=count)
    with caplog.at_level(logging.WARNING, logger="keras_rmac"):
        layer = adapted(data, units=units, shrinkage=shrinkage)
    kernel, bias = todays_whitening(data, units or D)
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    np.testing.assert_array_equal(layer.bias.numpy(), bias)
    assert not caplog.records


def test_over_determined_rank_deficient_data_keeps_the_epsilon_floor():
    # 50 vectors in a 3-d subspace of 6 dimensions: N > D, so nothing
    # changes, the empty directions keep today's floored scale.
    rng = np.random.default_rng(4)
    data = rng.normal(size=(50, 3)) @ rng.normal(size=(3, D)) + 1.0
    layer = adapted(data, power=0.5)
    kernel, bias = todays_whitening(data, D)
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    np.testing.assert_array_equal(layer.bias.numpy(), bias)


# ---------------------------------------------------------------------------
# No more vectors than dimensions.


@pytest.mark.parametrize("count", [2, 3, D - 1, D])
def test_todays_whitening_makes_the_training_vectors_equidistant(count):
    # The failure being fixed, shown on the oracle: whitening all N - 1
    # supported directions gives the centred training vectors the Gram
    # matrix N (I - 11^T / N): all pairwise distances equal, whatever the
    # data, so their similarities carry no information.
    data = vectors(count, seed=count)
    kernel, bias = todays_whitening(data, D)
    y = data @ kernel.astype(np.float64) + bias
    gram = y @ y.T
    want = count * (np.eye(count) - 1.0 / count)
    np.testing.assert_allclose(gram, want, atol=1e-3 * count)


@pytest.mark.parametrize("count", [2, 3, D - 1, D])
def test_under_determined_default_is_shift_plus_pca_rotation(count):
    data = vectors(count, seed=count)
    layer = adapted(data, power=0.5)
    kernel = layer.kernel.numpy().astype(np.float64)
    bias = layer.bias.numpy().astype(np.float64)
    mean, axes, values = centred_oracle(data)
    mu = values.sum() / D  # trace of the covariance / D
    # Every direction is scaled alike, by mu^-1/2: kernel = V mu^-1/2.
    np.testing.assert_allclose(
        kernel.T @ kernel, np.eye(D) / mu, rtol=1e-5, atol=1e-6 / mu
    )
    np.testing.assert_allclose(bias, -mean @ kernel, rtol=1e-5, atol=1e-4)
    # The first columns are the supported principal axes, largest first.
    rank = count - 1
    got = kernel[:, :rank] * np.sqrt(mu)
    signs = np.sign(np.sum(got * axes[:rank].T, axis=0))
    np.testing.assert_allclose(got * signs, axes[:rank].T, atol=1e-5)
    # So the training vectors keep their geometry: distances are scaled,
    # not equalised.
    y = layer(data.astype("float32")).numpy().astype(np.float64)
    d_in = np.linalg.norm(data[:, None] - data[None], axis=-1)
    d_out = np.linalg.norm(y[:, None] - y[None], axis=-1)
    np.testing.assert_allclose(d_out, d_in / np.sqrt(mu), rtol=1e-4)


def test_under_determined_with_fewer_units_keeps_the_top_directions():
    data = vectors(D - 2, seed=9)
    layer = adapted(data, units=2)
    mean, axes, values = centred_oracle(data)
    mu = values.sum() / D
    kernel = layer.kernel.numpy().astype(np.float64) * np.sqrt(mu)
    signs = np.sign(np.sum(kernel * axes[:2].T, axis=0))
    np.testing.assert_allclose(kernel * signs, axes[:2].T, atol=1e-5)


def test_a_single_vector_is_only_shifted():
    # N = 1: no variance at all, no direction to prefer: identity kernel,
    # the one vector maps to zero; nothing is blown up.
    x = vectors(1, seed=2)
    layer = adapted(x)
    np.testing.assert_array_equal(layer.kernel.numpy(), np.eye(D))
    np.testing.assert_allclose(layer.bias.numpy(), -x[0], rtol=1e-6)
    assert np.all(np.isfinite(layer.kernel.numpy()))


def test_equal_vectors_are_only_shifted():
    x = np.repeat(vectors(1, seed=3), 4, axis=0)
    layer = adapted(x)
    np.testing.assert_array_equal(layer.kernel.numpy(), np.eye(D))


@pytest.mark.parametrize("count", [2, D - 1, D, D + 1, 40])
@pytest.mark.parametrize("intensity", [0.25, 0.9])
def test_float_shrinkage_whitens_the_shrunk_covariance(count, intensity):
    # shrinkage=a uses (1 - a) S + a mu I, mu = trace(S) / D, for any N:
    # the training vectors' covariance in the principal basis becomes
    # diag(l / ((1 - a) l + a mu)), by the SVD oracle.
    data = vectors(count, seed=count)
    layer = adapted(data, shrinkage=intensity)
    y = layer(data.astype("float32")).numpy().astype(np.float64)
    mean, axes, values = centred_oracle(data)
    full = np.zeros(D)
    full[: len(values)] = values
    mu = full.sum() / D
    want = full / ((1 - intensity) * full + intensity * mu)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(
        np.linalg.eigvalsh(np.cov(y.T, bias=True))[::-1],
        want,
        rtol=1e-3,
        atol=1e-4,
    )


def test_shrinkage_none_keeps_todays_math_when_under_determined():
    data = vectors(D - 1, seed=5)
    layer = adapted(data, shrinkage=None)
    kernel, bias = todays_whitening(data, D)
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    np.testing.assert_array_equal(layer.bias.numpy(), bias)


def test_functional_shrinkage_zero_is_todays_formula():
    data = vectors(D + 3, seed=6)
    mean = data.mean(0)
    cov = np.cov(data.T, bias=True)
    a = functional.whitening_from_moments(mean, cov, D, 0.5, 1e-6)
    b = functional.whitening_from_moments(mean, cov, D, 0.5, 1e-6, 0.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_streamed_under_determined_equals_in_memory():
    # The basis of the directions without data is arbitrary (it follows
    # the rounding): compare the supported columns up to sign, and the
    # outputs' geometry, which does not depend on that basis.
    data = vectors(D - 1, seed=7)
    a = adapted(data)
    b = ShiftPCA()
    b.adapt(block for block in (data[:2], data[2:]))
    ka, kb = a.kernel.numpy()[:, : D - 2], b.kernel.numpy()[:, : D - 2]
    signs = np.sign(np.sum(ka * kb, axis=0))
    np.testing.assert_allclose(ka, kb * signs, atol=1e-5)
    ya = a(data.astype("float32")).numpy()
    yb = b(data.astype("float32")).numpy()
    np.testing.assert_allclose(ya @ ya.T, yb @ yb.T, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# The warning.


@pytest.mark.parametrize(
    "count,shrinkage,action",
    [
        (1, "auto", "without whitening"),
        (2, "auto", "without whitening"),
        (D - 1, "auto", "without whitening"),
        (D, "auto", "without whitening"),
        (D, 0.5, "toward isotropy by 0.5"),
        (D, None, "whitening it anyway"),
    ],
)
def test_under_determined_adapt_warns_with_the_counts(
    count, shrinkage, action, caplog
):
    with caplog.at_level(logging.WARNING, logger="keras_rmac"):
        adapted(vectors(count, seed=count), shrinkage=shrinkage)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.name == "keras_rmac.layers.shift_pca"
    message = record.getMessage()
    assert f"{count} vectors for {D} dimensions" in message
    assert f"rank <= {count - 1}" in message
    assert action in message


@pytest.mark.parametrize("shrinkage", ["auto", 0.5, None])
def test_no_warning_from_more_vectors_than_dimensions(shrinkage, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_rmac"):
        adapted(vectors(D + 1), shrinkage=shrinkage)
    assert not caplog.records


def test_region_blocks_count_vectors_not_images(caplog):
    # (N, R, C): 2 images of 3 regions are 6 vectors, for 6 dimensions.
    data = vectors(6).reshape(2, 3, D)
    with caplog.at_level(logging.WARNING, logger="keras_rmac"):
        adapted(data)
    assert "6 vectors for 6 dimensions" in caplog.text


# ---------------------------------------------------------------------------
# The option.


@pytest.mark.parametrize("bad", [-0.1, 1.5, "ledoit", True, [0.5]])
def test_bad_shrinkage_rejected(bad):
    with pytest.raises(ValueError, match="shrinkage"):
        ShiftPCA(shrinkage=bad)


@pytest.mark.parametrize("shrinkage", ["auto", None, 0.0, 0.3, 1])
def test_shrinkage_round_trips_through_the_config(shrinkage):
    layer = ShiftPCA.from_config(ShiftPCA(shrinkage=shrinkage).get_config())
    assert layer.shrinkage == shrinkage
    assert ShiftPCA().get_config()["shrinkage"] == "auto"


def test_layer_contract_with_shrinkage():
    layer_data = (
        np.random.default_rng(6).normal(size=(2, 3, 4)).astype("float32")
    )
    run_layer_test(
        ShiftPCA,
        {"units": 2, "power": 0.3, "shrinkage": 0.5},
        layer_data,
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
    )
