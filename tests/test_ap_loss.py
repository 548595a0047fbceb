"""Listwise quantised-AP loss against NumPy oracles, values and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rmac import losses


def _quantised_ap_oracle(x, labels, bins):
    """Revaud et al. (2019), Eq. 4-6, with loops (float64)."""
    x = np.asarray(x, np.float64)
    centres = np.linspace(1.0, -1.0, bins)
    delta = 2.0 / (bins - 1)
    aps, valid = [], []
    for i in range(len(x)):
        if labels[i] < 0:
            aps.append(0.0)
            valid.append(False)
            continue
        items = np.zeros(bins)
        hits = np.zeros(bins)
        for j in range(len(x)):
            if j == i or labels[j] < 0:
                continue
            s = min(1.0, max(-1.0, float(x[i] @ x[j])))
            for m, c in enumerate(centres):
                w = max(0.0, 1.0 - abs(s - c) / delta)
                items[m] += w
                hits[m] += w * (labels[j] == labels[i])
        count = hits.sum()
        ap = 0.0
        for m in range(bins):
            if hits[m]:
                ap += hits[: m + 1].sum() / items[: m + 1].sum() * hits[m]
        aps.append(ap / count if count > 0.5 else 0.0)
        valid.append(count > 0.5)
    return np.array(aps), np.array(valid)


def _exact_ap_oracle(x, labels, i):
    """AP of query i: mean precision at the rank of each positive."""
    others = [j for j in range(len(x)) if j != i]
    sims = [float(x[i] @ x[j]) for j in others]
    order = [others[k] for k in np.argsort(sims)[::-1]]
    found, precisions = 0, []
    for rank, j in enumerate(order, start=1):
        if labels[j] == labels[i]:
            found += 1
            precisions.append(found / rank)
    return float(np.mean(precisions))


def _unit(rng, n, d, norm=1.0):
    x = rng.normal(size=(n, d))
    return norm * x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hand_computed_case():
    # 2-d unit vectors on the bin centres (bins=3: 1, 0, -1).
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = np.array([0, 0, 1, 0])
    ap, valid = losses.quantized_average_precision(x, labels, bins=3)
    # Query 0: positives at s=1 and s=-1, negative at 0: (1 + 2/3) / 2.
    # Query 3: both positives tie at s=-1 behind the negative: 2/3 (the
    # exact AP with that tie broken worst, 1/2 and 2/3, would be 7/12).
    np.testing.assert_allclose(ap, [5 / 6, 5 / 6, 0.0, 2 / 3], atol=1e-6)
    np.testing.assert_array_equal(valid, [True, True, False, True])


@pytest.mark.parametrize("bins", [2, 3, 7, 20])
@pytest.mark.parametrize("shape", [(2, 3), (6, 4), (11, 1)])
def test_matches_loop_oracle(bins, shape):
    rng = np.random.default_rng(bins * 100 + shape[0])
    x = _unit(rng, *shape)
    labels = rng.integers(0, 3, size=shape[0])
    labels[0] = -1 if shape[0] > 2 else labels[0]  # an ignored image
    ap, valid = losses.quantized_average_precision(x, labels, bins)
    want_ap, want_valid = _quantised_ap_oracle(x, labels, bins)
    np.testing.assert_allclose(np.asarray(ap), want_ap, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(valid), want_valid)


def _on_circle(cosines):
    """Query (1, 0) and database items at the given cosines to it."""
    angles = np.arccos(np.asarray(cosines, np.float64))
    items = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.concatenate([[[1.0, 0.0]], items])


@pytest.mark.parametrize("bins", [17, 33, 65, 1025])
def test_exact_ap_when_similarities_sit_on_bin_centres(bins):
    # Cosines on the 1/8 grid lie on every centre grid 1 - 2m/(bins - 1)
    # with (bins - 1) a multiple of 16: each item falls in one bin.
    rng = np.random.default_rng(bins)
    cosines = rng.permutation(np.arange(-8, 9) / 8.0)[:10]
    x = _on_circle(cosines)
    labels = np.array([0] + list(rng.integers(0, 2, size=10)))
    labels[1] = 0  # at least one positive
    ap, _ = losses.quantized_average_precision(
        tf.constant(x, tf.float64), labels, bins
    )
    exact = _exact_ap_oracle(x, labels, 0)
    assert abs(float(ap[0]) - exact) < 1e-9


def test_coarse_bins_merge_items_fine_bins_split_them():
    """What "converges to the exact AP" means for the triangular kernel.

    Coarse bins put several items in one bin (their order is lost). Once
    every item has its own pair of bins (bins finer than the gaps between
    similarities), an item at fraction w between two centres still counts
    w of itself in the upper bin, so the quantised AP is the closed form
    below, which equals the exact AP only when every w is 0 or 1 (the
    item on a centre, previous test); it does not tend to it for generic
    similarities (Revaud et al.'s estimator, as in their code).
    """
    cosines = np.array([0.91373, 0.52311, 0.33779, -0.14193, -0.61237])
    labels = np.array([0, 1, 0, 0, 1, 0])  # query first
    x = _on_circle(cosines)
    exact = _exact_ap_oracle(x, labels, 0)
    for bins in (1001, 5001):
        delta = 2.0 / (bins - 1)
        above_hits = above_items = 0
        closed = 0.0
        for s, y in zip(cosines, labels[1:]):  # best first
            w = 1.0 - ((1.0 - s) / delta) % 1.0  # share of the upper bin
            if y == labels[0]:
                closed += w * (above_hits + w) / (above_items + w)
                closed += (1 - w) * (above_hits + 1) / (above_items + 1)
            above_hits += y == labels[0]
            above_items += 1
        closed /= above_hits
        ap, _ = losses.quantized_average_precision(
            tf.constant(x, tf.float64), labels, bins
        )
        assert abs(float(ap[0]) - closed) < 1e-9
        assert abs(closed - exact) > 1e-3  # fine bins: still not exact
    coarse, _ = losses.quantized_average_precision(x, labels, 3)
    assert abs(float(coarse[0]) - exact) > 0.02


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    x0 = _unit(rng, 5, 3, norm=0.9)  # |s| < 1: clipping inactive
    labels = np.array([0, 0, 1, 1, 0])
    loss = losses.APLoss(bins=5, dtype="float64")

    def value(x):
        return loss(labels, tf.constant(x, tf.float64))

    xv = tf.Variable(x0, dtype=tf.float64)
    with tf.GradientTape() as tape:
        out = loss(labels, xv)
    grad = tape.gradient(out, xv).numpy()
    numeric = np.zeros_like(x0)
    eps = 1e-6
    for idx in np.ndindex(*x0.shape):
        up, down = x0.copy(), x0.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (float(value(up)) - float(value(down))) / (2 * eps)
    assert np.abs(grad).max() > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(grad, numeric, atol=1e-7, rtol=1e-5)


def test_loss_class_is_mean_over_valid_queries_and_round_trips():
    rng = np.random.default_rng(8)
    x = _unit(rng, 7, 4).astype("float32")
    labels = np.array([0, 0, 1, 1, 2, 3, -1])  # 4 valid queries
    ap, valid = _quantised_ap_oracle(x, labels, 10)
    want = 1.0 - ap[valid].mean()
    loss = keras.losses.deserialize(
        keras.losses.serialize(losses.APLoss(bins=10))
    )
    assert loss.bins == 10
    np.testing.assert_allclose(float(loss(labels, x)), want, atol=1e-6)


def test_loss_traces_with_unknown_batch():
    loss = losses.APLoss(bins=4)
    fn = tf.function(
        loss,
        input_signature=[
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None, 3], tf.float32),
        ],
    )
    x = _unit(np.random.default_rng(1), 4, 3).astype("float32")
    labels = np.array([0, 0, 1, 1], np.int32)
    np.testing.assert_allclose(float(fn(labels, x)), float(loss(labels, x)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bins"):
        losses.APLoss(bins=1)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        losses.APLoss()(np.zeros(2), np.zeros((2, 3, 4)))
