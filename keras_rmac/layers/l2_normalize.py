"""L2 normalisation as a layer."""

import keras

from keras_rmac.layers import functional


@keras.saving.register_keras_serializable(package="keras_rmac")
class L2Normalize(keras.layers.Layer):
    """Divides vectors by their L2 norm.

    Computes `x / max(||x||, epsilon)`, so an all-zero vector (a region
    where every activation is zero) stays zero instead of becoming NaN, and
    the float32 gradient is finite everywhere. For float16 inputs (a
    `mixed_float16` policy) the norm is computed in float32, where
    `epsilon**2` is not 0 and squares neither vanish nor overflow; the
    output keeps the input's dtype, and a float16 vector of norm under
    `epsilon` passes no gradient (`1 / epsilon` is past float16's range).
    The math is `keras_rmac.layers.functional.l2_normalize`.

    Args:
        axis: int. Axis along which to normalise. Defaults to `-1`.
        epsilon: float. Lower bound on the norm. Defaults to `1e-6`.

    Call arguments:
        inputs: tensor of any rank.

    Returns:
        Tensor of the same shape with unit-norm vectors along `axis`.

    Example:
    >>> import numpy as np
    >>> L2Normalize()(np.array([[3.0, 4.0]])).numpy().tolist()
    [[0.6000000238418579, 0.800000011920929]]

    Reference:
        - [Tolias et al., 2016](https://arxiv.org/abs/1511.05879)
    """

    def __init__(self, axis=-1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be > 0, got epsilon={epsilon!r}.")
        self.axis = axis
        self.epsilon = float(epsilon)

    def call(self, inputs):
        return functional.l2_normalize(inputs, self.axis, self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "epsilon": self.epsilon})
        return config
