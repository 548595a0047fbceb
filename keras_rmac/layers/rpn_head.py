"""The region proposal network's head: objectness and box deltas."""

import keras

from keras_rmac.checks import check_int


@keras.saving.register_keras_serializable(package="keras_rmac")
class RPNHead(keras.layers.Layer):
    """Objectness and box deltas for every anchor of a feature map.

    Faster R-CNN's RPN head: a 3x3 convolution with `hidden` filters and a
    ReLU over the backbone's feature map, then two 1x1 convolutions giving,
    per cell, one objectness logit and four deltas (`box_ops.encode_boxes`)
    for each of its `num_anchors` anchors. Weights start from N(0, 0.01),
    biases at 0, as in Faster R-CNN.

    Args:
        num_anchors: int. Anchors per cell, A (`AnchorGenerator.num_anchors`).
            Defaults to `12`.
        hidden: int. Filters of the 3x3 convolution. Defaults to `256`.

    Call arguments:
        inputs: feature map `(B, H, W, C)`.

    Returns:
        Tensor `(B, H * W * A, 5)`: per anchor, in `AnchorGenerator`'s order,
        the objectness logit then the deltas `(dx, dy, dw, dh)`.

    Example:
    >>> import numpy as np
    >>> RPNHead(num_anchors=3, hidden=8)(np.zeros((2, 4, 5, 16))).shape
    TensorShape([2, 60, 5])

    Reference:
        - [Ren et al., 2015](https://arxiv.org/abs/1506.01497)
    """

    def __init__(self, num_anchors=12, hidden=256, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = check_int("num_anchors", num_anchors)
        self.hidden = check_int("hidden", hidden)
        init = keras.initializers.RandomNormal(stddev=0.01, seed=0)
        policy = self.dtype_policy
        self.conv = keras.layers.Conv2D(
            hidden,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=init,
            dtype=policy,
            name="conv",
        )
        self.objectness = keras.layers.Conv2D(
            num_anchors, 1, kernel_initializer=init, dtype=policy, name="logits"
        )
        self.deltas = keras.layers.Conv2D(
            4 * num_anchors,
            1,
            kernel_initializer=init,
            dtype=policy,
            name="deltas",
        )

    def build(self, input_shape):
        self.conv.build(input_shape)
        hidden_shape = tuple(input_shape[:3]) + (self.hidden,)
        self.objectness.build(hidden_shape)
        self.deltas.build(hidden_shape)
        self.built = True

    def call(self, inputs):
        x = self.conv(inputs)
        batch = keras.ops.shape(inputs)[0]
        logits = keras.ops.reshape(self.objectness(x), (batch, -1, 1))
        deltas = keras.ops.reshape(self.deltas(x), (batch, -1, 4))
        return keras.ops.concatenate([logits, deltas], axis=-1)

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        count = None
        if height is not None and width is not None:
            count = height * width * self.num_anchors
        return (input_shape[0], count, 5)

    def get_config(self):
        config = super().get_config()
        config.update({"num_anchors": self.num_anchors, "hidden": self.hidden})
        return config
