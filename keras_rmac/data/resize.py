"""Resizing to the scale the backbone sees: longest side to `max_size`.

`target_size` is the size rule in exact integer arithmetic (Python ints);
`resize_longest_side` applies it with TensorFlow ops, so the same resize runs
eagerly, inside `tf.data` and `tf.function`, and in exported SavedModels with
unknown height and width. Decoding is `keras_rmac.data.image_io`'s job; this
module is its TensorFlow half, kept apart so that decoding and listing files
do not import TensorFlow.
"""

import tensorflow as tf

from keras_rmac.checks import check_int

__all__ = ["resize_longest_side", "target_size"]


def target_size(
    height: int, width: int, max_size: int | None
) -> tuple[int, int]:
    """Output size of `resize_longest_side`, as Python ints.

    The longest side becomes exactly `max_size`; the other side becomes
    `max(1, round_half_up(side * max_size / longest))`, computed exactly in
    integers as `(2 * side * max_size + longest) // (2 * longest)`. Images
    are scaled up as well as down. Useful to bucket images by output shape.

    Args:
        height: int. Input height, >= 1.
        width: int. Input width, >= 1.
        max_size: int or None. Target longest side, >= 1; None keeps the
            input size.

    Returns:
        `(new_height, new_width)`.

    Example:

    >>> target_size(768, 1024, 512)
    (384, 512)
    >>> target_size(4, 2, 5)  # 2 * 5 / 4 = 2.5 rounds up
    (5, 3)
    """
    height = check_int("height", height, 1)
    width = check_int("width", width, 1)
    if max_size is None:
        return height, width
    max_size = check_int("max_size", max_size, 1)
    longest = max(height, width)

    def side(s):
        return max(1, (2 * s * max_size + longest) // (2 * longest))

    return side(height), side(width)


def _target_size_tensor(height, width, max_size):
    """`target_size` on int64 tensors (any matching shapes)."""
    height = tf.cast(height, tf.int64)
    width = tf.cast(width, tf.int64)
    max_size = tf.cast(max_size, tf.int64)
    longest = tf.maximum(height, width)

    def side(s):
        return tf.maximum((2 * s * max_size + longest) // (2 * longest), 1)

    return side(height), side(width)


def resize_longest_side(image, max_size: int | None):
    """Resizes so the longest side is `max_size`, keeping the aspect ratio.

    TensorFlow ops only, so it runs inside `tf.function`, `tf.data` and
    exported SavedModels with unknown height and width. Sizes follow
    `target_size` exactly (longest side `max_size`, other side rounded half
    up, at least 1). Bilinear interpolation with `antialias=True`, so
    downscaling averages over the whole footprint instead of aliasing;
    images smaller than `max_size` are scaled up.

    Args:
        image: float tensor (or array) of shape `(H, W, 3)` or
            `(B, H, W, 3)`, values in `[0, 255]`. Other numeric dtypes are
            cast to float32.
        max_size: int, scalar integer tensor or None. Target longest side;
            None returns the image unchanged (as float32).

    Returns:
        float32 tensor of shape `(H', W', 3)` or `(B, H', W', 3)`.

    Example:

    >>> import numpy as np
    >>> resize_longest_side(np.zeros((600, 800, 3), "float32"), 400).shape
    TensorShape([300, 400, 3])
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.float32:
        image = tf.cast(image, tf.float32)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            "`image` must have shape (H, W, C) or (B, H, W, C). Received: "
            f"shape={image.shape}"
        )
    if max_size is None:
        return image
    if not tf.is_tensor(max_size):
        max_size = check_int("max_size", max_size, 1)
    height, width = image.shape[-3], image.shape[-2]
    if height is not None and width is not None and isinstance(max_size, int):
        # Static shape known: compute in Python so the output shape is static.
        if height < 1 or width < 1:
            raise ValueError(
                f"Cannot resize an empty image of shape {image.shape}"
            )
        size = target_size(height, width, max_size)
    else:
        shape = tf.shape(image, out_type=tf.int64)
        height, width = shape[-3], shape[-2]
        with tf.control_dependencies(
            [
                tf.debugging.assert_positive(
                    tf.minimum(height, width),
                    message="resize_longest_side: image has an empty side",
                )
            ]
        ):
            new_h, new_w = _target_size_tensor(height, width, max_size)
        size = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    return tf.image.resize(image, size, method="bilinear", antialias=True)
