"""Pixel preprocessing of a backbone, inside the model graph."""

import keras

from keras_rmac.backbones import PREPROCESSING_MODES

_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="keras_rmac")
class Preprocess(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a backbone's weights expect.

    Args:
        mode: str. `"tf"`: `x / 127.5 - 1`; `"torch"`: `(x / 255 - mean) /
            std` with ImageNet statistics; `"caffe"`: RGB -> BGR minus the
            ImageNet BGR mean; `"lite"`: `(x - 127) / 128`; `"none"`:
            unchanged (the backbone rescales itself).

    Call arguments:
        inputs: float tensor `(..., 3)` of RGB values in [0, 255].

    Returns:
        Tensor of the same shape.

    Example:
    >>> import numpy as np
    >>> Preprocess("tf")(np.array([[0.0, 127.5, 255.0]])).numpy().tolist()
    [[-1.0, 0.0, 1.0]]
    """

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"Unknown preprocessing mode={mode!r}; choose one of "
                f"{PREPROCESSING_MODES}."
            )
        self.mode = mode

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, x.dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            mean = keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, x.dtype)
            return keras.ops.flip(x, axis=-1) - mean
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
