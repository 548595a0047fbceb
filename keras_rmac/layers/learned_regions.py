"""R-MAC pooling over the regions of a learned region proposal network."""

import keras
import tensorflow as tf

from keras_rmac.checks import check_int
from keras_rmac.defaults import DEFAULT_TOP_N
from keras_rmac.layers import box_ops
from keras_rmac.layers.anchors import DEFAULT_RATIOS
from keras_rmac.layers.anchors import DEFAULT_SIZES
from keras_rmac.layers.anchors import AnchorGenerator
from keras_rmac.layers.rpn_head import RPNHead


@keras.saving.register_keras_serializable(package="keras_rmac")
class LearnedRegionPooling(keras.layers.Layer):
    """Max-pools the top proposals of a region proposal network (RPN).

    The learned regions of Gordo et al.: an `RPNHead` scores the anchors of
    `AnchorGenerator` and predicts their deltas; the decoded boxes, clipped
    to the map, go through non-maximum suppression and the `top_n` best are
    max-pooled (`box_ops.nms_top_n`, `box_ops.box_max_pool`). Replaces
    `RMACPooling` in front of the same L2 -> shift + PCA -> L2 -> sum head.

    The RPN head is frozen here (its weights are non-trainable): as in the
    paper it is trained first, on boxes (`keras_rmac.training.rpn`). The
    head alone does not fix the proposals: they also depend on the map the
    head reads. Called on one map, the layer proposes on the map it pools,
    so training the network that computes that map (a fine-tuned backbone)
    moves the proposals. Pass `proposal_features=` to propose on another
    map of the same height and width: `RMACModel(proposal_from=...)` feeds
    it a frozen copy of the backbone's tail, which keeps the proposals a
    fixed function of the image while the descriptor trains (see
    `keras_rmac.models.proposal_tail`). The RPN runs in float32 whatever
    the layer's dtype policy, so that a `mixed_float16` model pools the
    same regions.

    Args:
        sizes: sequence of float. Anchor sides in feature cells. Defaults
            to `(1, 2, 4, 8)`.
        ratios: sequence of float. Anchor height / width ratios. Defaults
            to `(0.5, 1, 2)`.
        top_n: int. Proposals pooled per image. Defaults to `256` (the
            paper's).
        hidden: int. Filters of the RPN head's 3x3 convolution. Defaults to
            `256`.
        nms_iou: float. IoU above which NMS drops a proposal. Defaults to
            `0.7` (Faster R-CNN's RPN).
        pre_nms_top_n: int. Best-scored boxes that NMS considers. Defaults
            to `2000`.

    Call arguments:
        inputs: feature map `(B, H, W, C)`, the map pooled.
        proposal_features: None or a map `(B, H, W, C')` (the `C` the RPN
            head was built on) that the RPN proposes on instead of
            `inputs`. Defaults to `None`.

    Returns:
        Tensor `(B, top_n, C)` of region maxima (not normalised), best
        proposal first.

    Example:
    >>> import numpy as np
    >>> x = np.random.rand(2, 5, 7, 16).astype("float32")
    >>> LearnedRegionPooling(top_n=8, hidden=4)(x).shape
    TensorShape([2, 8, 16])

    Reference:
        - [Gordo et al., 2016](https://arxiv.org/abs/1604.01325)
        - [Ren et al., 2015](https://arxiv.org/abs/1506.01497)
    """

    def __init__(  # noqa: PLR0913 - documented public layer constructor
        self,
        sizes=DEFAULT_SIZES,
        ratios=DEFAULT_RATIOS,
        top_n=DEFAULT_TOP_N,
        hidden=256,
        nms_iou=0.7,
        pre_nms_top_n=2000,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.top_n = check_int("top_n", top_n)
        self.pre_nms_top_n = check_int("pre_nms_top_n", pre_nms_top_n)
        if not 0.0 < float(nms_iou) <= 1.0:
            raise ValueError(f"`nms_iou` must be in (0, 1], got {nms_iou!r}.")
        self.nms_iou = float(nms_iou)
        self.anchors = AnchorGenerator(sizes, ratios, name="anchors")
        self.sizes, self.ratios = self.anchors.sizes, self.anchors.ratios
        self.hidden = check_int("hidden", hidden)
        self.head = RPNHead(
            self.anchors.num_anchors, hidden, dtype="float32", name="rpn_head"
        )
        self.head.trainable = False

    def build(self, input_shape):
        if not self.head.built:
            self.head.build(tuple(input_shape))
        self.built = True

    def proposals(self, features):
        """`(boxes (B, top_n, 4), logits (B, top_n))`, best first.

        Boxes are float `(x0, y0, x1, y1)` in feature cells, before rounding
        to cells; logits are the RPN's objectness (before the sigmoid).
        """
        features = keras.ops.cast(features, "float32")
        shape = keras.ops.shape(features)
        outputs = self.head(features)
        anchors = self.anchors(features)

        def one(output):
            boxes = box_ops.decode_boxes(output[:, 1:], anchors)
            boxes = box_ops.clip_boxes(boxes, shape[1], shape[2])
            index = box_ops.nms_top_n(
                boxes,
                output[:, 0],
                self.top_n,
                self.nms_iou,
                self.pre_nms_top_n,
            )
            logits = keras.ops.take(output[:, 0], index)[:, None]
            return keras.ops.concatenate(
                [keras.ops.take(boxes, index, axis=0), logits], axis=1
            )

        found = tf.map_fn(
            one,
            outputs,
            fn_output_signature=tf.TensorSpec([self.top_n, 5], tf.float32),
        )
        return found[..., :4], found[..., 4]

    def call(self, inputs, proposal_features=None):
        # The RPN's top proposals (fixed regions: no gradient to the boxes),
        # on `proposal_features` when given (a frozen copy of the backbone
        # tail), then the max of every proposal, as R-MAC pools its grid.
        source = inputs if proposal_features is None else proposal_features
        boxes, _ = self.proposals(source)
        return box_ops.box_max_pool(inputs, keras.ops.stop_gradient(boxes))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.top_n, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sizes": list(self.sizes),
                "ratios": list(self.ratios),
                "top_n": self.top_n,
                "hidden": self.hidden,
                "nms_iou": self.nms_iou,
                "pre_nms_top_n": self.pre_nms_top_n,
            }
        )
        return config
