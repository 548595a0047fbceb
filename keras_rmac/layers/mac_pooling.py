"""MAC: global max-pooling, the one-region baseline."""

import keras

from keras_rmac.layers import functional


@keras.saving.register_keras_serializable(package="keras_rmac")
class MACPooling(keras.layers.Layer):
    """Global max-pooling over the spatial axes (MAC).

    Returns `(B, 1, C)`: one "region", so that MAC, SPoC and GeM share the
    region head of R-MAC (L2 -> ShiftPCA -> L2 -> sum -> L2). The math is
    `keras_rmac.layers.functional.mac`.

    Call arguments:
        inputs: feature map `(B, H, W, C)`.

    Returns:
        Tensor `(B, 1, C)`.

    Example:
    >>> import numpy as np
    >>> MACPooling()(np.arange(8.0).reshape(1, 2, 2, 2)).numpy().tolist()
    [[[6.0, 7.0]]]

    Reference:
        - [Tolias et al., 2016](https://arxiv.org/abs/1511.05879)
    """

    def call(self, inputs):
        return functional.mac(inputs)[:, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, input_shape[3])
