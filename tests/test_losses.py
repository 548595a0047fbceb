"""Triplet and contrastive losses against a NumPy oracle."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rmac import losses


def _triplet_oracle(q, p, n, margin):
    out = []
    for qi, pi, ni in zip(q, p, n):
        d_pos = sum((a - b) ** 2 for a, b in zip(qi, pi))
        d_neg = sum((a - b) ** 2 for a, b in zip(qi, ni))
        out.append(max(0.0, margin + d_pos - d_neg))
    return np.array(out)


def _contrastive_oracle(a, b, y, margin):
    out = []
    for ai, bi, yi in zip(a, b, y):
        d = np.sqrt(sum((u - v) ** 2 for u, v in zip(ai, bi)))
        if yi:
            out.append(0.5 * d * d)
        else:
            out.append(0.5 * max(0.0, margin - d) ** 2)
    return np.array(out)


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.5])
def test_triplet_margin_loss_matches_oracle(margin):
    rng = np.random.default_rng(0)
    q, p, n = (_unit(rng, 17, 5).astype("float32") for _ in range(3))
    # Edge cases: positive == query (d_pos = 0), negative == query
    # (d_neg = 0), an easy triplet well past the margin (zero loss).
    p[0] = q[0]
    n[1] = q[1]
    p[2], n[2] = q[2], -q[2]
    got = keras.ops.convert_to_numpy(
        losses.triplet_margin_loss(q, p, n, margin)
    )
    want = _triplet_oracle(q.astype(float), p, n, margin)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got[2] == 0.0
    np.testing.assert_allclose(got[1], margin + np.sum((q[1] - p[1]) ** 2))


def test_triplet_hand_computed():
    q = np.array([[1.0, 0.0]], "float32")
    p = np.array([[0.6, 0.8]], "float32")  # |q - p|^2 = 0.16 + 0.64 = 0.8
    n = np.array([[0.0, 1.0]], "float32")  # |q - n|^2 = 2
    loss = losses.triplet_margin_loss(q, p, n, margin=1.5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), [0.3], 1e-6)


@pytest.mark.parametrize("margin", [0.0, 0.7, 2.5])
def test_contrastive_loss_matches_oracle(margin):
    rng = np.random.default_rng(1)
    a, b = (_unit(rng, 20, 6).astype("float32") for _ in range(2))
    y = rng.integers(0, 2, size=20).astype("float32")
    b[0], y[0] = a[0], 0.0  # identical non-match: full margin penalty
    b[1], y[1] = a[1], 1.0  # identical match: zero
    got = keras.ops.convert_to_numpy(losses.contrastive_loss(a, b, y, margin))
    want = _contrastive_oracle(a.astype(float), b, y, margin)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0], 0.5 * margin**2, rtol=1e-6)
    assert got[1] == 0.0


def test_contrastive_gradient_finite_for_identical_vectors():
    a = tf.constant([[0.6, 0.8]])
    b = tf.Variable([[0.6, 0.8]])
    with tf.GradientTape() as tape:
        loss = losses.contrastive_loss(a, b, tf.constant([0.0]), 0.7)
    grad = tape.gradient(loss, b)
    assert np.all(np.isfinite(grad.numpy()))


def test_triplet_loss_class_reduces_mean_and_round_trips():
    rng = np.random.default_rng(2)
    y_pred = np.stack([_unit(rng, 6, 4) for _ in range(3)], axis=1)
    y_pred = y_pred.astype("float32")
    loss = losses.TripletMarginLoss(margin=0.3)
    want = _triplet_oracle(
        y_pred[:, 0].astype(float), y_pred[:, 1], y_pred[:, 2], 0.3
    ).mean()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, losses.TripletMarginLoss)
    assert restored.margin == 0.3
    got = float(restored(np.zeros(6), y_pred))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_contrastive_loss_class_reads_labels():
    rng = np.random.default_rng(3)
    y_pred = np.stack([_unit(rng, 8, 4) for _ in range(2)], axis=1)
    y_pred = y_pred.astype("float32")
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], "float32")
    loss = keras.losses.deserialize(
        keras.losses.serialize(losses.ContrastiveLoss(margin=1.2))
    )
    want = _contrastive_oracle(
        y_pred[:, 0].astype(float), y_pred[:, 1], y, 1.2
    ).mean()
    np.testing.assert_allclose(float(loss(y, y_pred)), want, rtol=1e-5)


def test_loss_classes_reject_bad_input():
    with pytest.raises(ValueError, match="margin"):
        losses.TripletMarginLoss(margin=-1.0)
    with pytest.raises(ValueError, match=r"\(B, 3, D\)"):
        losses.TripletMarginLoss()(np.zeros(2), np.zeros((2, 2, 4), "f"))
    with pytest.raises(ValueError, match=r"\(B, 2, D\)"):
        losses.ContrastiveLoss()(np.zeros(2), np.zeros((2, 4), "f"))


@pytest.mark.parametrize("negatives", [1, 3])
def test_contrastive_tuple_loss_sums_to_the_tuple_loss(negatives):
    # cnnimageretrieval's tuple (q, p, n_1..n_N): the sum of the pair
    # losses, the positive pair once. Mining writes it as N rows.
    rng = np.random.default_rng(negatives)
    q, p = _unit(rng, 1, 6), _unit(rng, 1, 6)
    n = _unit(rng, negatives, 6)
    n[0] = q[0] + 0.01  # a hard negative, inside the margin
    tuple_loss = _contrastive_oracle(q, p, [1], 0.7).sum() + sum(
        _contrastive_oracle(q, n[i : i + 1], [0], 0.7).sum()
        for i in range(negatives)
    )
    rows = np.stack(
        [np.repeat(q, negatives, 0), np.repeat(p, negatives, 0), n], axis=1
    ).astype("float32")
    loss = keras.losses.deserialize(
        keras.losses.serialize(
            losses.ContrastiveTupleLoss(0.7, negatives, reduction="sum")
        )
    )
    assert loss.negatives_per_query == negatives
    np.testing.assert_allclose(
        float(loss(np.zeros(negatives), rows)), tuple_loss, rtol=1e-5
    )
    with pytest.raises(ValueError, match="negatives_per_query"):
        losses.ContrastiveTupleLoss(negatives_per_query=0)
