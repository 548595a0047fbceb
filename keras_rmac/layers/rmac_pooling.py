"""Max-pooling of every R-MAC region."""

import keras

from keras_rmac.layers import functional
from keras_rmac.layers.region_proposal import RegionGridLayer


@keras.saving.register_keras_serializable(package="keras_rmac")
class RMACPooling(RegionGridLayer):
    """Max-pools each region of the R-MAC grid.

    Produces one C-dimensional vector per region of `RegionProposal`, in the
    same order. When the feature map size is known while tracing, the
    regions are unrolled into plain slices (XLA-friendly); otherwise the
    grid is computed in the graph and the regions are pooled in a loop.
    The math is `keras_rmac.layers.functional.rmac_pooling`.

    Args:
        levels: int. Number of scales L. Defaults to `3`.
        overlap: float. Desired overlap of consecutive regions. Defaults to
            `0.4`.
        include_global: bool. Whether the whole map is the first region.
            Defaults to `True`.

    Call arguments:
        inputs: feature map `(B, H, W, C)`.

    Returns:
        Tensor `(B, R, C)` of region maxima (not normalised).

    Example:
    >>> import numpy as np
    >>> x = np.random.rand(2, 7, 9, 16).astype("float32")
    >>> RMACPooling(levels=3)(x).shape
    TensorShape([2, 21, 16])

    Reference:
        - [Tolias et al., 2016](https://arxiv.org/abs/1511.05879)
    """

    def call(self, inputs):
        return functional.rmac_pooling(
            inputs, self.levels, self.overlap, self.include_global
        )

    def compute_output_shape(self, input_shape):
        count = self.region_count(input_shape)
        return (input_shape[0], count, input_shape[3])
