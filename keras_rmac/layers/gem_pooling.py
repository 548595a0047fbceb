"""GeM: generalized-mean pooling with a trainable exponent."""

import keras

from keras_rmac.layers import functional


@keras.saving.register_keras_serializable(package="keras_rmac")
class GeMPooling(keras.layers.Layer):
    """Generalized-mean pooling, `(mean(x^p))^(1/p)` over H and W.

    p = 1 is average pooling, p -> inf max pooling. Activations are clamped
    at `epsilon` first, so the power is defined. Under a `mixed_float16`
    policy the powers are computed in float32 (`x^3` overflows float16
    above about 40) and the output is float16. The math is
    `keras_rmac.layers.functional.gem`.

    Args:
        p: float. Initial exponent. Defaults to `3.0`.
        trainable_p: bool. Whether p is learned. Defaults to `True`.
        epsilon: float. Lower clamp of the activations. Defaults to `1e-6`.

    Call arguments:
        inputs: feature map `(B, H, W, C)`.

    Returns:
        Tensor `(B, 1, C)`.

    Example:
    >>> import numpy as np
    >>> GeMPooling(p=1.0)(np.ones((1, 2, 2, 3))).shape
    TensorShape([1, 1, 3])

    Reference:
        - [Radenovic et al., 2018](https://arxiv.org/abs/1711.02512)
    """

    def __init__(self, p=3.0, trainable_p=True, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if not p > 0:
            raise ValueError(f"`p` must be > 0, got p={p!r}.")
        self.p = float(p)
        self.trainable_p = bool(trainable_p)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.p_weight = self.add_weight(
            name="p",
            shape=(),
            initializer=keras.initializers.Constant(self.p),
            trainable=self.trainable_p,
        )

    def call(self, inputs):
        return functional.gem(inputs, self.p_weight, self.epsilon)[:, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "p": self.p,
                "trainable_p": self.trainable_p,
                "epsilon": self.epsilon,
            }
        )
        return config
