"""Anchor boxes of the region proposal network as a layer."""

import keras

from keras_rmac.checks import validate_anchor_args
from keras_rmac.defaults import DEFAULT_RATIOS
from keras_rmac.defaults import DEFAULT_SIZES
from keras_rmac.layers import box_ops


@keras.saving.register_keras_serializable(package="keras_rmac")
class AnchorGenerator(keras.layers.Layer):
    """Anchor boxes at every cell of a feature map.

    Every cell gets `len(sizes) * len(ratios)` anchors centred on it (the
    anchors of Faster R-CNN's region proposal network), clipped to the map.
    Order and conventions are those of `keras_rmac.layers.box_ops`. The
    layer has no weights and works for maps whose height and width are
    unknown until run time.

    Args:
        sizes: sequence of float. Anchor sides (square root of the area), in
            feature cells. Defaults to `(1, 2, 4, 8)`.
        ratios: sequence of float. Height / width ratios. Defaults to
            `(0.5, 1, 2)`.

    Call arguments:
        inputs: feature map `(B, H, W, C)`.

    Returns:
        float32 tensor `(H * W * A, 4)` of `(x0, y0, x1, y1)` in feature
        cells, the same for every item of the batch.

    Example:
    >>> import numpy as np
    >>> layer = AnchorGenerator(sizes=(1.0,), ratios=(1.0,))
    >>> layer(np.zeros((1, 1, 2, 8))).numpy().tolist()
    [[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]]

    Reference:
        - [Ren et al., 2015](https://arxiv.org/abs/1506.01497)
    """

    def __init__(self, sizes=DEFAULT_SIZES, ratios=DEFAULT_RATIOS, **kwargs):
        super().__init__(**kwargs)
        self.sizes, self.ratios = validate_anchor_args(sizes, ratios)

    @property
    def num_anchors(self):
        """Anchors per cell, A."""
        return len(self.sizes) * len(self.ratios)

    def call(self, inputs):
        shape = keras.ops.shape(inputs)
        return box_ops.make_anchors(shape[1], shape[2], self.sizes, self.ratios)

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            return (None, 4)
        return (height * width * self.num_anchors, 4)

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update({"sizes": list(self.sizes), "ratios": list(self.ratios)})
        return config
