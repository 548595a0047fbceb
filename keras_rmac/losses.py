"""Ranking losses for training R-MAC descriptors, in `keras.ops`.

Three losses of the retrieval literature, each as a plain function and as a
`keras.losses.Loss`:

- the triplet margin loss of Gordo et al. (2017), Eq. 1, on squared
  Euclidean distances: `max(0, m + |q - p|^2 - |q - n|^2)`;
- the contrastive (siamese) loss of Radenovic et al. (2018), on plain
  (not squared) Euclidean distances:
  `y * d^2 / 2 + (1 - y) * max(0, m - d)^2 / 2` with `d = |a - b|`;
- the listwise average-precision loss of Revaud et al. (2019): one minus
  the mean over the images of a batch of a quantised (histogram-binned,
  hence differentiable) AP of the ranking of the other images of the
  batch by cosine similarity.

The pairwise `Loss` classes read the streams from `y_pred` stacked on axis
1 (`(B, 3, D)` for triplets, `(B, 2, D)` for pairs), which is what
`TripletModel` returns, so `model.fit()` needs no custom training step;
`ContrastiveTupleLoss` trains the contrastive loss on the same triplet
rows (query, positive, mined negative). `APLoss` reads descriptors
`(B, D)` and class labels `(B,)` (what `ListwiseModel` trains on).
"""

import keras
from keras import ops

from keras_rmac.checks import check_int


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


@keras.saving.register_keras_serializable(package="keras_rmac")
class ContrastiveTupleLoss(keras.losses.Loss):
    """Contrastive loss on triplet rows, as tuples of cnnimageretrieval.

    Radenovic et al. (2018) train on tuples (query, positive, N hard
    negatives) with the sum of the contrastive losses of the pair (query,
    positive) and of the N pairs (query, negative). Hard-negative mining
    (`keras_rmac.data.mining.HardNegativeMiner` with
    `negatives_per_query=N`) writes such a tuple as N triplet rows
    `(q, p, n_i)`, so this loss reads `y_pred` `(B, 3, D)` like
    `TripletMarginLoss` and gives each row
    `pull(q, p) / N + push(q, n_i)`: summed over the N rows of a query,
    that is exactly the tuple's loss (the positive pair counted once).
    `y_true` is ignored.

    Args:
        margin: float. Margin on the Euclidean distance. Defaults to
            `0.7`.
        negatives_per_query: int. `N`, the rows per mined tuple.
            Defaults to `1`.
        reduction: as in `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"contrastive_tuple_loss"`.

    Example:
    >>> import numpy as np
    >>> e = np.eye(2)
    >>> y_pred = np.stack([e[[0]], e[[1]], e[[0]]], axis=1)  # (1, 3, 2)
    >>> # pull |q - p|^2 / 2 = 1, push max(0, 0.7 - 0)^2 / 2 = 0.245
    >>> round(float(ContrastiveTupleLoss()(np.zeros(1), y_pred)), 6)
    1.245

    Reference:
        - [Radenovic et al., 2018](https://arxiv.org/abs/1711.02512)
    """

    def __init__(
        self,
        margin=0.7,
        negatives_per_query=1,
        reduction="sum_over_batch_size",
        name="contrastive_tuple_loss",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.margin = _check_margin(margin)
        self.negatives_per_query = check_int(
            "negatives_per_query", negatives_per_query
        )

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        _check_streams(y_pred, 3, "ContrastiveTupleLoss")
        query, positive, negative = y_pred[:, 0], y_pred[:, 1], y_pred[:, 2]
        ones = ops.ones(ops.shape(y_pred)[:1], y_pred.dtype)
        pull = contrastive_loss(query, positive, ones, self.margin)
        push = contrastive_loss(query, negative, 0.0 * ones, self.margin)
        return pull / self.negatives_per_query + push

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "margin": self.margin,
                "negatives_per_query": self.negatives_per_query,
            }
        )
        return config


def bin_centres(bins):
    """The `bins` equally spaced centres of quantised AP, from 1 to -1.

    Args:
        bins: int >= 2.

    Returns:
        A list of `bins` floats, decreasing (the best similarity first).

    Example:
    >>> bin_centres(5)
    [1.0, 0.5, 0.0, -0.5, -1.0]
    """
    bins = check_int("bins", bins, minimum=2)
    return [1.0 - 2.0 * m / (bins - 1) for m in range(bins)]


def quantized_average_precision(descriptors, labels, bins=20):
    """Quantised AP of every image of a batch against the others.

    Each image is a query; the database is every other image of the batch
    (the query itself excluded), ranked by cosine similarity `s` (inner
    product of the descriptors, which should be L2-normalised; `s` is
    clipped to [-1, 1]). As in Revaud et al. (2019), Eq. 4-6, the ranking
    is replaced by a soft histogram: `bins` centres `c_m` spread from 1 to
    -1 with step `delta = 2 / (bins - 1)`, and each similarity is assigned
    to the two nearest centres with the triangular kernel
    `max(0, 1 - |s - c_m| / delta)` (the weights of one item sum to 1).
    With `n_m` the (soft) number of items and `p_m` the number of
    positives in bin m, precision and recall at bin m are
    `P_m = sum_{m' <= m} p_m' / sum_{m' <= m} n_m'` and
    `dR_m = p_m / N_pos`, and `AP = sum_m P_m dR_m`: differentiable in
    the descriptors. It equals the exact AP when the similarities sit on
    bin centres and no two share a bin. Otherwise it is an approximation
    that more bins do not make exact: an item between two centres counts
    the share `w` of itself in the upper bin, which shifts the precision
    of a positive by up to about 1 / (rank + 1) (tests/test_ap_loss.py);
    coarse bins also merge nearby items (ties). Revaud et al. use 20 bins.

    Images with a negative label are ignored: neither query nor database
    item (e.g. a repeated or unreadable image of a class-balanced batch).
    Queries without a positive in the batch get AP 0 and `valid` False.

    Args:
        descriptors: tensor `(B, D)`.
        labels: int tensor `(B,)`: class of each image; images of the same
            class are each other's positives.
        bins: int >= 2. The number of centres `M`. Defaults to `20`.

    Returns:
        `(ap, valid)`: float tensor `(B,)` and bool tensor `(B,)`.

    Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> ap, valid = quantized_average_precision(x, np.array([0, 0, 1]))
    >>> [round(float(v), 4) for v in ap], [bool(v) for v in valid]
    ([1.0, 1.0, 0.0], [True, True, False])

    Reference:
        - [Revaud et al., 2019](https://arxiv.org/abs/1906.07589)
    """
    centres = bin_centres(bins)
    delta = 2.0 / (len(centres) - 1)
    x = ops.convert_to_tensor(descriptors)
    if len(x.shape) != 2:
        raise ValueError(
            "quantized_average_precision expects descriptors of shape "
            f"(B, D), got shape {x.shape}."
        )
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    known = labels >= 0
    # Pairs (query i, database item j): j != i, both known.
    n = ops.shape(x)[0]
    others = ops.logical_not(ops.cast(ops.eye(n), "bool"))
    pairs = others & known[:, None] & known[None, :]
    positive = pairs & (labels[:, None] == labels[None, :])
    pairs = ops.cast(pairs, x.dtype)
    positive = ops.cast(positive, x.dtype)
    sims = ops.clip(ops.matmul(x, ops.transpose(x)), -1.0, 1.0)
    # Soft assignment of each similarity to the bins: (B, B, M).
    centres = ops.convert_to_tensor(centres, dtype=x.dtype)
    weights = ops.relu(1.0 - ops.abs(sims[..., None] - centres) / delta)
    items = ops.sum(weights * pairs[..., None], axis=1)  # (B, M)
    hits = ops.sum(weights * positive[..., None], axis=1)  # (B, M)
    # Precision at each bin (from the best bin down) times recall step.
    precision = ops.cumsum(hits, axis=1) / ops.maximum(
        ops.cumsum(items, axis=1), 1e-12
    )
    num_positives = ops.sum(positive, axis=1)
    valid = num_positives > 0
    ap = ops.sum(precision * hits, axis=1) / ops.maximum(num_positives, 1.0)
    return ap, valid


@keras.saving.register_keras_serializable(package="keras_rmac")
class APLoss(keras.losses.Loss):
    """Listwise average-precision loss, `1 - mAP` of a batch, for `fit()`.

    Every image of the batch is a query against all the others (`B (B -
    1)` query-database pairs); the loss is one minus the mean quantised AP
    over the queries that have a positive in the batch (see
    `quantized_average_precision`). `y_true` holds the class labels `(B,)`
    (negative: ignored image) and `y_pred` the descriptors `(B, D)`.
    Class-balanced batches (`keras_rmac.data.class_batches`: P classes x K
    images) give every query K - 1 positives.

    Per-query values are `(1 - AP) * B / (number of valid queries)` (0 for
    queries without a positive), so the default reduction, the mean over
    the batch, is the mean over the valid queries.

    Args:
        bins: int >= 2. Quantisation bins `M`. Defaults to `20`.
        reduction: as in `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"ap_loss"`.

    Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> round(float(APLoss()(np.array([0, 1, 0, 1]), x)), 6)  # perfect
    0.0

    Reference:
        - [Revaud et al., 2019](https://arxiv.org/abs/1906.07589)
    """

    def __init__(
        self,
        bins=20,
        reduction="sum_over_batch_size",
        name="ap_loss",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.bins = check_int("bins", bins, minimum=2)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) != 2:
            raise ValueError(
                "APLoss expects `y_pred` of shape (B, D) (one descriptor per "
                f"image, as ListwiseModel returns), got shape {y_pred.shape}."
            )
        ap, valid = quantized_average_precision(y_pred, y_true, self.bins)
        valid = ops.cast(valid, y_pred.dtype)
        size = ops.cast(ops.shape(y_pred)[0], y_pred.dtype)
        scale = size / ops.maximum(ops.sum(valid), 1.0)
        return (1.0 - ap) * valid * scale

    def get_config(self):
        config = super().get_config()
        config.update({"bins": self.bins})
        return config
