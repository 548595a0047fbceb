"""SPoC: global sum (average) pooling baseline."""

import keras


@keras.saving.register_keras_serializable(package="keras_rmac")
class SPoCPooling(keras.layers.Layer):
    """Global average pooling over the spatial axes (SPoC).

    SPoC sums activations; the mean differs only by a constant factor, which
    the following L2 normalisation removes, and keeps values in range.

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
        return keras.ops.mean(inputs, axis=(1, 2))[:, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, input_shape[3])
