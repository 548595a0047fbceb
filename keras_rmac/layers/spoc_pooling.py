"""SPoC: global sum (average) pooling baseline."""

import keras

from keras_rmac.layers import functional


@keras.saving.register_keras_serializable(package="keras_rmac")
class SPoCPooling(keras.layers.Layer):
    """Global average pooling over the spatial axes (SPoC).

    SPoC sums activations; the mean differs only by a constant factor, which
    the following L2 normalisation removes, and keeps values in range. Like
    MAC it returns one "region" `(B, 1, C)`. The math is
    `keras_rmac.layers.functional.spoc`.

    Call arguments:
        inputs: feature map `(B, H, W, C)`.

    Returns:
        Tensor `(B, 1, C)`.

    Example:
    >>> import numpy as np
    >>> SPoCPooling()(np.arange(8.0).reshape(1, 2, 2, 2)).numpy().tolist()
    [[[3.0, 4.0]]]

    Reference:
        - [Babenko and Lempitsky, 2015](https://arxiv.org/abs/1510.07493)
    """

    def call(self, inputs):
        return functional.spoc(inputs)[:, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, input_shape[3])
