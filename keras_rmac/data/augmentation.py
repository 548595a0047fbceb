"""Box crops and light, stateless augmentation of training images.

Both run on `(H, W, 3)` tensors inside the `tf.data` pipeline of
`keras_rmac.data.triplets`. Augmentation uses stateless random ops, so an
image's crop and flip depend only on the seed it is given (the pipeline
derives it from the run's seed, the epoch, the position and the stream):
a resumed run sees the same images as an uninterrupted one.
"""

import dataclasses

import tensorflow as tf


def crop_to_box(image, box):
    """Crops to an `(x0, y0, x1, y1)` box; NaN boxes leave the image."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]

    def crop():
        x0 = tf.clip_by_value(tf.cast(tf.floor(box[0]), tf.int32), 0, w - 1)
        y0 = tf.clip_by_value(tf.cast(tf.floor(box[1]), tf.int32), 0, h - 1)
        x1 = tf.clip_by_value(
            tf.cast(tf.math.ceil(box[2]), tf.int32), x0 + 1, w
        )
        y1 = tf.clip_by_value(
            tf.cast(tf.math.ceil(box[3]), tf.int32), y0 + 1, h
        )
        return image[y0:y1, x0:x1]

    valid = tf.reduce_all(tf.math.is_finite(box))
    return tf.cond(valid, crop, lambda: image)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Light augmentation of training images.

    Args:
        crop_area: `(min, max)` fraction of the image area kept by the
            random crop (aspect ratio in `crop_aspect`). `(1, 1)` disables
            cropping. Defaults to `(0.7, 1.0)`.
        crop_aspect: `(min, max)` width / height of the crop. Defaults to
            `(0.8, 1.25)`.
        flip: bool. Random horizontal flip. Defaults to `True`.
        brightness: float. Max brightness shift, as a fraction of 255.
            Defaults to `0.1`.
        contrast: float. Contrast factor drawn in `[1 - c, 1 + c]`.
            Defaults to `0.1`.
        saturation: float. Saturation factor in `[1 - s, 1 + s]`.
            Defaults to `0.1`.
    """

    crop_area: tuple[float, float] = (0.7, 1.0)
    crop_aspect: tuple[float, float] = (0.8, 1.25)
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


def augment_image(image, seed, aug: Augmentation):
    """Stateless light augmentation of an `(H, W, 3)` float image."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    if aug.crop_area != (1.0, 1.0):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=aug.crop_aspect,
            area_range=aug.crop_area,
            max_attempts=20,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
    if aug.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    if aug.brightness:
        image = tf.image.stateless_random_brightness(
            image, aug.brightness * 255.0, seeds[2]
        )
    if aug.contrast:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - aug.contrast, 1.0 + aug.contrast, seeds[3]
        )
    if aug.saturation:
        image = tf.image.stateless_random_saturation(
            image, 1.0 - aug.saturation, 1.0 + aug.saturation, seeds[4]
        )
    return tf.clip_by_value(image, 0.0, 255.0)
