"""Region max-pooling over arbitrary boxes."""

import keras

from keras_rmac.layers import box_ops


@keras.saving.register_keras_serializable(package="keras_rmac")
class BoxMaxPooling(keras.layers.Layer):
    """Max-pools a feature map over given boxes, one vector per box.

    The pooling of R-MAC for any source of boxes: the grid of
    `RegionProposal` (via `box_ops.grid_boxes`, which gives exactly
    `RMACPooling`'s vectors) or the proposals of `LearnedRegionPooling`.
    Boxes are rounded to whole cells (`box_ops.boxes_to_cells`). The math
    is `keras_rmac.layers.box_ops.box_max_pool`.

    Call arguments:
        inputs: list `[features, boxes]`: feature map `(B, H, W, C)` and
            float boxes `(B, N, 4)` of `(x0, y0, x1, y1)` in feature cells.

    Returns:
        Tensor `(B, N, C)` of box maxima (not normalised).

    Example:
    >>> import numpy as np
    >>> x = np.arange(12.0).reshape(1, 2, 3, 2)
    >>> boxes = np.array([[[0.0, 0.0, 1.0, 2.0], [1.0, 0.0, 3.0, 1.0]]])
    >>> BoxMaxPooling()([x, boxes]).numpy().tolist()
    [[[6.0, 7.0], [4.0, 5.0]]]

    Reference:
        - [Gordo et al., 2016](https://arxiv.org/abs/1604.01325)
    """

    def call(self, inputs):
        features, boxes = inputs
        return box_ops.box_max_pool(features, boxes)

    def compute_output_shape(self, input_shape):
        features, boxes = input_shape
        return (features[0], boxes[1], features[3])
