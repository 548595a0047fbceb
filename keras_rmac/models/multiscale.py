"""Multi-resolution descriptors: the one rule for `extract` and the export.

An image is described at every scale `s` of `scales`:

1. Its longest side is resized to `round(max_size * s)` (or to
   `round(longest * s)`, its own longest side, when `max_size` is None),
   rounded half to even as Python's `round`, and at least 1
   (`scale_sizes`). An image whose longest side already has that length
   is not resized at all.
2. The network gives one L2-normalised descriptor per scale.
3. The descriptor is the sum of the per-scale descriptors, L2-normalised
   again, computed in float64 and returned as float32 (`sum_over_scales`);
   with one scale it is that scale's descriptor unchanged.

`RMACModel.extract` applies this rule to NumPy arrays and the SavedModel
export (`keras_rmac.export`) to tensors inside the serving graph; both call
the functions below, so an exported model serves the descriptors that
`extract` computes from the same files.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

MIN_NORM = 1e-6
"""Floor of the norm the multi-scale sum is divided by."""


def validate_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """`scales` as a tuple of floats, checked to be positive and non-empty.

    Args:
        scales: sequence of numbers.

    Returns:
        tuple of float.

    Raises:
        ValueError: empty, or a scale that is not a positive number.

    Example:

    >>> validate_scales([1, 0.5])
    (1.0, 0.5)
    """
    scales = tuple(float(s) for s in scales)
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(
            f"`scales` must be a non-empty list of positive numbers, got "
            f"{scales!r}."
        )
    return scales


def scale_sizes(
    max_size: int | None,
    scales: Sequence[float],
    longest: int | None = None,
) -> list[int | None]:
    """Longest side of the image at each scale.

    Args:
        max_size: int or None. Longest side at scale 1; None uses the
            image's own longest side `longest`.
        scales: sequence of float.
        longest: int or None. The image's longest side, used when
            `max_size` is None. Defaults to `None`.

    Returns:
        One int per scale: `max(1, round(base * s))` with `base` =
        `max_size`, or `longest` when `max_size` is None; a list of None
        (keep each image's size) when both are None.

    Example:

    >>> scale_sizes(48, (1.0, 0.707, 0.5))
    [48, 34, 24]
    >>> scale_sizes(None, (1.0, 0.5), longest=65)
    [65, 32]
    """
    base = longest if max_size is None else max_size
    if base is None:
        return [None for _ in scales]
    return [max(1, int(round(base * float(s)))) for s in scales]


def scale_size_tensor(longest, scale: float, max_size: int | None = None):
    """`scale_sizes` for one scale inside a TensorFlow graph.

    Args:
        longest: int32 scalar tensor. The image's longest side.
        scale: float. The scale.
        max_size: int or None. As in `scale_sizes`. Defaults to `None`.

    Returns:
        int32 scalar tensor, equal to `scale_sizes(max_size, [scale],
        longest)[0]`.
    """
    if max_size is not None:
        return tf.constant(scale_sizes(max_size, (scale,))[0], tf.int32)
    # max(1, round(longest * s)); tf.round rounds half to even, as Python.
    scaled = tf.round(tf.cast(longest, tf.float64) * scale)
    return tf.maximum(tf.cast(scaled, tf.int32), 1)


def _array_ops(values):
    """`(cast, sum, sqrt, maximum)` for NumPy arrays or for tensors."""
    if any(tf.is_tensor(v) for v in values):
        return tf.cast, tf.reduce_sum, tf.sqrt, tf.maximum

    def cast(x, dtype):
        return np.asarray(x).astype(dtype)

    return cast, np.sum, np.sqrt, np.maximum


def sum_over_scales(descriptors):
    """The multi-resolution descriptor from the descriptors of each scale.

    Sum over scales of the L2-normalised descriptors, L2-normalised again
    (in float64, returned as float32). Works on NumPy arrays (in
    `RMACModel.extract`) and on tensors (in the exported serving graph).

    Args:
        descriptors: non-empty sequence of `(B, D)` arrays or tensors, one
            per scale, rows L2-normalised.

    Returns:
        `(B, D)` float32, of the same kind as the inputs; with one scale,
        its descriptors unchanged.

    Example:

    >>> sum_over_scales([np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])])
    array([[0.70710677, 0.70710677]], dtype=float32)
    """
    descriptors = list(descriptors)
    if len(descriptors) == 1:
        return descriptors[0]
    cast, total_of, sqrt, maximum = _array_ops(descriptors)
    # Sum over scales, in float64.
    total = cast(descriptors[0], np.float64)
    for d in descriptors[1:]:
        total = total + cast(d, np.float64)
    # L2-normalise the sum.
    norm = sqrt(total_of(total * total, axis=-1, keepdims=True))
    return cast(total / maximum(norm, MIN_NORM), np.float32)
