"""Max-pooling of every R-MAC region."""

import keras

from keras_rmac.layers import functional
from keras_rmac.layers.region_proposal import validate_grid_args


@keras.saving.register_keras_serializable(package="keras_rmac")
class RMACPooling(keras.layers.Layer):
    """Max-pools each region of the R-MAC grid.

    Produces one C-dimensional vector per region of `RegionProposal`, in the
    same order. When the feature map size is known while tracing, the
    regions are unrolled into plain slices (XLA-friendly); otherwise the
    grid is computed in the graph and the regions are pooled in a loop.

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

    def __init__(self, levels=3, overlap=0.4, include_global=True, **kwargs):
        super().__init__(**kwargs)
        validate_grid_args(levels, overlap)
        self.levels = levels
        self.overlap = float(overlap)
        self.include_global = bool(include_global)

    def call(self, inputs):
        regions = functional.regions_for(
            inputs, self.levels, self.overlap, self.include_global
        )
        return functional.region_max_pool(inputs, regions)

    def compute_output_shape(self, input_shape):
        count = functional.count_regions(
            input_shape[1],
            input_shape[2],
            self.levels,
            self.overlap,
            self.include_global,
        )
        return (input_shape[0], count, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "levels": self.levels,
                "overlap": self.overlap,
                "include_global": self.include_global,
            }
        )
        return config
