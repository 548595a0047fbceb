"""The rigid multi-scale R-MAC region grid as a layer."""

import keras

from keras_rmac.layers import functional


def validate_grid_args(levels, overlap):
    """Raises ValueError for grid arguments the R-MAC grid cannot use."""
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 0:
        raise ValueError(
            f"`levels` must be a non-negative int, got levels={levels!r}."
        )
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(
            f"`overlap` must be in [0, 1), got overlap={overlap!r}."
        )


class RegionGridLayer(keras.layers.Layer):
    """Base of the layers parameterised by the R-MAC grid arguments."""

    def __init__(self, levels=3, overlap=0.4, include_global=True, **kwargs):
        super().__init__(**kwargs)
        validate_grid_args(levels, overlap)
        self.levels = levels
        self.overlap = float(overlap)
        self.include_global = bool(include_global)

    def regions(self, inputs):
        """Static NumPy regions of `inputs` when known, else traced."""
        return functional.regions_for(
            inputs, self.levels, self.overlap, self.include_global
        )

    def region_count(self, input_shape):
        """Number of regions for a static input shape, else None."""
        return functional.count_regions(
            input_shape[1],
            input_shape[2],
            self.levels,
            self.overlap,
            self.include_global,
        )

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


@keras.saving.register_keras_serializable(package="keras_rmac")
class RegionProposal(RegionGridLayer):
    """Rigid multi-scale R-MAC grid of regions on a feature map.

    For levels l = 1..L, square regions of side `floor(2 * min(H, W) /
    (l + 1))` are laid out so that consecutive regions overlap as close to
    `overlap` as possible, with extra regions along the long side (Tolias et
    al., ICLR 2016). The arithmetic, float32 rounding included, is that of
    the reference implementations, so grids match them exactly. Levels whose
    side would be 0 are skipped. The layer has no weights and works for
    feature maps whose height and width are unknown until run time.

    Args:
        levels: int. Number of scales L. Defaults to `3`.
        overlap: float. Desired overlap of consecutive regions. Defaults to
            `0.4`.
        include_global: bool. Whether the region covering the whole map
            comes first. Defaults to `True`.

    Call arguments:
        inputs: feature map `(B, H, W, C)`.

    Returns:
        int32 tensor `(R, 4)` of `(x, y, w, h)` in feature cells, the same
        for every item of the batch.

    Example:
    >>> import numpy as np
    >>> RegionProposal(levels=1)(np.zeros((1, 3, 5, 8))).numpy().tolist()
    [[0, 0, 5, 3], [0, 0, 3, 3], [2, 0, 3, 3]]

    Reference:
        - [Tolias et al., 2016](https://arxiv.org/abs/1511.05879)
    """

    def call(self, inputs):
        return keras.ops.convert_to_tensor(self.regions(inputs), "int32")

    def compute_output_shape(self, input_shape):
        return (self.region_count(input_shape), 4)

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(shape, dtype="int32")
