"""Proposal recall: how many true boxes the first N regions find."""

from collections.abc import Sequence

import numpy as np


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU `(N,)` of `(N, 4)` boxes with one box (0 for an empty union)."""
    iw = np.clip(
        np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]),
        0,
        None,
    )
    ih = np.clip(
        np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]),
        0,
        None,
    )
    inter = iw * ih

    def area(b):
        return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(
            b[..., 3] - b[..., 1], 0, None
        )

    union = area(boxes) + area(box) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def proposal_recall(
    proposals: Sequence[np.ndarray],
    true_boxes: Sequence[np.ndarray],
    top_n: int | None = None,
    iou: float = 0.5,
) -> float:
    """Fraction of true boxes matched by one of the first `top_n` proposals.

    A true box is recalled when some proposal among the first `top_n` of
    its image has IoU >= `iou` with it (the usual proposal recall of
    Faster R-CNN's evaluation). True boxes with NaN coordinates (no box)
    are skipped.

    Args:
        proposals: per image, an array `(N_i, 4)` of `(x0, y0, x1, y1)`,
            best first (e.g. `keras_rmac.models.regions.region_boxes`).
        true_boxes: per image, an array `(G_i, 4)` (or `(4,)`) in the same
            coordinates.
        top_n: int or None. Proposals considered per image; None takes all.
            Defaults to None.
        iou: float. IoU threshold. Defaults to `0.5`.

    Returns:
        Recall in [0, 1] (NaN when there is no true box).

    Example:
    >>> proposal_recall(
    ...     [np.array([[0, 0, 10, 10], [20, 20, 30, 30]])],
    ...     [np.array([[21, 21, 30, 30], [50, 50, 60, 60]])],
    ... )
    0.5
    """
    if len(proposals) != len(true_boxes):
        raise ValueError(
            f"{len(proposals)} proposal lists but {len(true_boxes)} lists of "
            "true boxes: give one of each per image."
        )
    found = total = 0
    for props, truth in zip(proposals, true_boxes):
        props = np.asarray(props, np.float64).reshape(-1, 4)[:top_n]
        truth = np.asarray(truth, np.float64).reshape(-1, 4)
        for box in truth[~np.isnan(truth).any(axis=1)]:
            total += 1
            found += int(len(props) > 0 and _iou(props, box).max() >= iou)
    return float(found / total) if total else float("nan")
