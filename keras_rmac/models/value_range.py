"""Pixel value ranges: images given in another range than RGB 0..255.

An `RMACModel` expects RGB pixels in [0, 255], as the `keras.applications`
backbones do; the backbone's own preprocessing (`keras_rmac.layers.
preprocess`) is part of the graph. Arrays in another range, such as the
float images in [0, 1] that `tf.image.convert_image_dtype` returns, are
mapped linearly onto [0, 255] first when their `value_range` is given:

    x' = (x - low) * (255 / (high - low))      (in float32)

`value_range=(0, 255)` leaves the pixels untouched, so the default
descriptors do not change.

When no `value_range` is given, a float array whose maximum lies in
(0, 1] is almost surely in [0, 1] (a genuine 0..255 photo that dark is
practically impossible; an all-zero image is legal and not suspected):
`RMACModel.extract` and `adapt_pca` then warn once per model with a
`ValueRangeWarning` naming the fix, and carry on unchanged, because
rescaling on a guess would change the descriptors of genuinely dark
0..255 images. Integer arrays and image files are never suspected.
"""

import numbers

import numpy as np
import tensorflow as tf

DEFAULT_VALUE_RANGE = (0.0, 255.0)
"""The pixel range the network expects: RGB in [0, 255]."""


class ValueRangeWarning(UserWarning):
    """Float pixels look like [0, 1] where [0, 255] is expected."""


def validate_value_range(value_range) -> tuple[float, float] | None:
    """`value_range` as `(low, high)` floats, or None when None.

    Args:
        value_range: None, or two finite numbers `(low, high)`, low < high.

    Returns:
        tuple of two floats, or None.

    Raises:
        ValueError: not two finite numbers, or `low >= high`; the message
            names the value received.

    Example:

    >>> validate_value_range([0, 1])
    (0.0, 1.0)
    """
    if value_range is None:
        return None
    try:
        values = tuple(value_range)
    except TypeError:
        values = ()
    ok = len(values) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
    )
    if ok:
        low, high = (float(v) for v in values)
        ok = bool(np.isfinite(low) and np.isfinite(high) and low < high)
    if not ok:
        raise ValueError(
            "`value_range` must be two finite numbers (low, high) with "
            "low < high, such as (0, 1) or (0, 255). Received: "
            f"value_range={value_range!r}"
        )
    return low, high


def rescale_to_255(images, value_range):
    """Pixels in `value_range` mapped linearly onto [0, 255].

    Works on NumPy arrays (in `RMACModel.extract`) and on tensors (in the
    exported serving graph), with the same float32 arithmetic.

    Args:
        images: array or tensor of pixels.
        value_range: validated `(low, high)`.

    Returns:
        `images` itself when `value_range` is `(0, 255)`, else float32
        `(images - low) * (255 / (high - low))`, of the same kind.

    Example:

    >>> rescale_to_255(np.array([0.0, 0.5, 1.0]), (0.0, 1.0))
    array([  0. , 127.5, 255. ], dtype=float32)
    """
    low, high = value_range
    if (low, high) == DEFAULT_VALUE_RANGE:
        return images
    offset = np.float32(low)
    scale = np.float32(255.0 / (high - low))
    if tf.is_tensor(images):
        return (tf.cast(images, tf.float32) - offset) * scale
    return (np.asarray(images, np.float32) - offset) * scale


def unit_range_peak(arrays) -> float | None:
    """The maximum of float pixels that look like [0, 1], else None.

    Args:
        arrays: a list of arrays (or tensors) of pixels, e.g. one batch.

    Returns:
        The maximum over all of them when they are all floating point and
        it lies in (0, 1]; None otherwise (integer pixels, an all-zero or
        empty batch, NaN, or a maximum above 1).

    Example:

    >>> unit_range_peak([np.full((2, 2, 3), 0.8)])
    0.8
    >>> unit_range_peak([np.zeros((2, 2, 3))]) is None
    True
    """
    peak = None
    for array in arrays:
        array = np.asarray(array)
        if array.dtype.kind != "f":
            return None
        if array.size:
            value = float(np.max(array))
            peak = value if peak is None else max(peak, value)
    if peak is not None and 0.0 < peak <= 1.0:
        return peak
    return None


def unit_range_message(peak: float, where: str) -> str:
    """The warning for float pixels whose maximum is `peak` (<= 1)."""
    return (
        f"{where}: float images with maximum {peak:.4g}, so probably in "
        "[0, 1], but the model expects RGB in [0, 255]; their descriptors "
        "will be wrong. Pass value_range=(0, 1) (or multiply the images by "
        "255). If they really are 0..255 pixels, pass value_range=(0, 255) "
        "to silence this warning. It is shown once per model."
    )
