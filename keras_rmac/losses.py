"""Ranking losses for training R-MAC descriptors, in `keras.ops`.

Two losses of the retrieval literature, each as a plain function and as a
`keras.losses.Loss`:

- the triplet margin loss of Gordo et al. (2017), Eq. 1, on squared
  Euclidean distances: `max(0, m + |q - p|^2 - |q - n|^2)`;
- the contrastive (siamese) loss of Radenovic et al. (2018), on plain
  (not squared) Euclidean distances:
  `y * d^2 / 2 + (1 - y) * max(0, m - d)^2 / 2` with `d = |a - b|`.

The `Loss` classes read the streams from `y_pred` stacked on axis 1
(`(B, 3, D)` for triplets, `(B, 2, D)` for pairs), which is what
`TripletModel` returns, so `model.fit()` needs no custom training step.
"""

import keras
from keras import ops


def _squared_distance(a, b):
    diff = a - b
    return ops.sum(diff * diff, axis=-1)


def triplet_margin_loss(query, positive, negative, margin=0.1):
    """Per-triplet margin loss on squared Euclidean distances.

    `max(0, margin + |q - p|^2 - |q - n|^2)`, the ranking loss of Gordo et
    al. (2017), Eq. 1. With L2-normalised descriptors the squared distances
    lie in `[0, 4]`; the paper's margin is 0.1.

    Args:
        query: tensor `(..., D)`. Query descriptors.
        positive: tensor `(..., D)`. Descriptors of images of the same
            instance as the query.
        negative: tensor `(..., D)`. Descriptors of other instances.
        margin: float. Margin `m`. Defaults to `0.1`.

    Returns:
        Tensor `(...)` of per-triplet losses (not reduced).

    Example:
    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]]); p = np.array([[0.0, 1.0]])
    >>> n = np.array([[1.0, 0.0]])
    >>> round(float(triplet_margin_loss(q, p, n)[0]), 6)  # 0.1 + 2 - 0
    2.1

    Reference:
        - [Gordo et al., 2017](https://arxiv.org/abs/1610.07940)
    """
    d_pos = _squared_distance(query, positive)
    d_neg = _squared_distance(query, negative)
    return ops.relu(margin + d_pos - d_neg)


def contrastive_loss(anchor, other, match, margin=0.7):
    """Per-pair contrastive loss on (non-squared) Euclidean distances.

    `match * d^2 / 2 + (1 - match) * max(0, margin - d)^2 / 2` with
    `d = |anchor - other|`, as in Radenovic et al. (2018), Eq. 3: matching
    pairs are pulled together, non-matching pairs pushed at least `margin`
    apart. The distance is the plain Euclidean distance (not squared); for
    L2-normalised descriptors it lies in `[0, 2]`, and Radenovic et al. use
    margin 0.7 to 0.85. The gradient of `d` is taken as 0 at `d = 0`
    (identical vectors) instead of NaN.

    Args:
        anchor: tensor `(..., D)`.
        other: tensor `(..., D)`.
        match: tensor `(...)`: 1 for a matching pair, 0 otherwise.
        margin: float. Margin on the distance. Defaults to `0.7`.

    Returns:
        Tensor `(...)` of per-pair losses (not reduced).

    Example:
    >>> import numpy as np
    >>> a = np.array([[1.0, 0.0]]); b = np.array([[0.0, 1.0]])
    >>> round(float(contrastive_loss(a, b, np.array([1.0]))[0]), 6)
    1.0

    Reference:
        - [Radenovic et al., 2018](https://arxiv.org/abs/1711.02512)
    """
    anchor = ops.convert_to_tensor(anchor)
    other = ops.convert_to_tensor(other, dtype=anchor.dtype)
    match = ops.cast(match, anchor.dtype)
    squared = _squared_distance(anchor, other)
    # sqrt with a finite (zero) gradient at d = 0: the double-where trick.
    positive = squared > 0
    distance = ops.where(
        positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0
    )
    pull = 0.5 * squared
    push = 0.5 * ops.square(ops.relu(margin - distance))
    return match * pull + (1.0 - match) * push


def _check_margin(margin):
    if not margin >= 0:
        raise ValueError(f"`margin` must be >= 0, got margin={margin!r}.")
    return float(margin)


def _check_streams(y_pred, count, what):
    shape = y_pred.shape
    if len(shape) != 3 or (shape[1] is not None and shape[1] != count):
        raise ValueError(
            f"{what} expects `y_pred` of shape (B, {count}, D) (streams "
            f"stacked on axis 1, as TripletModel returns), got shape {shape}."
        )


@keras.saving.register_keras_serializable(package="keras_rmac")
class TripletMarginLoss(keras.losses.Loss):
    """Triplet margin loss on squared distances, for `model.fit()`.

    Reads query, positive and negative descriptors from `y_pred` of shape
    `(B, 3, D)` (stacked on axis 1) and ignores `y_true`. See
    `triplet_margin_loss`.

    Args:
        margin: float. Defaults to `0.1` (the paper's).
        reduction: as in `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"` (the mean over triplets).
        name: str. Defaults to `"triplet_margin_loss"`.

    Example:
    >>> import numpy as np
    >>> y_pred = np.stack([np.eye(2)[[0]], np.eye(2)[[1]], np.eye(2)[[0]]], 1)
    >>> round(float(TripletMarginLoss()(np.zeros(1), y_pred)), 6)
    2.1

    Reference:
        - [Gordo et al., 2017](https://arxiv.org/abs/1610.07940)
    """

    def __init__(
        self,
        margin=0.1,
        reduction="sum_over_batch_size",
        name="triplet_margin_loss",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.margin = _check_margin(margin)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        _check_streams(y_pred, 3, "TripletMarginLoss")
        return triplet_margin_loss(
            y_pred[:, 0], y_pred[:, 1], y_pred[:, 2], self.margin
        )

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config


@keras.saving.register_keras_serializable(package="keras_rmac")
class ContrastiveLoss(keras.losses.Loss):
    """Contrastive loss on Euclidean distances, for `model.fit()`.

    Reads the two descriptors of each pair from `y_pred` of shape
    `(B, 2, D)`; `y_true` `(B,)` is 1 for matching pairs and 0 otherwise.
    See `contrastive_loss`.

    Args:
        margin: float. Defaults to `0.7`.
        reduction: as in `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"contrastive_loss"`.

    Example:
    >>> import numpy as np
    >>> y_pred = np.stack([np.eye(2)[[0]], np.eye(2)[[0]]], axis=1)
    >>> round(float(ContrastiveLoss()(np.zeros(1), y_pred)), 6)  # 0.7^2/2
    0.245

    Reference:
        - [Radenovic et al., 2018](https://arxiv.org/abs/1711.02512)
    """

    def __init__(
        self,
        margin=0.7,
        reduction="sum_over_batch_size",
        name="contrastive_loss",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.margin = _check_margin(margin)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        _check_streams(y_pred, 2, "ContrastiveLoss")
        match = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1,))
        return contrastive_loss(y_pred[:, 0], y_pred[:, 1], match, self.margin)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config
