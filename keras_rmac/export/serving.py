"""The serving signatures of an exported model, as TensorFlow functions.

- `serving_default`: input `image_bytes`, a 1-D string tensor `(B,)` of
  encoded JPEG, PNG, GIF, BMP or WebP files (TF Serving's REST API takes
  them as `{"b64": "..."}`); output `descriptor`, float32 `(B, D)`.
  Images of one request may have different sizes: each image runs through
  the network on its own (`tf.map_fn`).
- `serving_images`: input `images`, float32 `(B, H, W, 3)` RGB pixels in
  the `value_range` fixed at export, `[0, 255]` unless the export said
  otherwise (one size per request); output `descriptor`, float32 `(B, D)`.
  A graph cannot warn: pixels in another range than the exported one give
  wrong descriptors silently. The range is recorded in the export's
  metadata file (`value_range`).

Both resize and combine scales by the rule of `keras_rmac.models.multiscale`
that `RMACModel.extract` follows, so they serve the descriptors `extract`
computes from the same files.
"""

import tensorflow as tf

from keras_rmac.data import image_io
from keras_rmac.export.decode import decode_image_bytes
from keras_rmac.models.multiscale import scale_size_tensor
from keras_rmac.models.multiscale import scale_sizes
from keras_rmac.models.multiscale import sum_over_scales
from keras_rmac.models.value_range import DEFAULT_VALUE_RANGE
from keras_rmac.models.value_range import rescale_to_255

SERVING_SIGNATURE = "serving_default"
"""Signature on encoded image files (TF Serving's default)."""

IMAGES_SIGNATURE = "serving_images"
"""Signature on float32 RGB pixel arrays."""

BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT = "descriptor"


class Serving:
    """The serving computations around one model, as plain TF functions.

    Args:
        model: `keras.Model` mapping float32 RGB images `(B, H, W, 3)` in
            `[0, 255]` to descriptors `(B, D)`.
        scales: tuple of float. Validated multi-resolution scales.
        max_size: int or None. Longest side at scale 1.
        max_pixels: int. Largest accepted width x height.
        min_side: int. Smallest accepted width or height.
        value_range: `(low, high)`. Validated range of the pixels the
            `serving_images` signature takes. Defaults to `(0.0, 255.0)`.
        draft_above: int or None. Declared pixels above which a JPEG is
            decoded at reduced scale, as `RMACModel.extract` does. Defaults
            to `image_io.DEFAULT_DRAFT_ABOVE`.
    """

    def __init__(
        self,
        model,
        scales,
        max_size,
        max_pixels,
        min_side,
        value_range=DEFAULT_VALUE_RANGE,
        draft_above=image_io.DEFAULT_DRAFT_ABOVE,
    ):
        self.model = model
        self.value_range = value_range
        self.scales = scales
        self.max_size = max_size
        self.sizes = scale_sizes(max_size, scales)
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.draft_above = draft_above
        # Large JPEGs decode at reduced scale down to the largest size they
        # are resized to, as in RMACModel.extract.
        self.draft_size = None if max_size is None else max(self.sizes)
        self.dimension = getattr(model, "dimension", None)
        # The network as one function, traced once and called from every
        # scale of both signatures (instead of one trace per call site).
        self.network = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
            autograph=False,
        )

    def _extract(self, images):
        """Descriptors `(B, D)` of same-size float32 images `(B, H, W, 3)`."""
        shape = tf.shape(images)
        longest = tf.maximum(shape[1], shape[2])
        outputs = []
        for scale in self.scales:
            size = scale_size_tensor(longest, scale, self.max_size)
            # As RMACModel.extract: resize only when the longest side is
            # not already the target.
            resized = tf.cond(
                tf.equal(longest, size),
                lambda: images,
                lambda size=size: image_io.resize_longest_side(images, size),
            )
            outputs.append(self.network(resized))
        return sum_over_scales(outputs)

    @tf.autograph.experimental.do_not_convert
    def _extract_one(self, data):
        image = decode_image_bytes(
            data,
            self.max_pixels,
            self.min_side,
            draft_size=self.draft_size,
            draft_above=self.draft_above,
        )
        image = tf.cast(image, tf.float32)
        return self._extract(image[None])[0]

    def from_bytes(self, image_bytes):
        """`{OUTPUT: descriptors}` of a string tensor of encoded files."""
        descriptors = tf.map_fn(
            self._extract_one,
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.dimension], tf.float32),
        )
        return {OUTPUT: descriptors}

    def from_images(self, images):
        """`{OUTPUT: descriptors}` of float32 pixels `(B, H, W, 3)`.

        The pixels are in `value_range`; they are mapped onto [0, 255]
        before resizing, as `RMACModel.extract(..., value_range=...)` does.
        """
        images = tf.cast(images, tf.float32)
        return {OUTPUT: self._extract(rescale_to_255(images, self.value_range))}

    def signatures(self):
        """The concrete functions to save, by signature name.

        Traced once, here. The `tf.function`s are not attributes of the
        saved object: saving would trace them again.
        """
        return {
            SERVING_SIGNATURE: tf.function(
                self.from_bytes,
                input_signature=[
                    tf.TensorSpec([None], tf.string, name=BYTES_INPUT)
                ],
                autograph=False,
            ).get_concrete_function(),
            IMAGES_SIGNATURE: tf.function(
                self.from_images,
                input_signature=[
                    tf.TensorSpec(
                        [None, None, None, 3], tf.float32, name=IMAGES_INPUT
                    )
                ],
                autograph=False,
            ).get_concrete_function(),
        }
