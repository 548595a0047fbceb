"""Three-stream siamese training wrapper around an `RMACModel`."""

import logging

import keras
import numpy as np
from keras import ops

from keras_rmac.data.triplets import STREAMS
from keras_rmac.losses import TripletMarginLoss

logger = logging.getLogger(__name__)

DEFAULT_LEARNING_RATE = 1e-5
"""Adam learning rate `compile()` uses when no optimizer is given.

Fine-tuning an ImageNet backbone with the triplet loss wants a small step:
Radenovic et al. (2018) fine-tune with Adam at 1e-6 to 5e-6 for a full
network; 1e-5 suits the shorter schedules and partly frozen backbones this
library trains by default (see `benchmarks/train_coil100.py`).
"""

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(
    name="adam",
    learning_rate=DEFAULT_LEARNING_RATE,
    gradient_accumulation_steps=None,
    weight_decay=None,
):
    """An optimizer keras_rmac trains with: Adam, or SGD with momentum 0.9.

    `TripletModel.compile()` uses `make_optimizer()` when no optimizer is
    given; a training configuration (optimizer name, learning rate or
    schedule, accumulation, weight decay) maps onto its arguments.

    Args:
        name: str. One of `OPTIMIZERS`. Defaults to `"adam"`.
        learning_rate: float or a `keras.optimizers.schedules` schedule.
            Defaults to `DEFAULT_LEARNING_RATE`.
        gradient_accumulation_steps: int or None. Apply the averaged
            gradients of this many batches at once. Defaults to `None`.
        weight_decay: float or None. Decoupled weight decay; None or 0
            for none. Defaults to `None`.

    Returns:
        A `keras.optimizers.Optimizer`.

    Example:

    >>> make_optimizer("sgd", 0.01).momentum
    0.9
    """
    kwargs = {"gradient_accumulation_steps": gradient_accumulation_steps}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, **kwargs)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, **kwargs)
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")


def optimizer_step(optimizer):
    """Batches an optimizer has processed (0 for None).

    With gradient accumulation, Keras's public `iterations` counts the
    updates applied (batches // accumulation steps); the raw counter,
    saved with the weights, counts batches, which is what checkpoints and
    callbacks that act every n batches need.

    Args:
        optimizer: `keras.optimizers.Optimizer` or None.

    Returns:
        int.
    """
    if optimizer is None:
        return 0
    counter = getattr(optimizer, "_iterations", None)
    if counter is None:
        counter = optimizer.iterations
    return int(np.asarray(counter))


def _sublayers(layer):
    """Every layer nested under `layer` (depth first), not `layer` itself."""
    for child in getattr(layer, "layers", ()):
        yield child
        yield from _sublayers(child)


def first_trainable_index(layers, trainable_from):
    """Index of the first backbone layer left trainable."""
    if trainable_from is None:
        return 0
    if isinstance(trainable_from, str):
        names = [layer.name for layer in layers]
        if trainable_from not in names:
            raise ValueError(
                f"trainable_from={trainable_from!r} is not a layer of the "
                f"backbone. Pass one of its layer names (e.g. "
                f"{names[len(names) * 3 // 4]!r}) or a fraction in [0, 1]."
            )
        return names.index(trainable_from)
    if isinstance(trainable_from, bool) or not 0.0 <= trainable_from <= 1.0:
        raise ValueError(
            "`trainable_from` must be a backbone layer name, a fraction in "
            f"[0, 1] or None, got trainable_from={trainable_from!r}."
        )
    return int(round(float(trainable_from) * len(layers)))


def set_trainable(backbone, trainable_from=None, freeze_batchnorm=True):
    """Freezes the early layers and/or the BatchNorm layers of a backbone.

    Layers before `trainable_from` get `trainable=False` (no gradient is
    computed for them, which also makes each step cheaper: backpropagation
    stops at the first trainable layer). With `freeze_batchnorm`, every
    `BatchNormalization` layer gets `trainable=False`, which in Keras 3
    also runs it in inference mode (moving statistics, not batch
    statistics) and keeps its scale and offset fixed.

    Args:
        backbone: `keras.Model`. The convolutional backbone.
        trainable_from: str, float or None. The first layer to train, by
            name, or a fraction of the backbone's layers to freeze (0.0
            trains all, 1.0 freezes the whole backbone). None trains all.
            Defaults to `None`.
        freeze_batchnorm: bool. Defaults to `True`.

    Returns:
        The number of backbone layers frozen by `trainable_from`.
    """
    layers = list(backbone.layers)
    first = first_trainable_index(layers, trainable_from)
    for i, layer in enumerate(layers):
        layer.trainable = i >= first
    if freeze_batchnorm:
        for layer in _sublayers(backbone):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return first


def split_backbone(backbone, layer_name):
    """Splits a functional backbone before layer `layer_name`.

    Returns `(prefix, tail)`, two functional models built on the backbone's
    own layers (weights are shared, not copied) with
    `tail(prefix(x)) == backbone(x)`. The cut must not cross a skip
    connection (for MobileNetV2: cut at a `block_<n>_expand` or `Conv_1`).

    Args:
        backbone: functional `keras.Model`.
        layer_name: str. The first layer of the tail.

    Returns:
        `(prefix, tail)` `keras.Model`s.

    Raises:
        ValueError: unknown layer, or a skip connection crosses the cut.
    """
    try:
        layer = backbone.get_layer(layer_name)
    except ValueError:
        raise ValueError(
            f"{layer_name!r} is not a layer of backbone {backbone.name!r}."
        ) from None
    cut = layer.input
    if isinstance(cut, (list, tuple)):
        raise ValueError(
            f"Cannot cut before {layer_name!r}: it has several inputs (a skip "
            "connection joins there). Cut at the next block's first layer."
        )
    prefix = keras.Model(backbone.input, cut, name=f"{backbone.name}_prefix")
    try:
        tail = keras.Model(cut, backbone.output, name=f"{backbone.name}_tail")
    except ValueError as error:
        raise ValueError(
            f"Cannot cut the backbone before {layer_name!r}: a skip "
            "connection crosses that point. Cut at the first layer of a block "
            f"instead ({error})."
        ) from None
    return prefix, tail


@keras.saving.register_keras_serializable(package="keras_rmac")
class FeatureEmbedding(keras.Model):
    """The R-MAC descriptor computed from cached backbone features.

    When the early part of the backbone is frozen (and BatchNorm too), its
    output is a fixed function of the image: it can be computed once per
    training image and cached, and training then runs only the tail. This
    model maps those cached features to descriptors with the layers of
    `rmac` (shared, so training it trains `rmac`): tail of the backbone ->
    regions -> region max-pool -> L2 -> shift + PCA -> L2 -> sum -> L2.
    `prefix(images)` (RGB in [0, 255], preprocessing included) gives the
    features to cache; images must be resized as the caller will resize
    them at inference. The prefix layers (which are `rmac`'s) are set to
    `trainable=False`. With `rmac.proposal_from` (learned regions proposed
    on a frozen copy of the backbone tail), the same cached features feed
    that copy, so the output still equals `rmac(images)`; the copy must
    start at `feature_layer` or after it.

    Args:
        rmac: `RMACModel`.
        feature_layer: str. First backbone layer of the tail (see
            `split_backbone`).

    Call arguments:
        features: `(B, h, w, c)` outputs of `prefix`.

    Returns:
        Descriptors `(B, D)`, equal to `rmac(images)`.
    """

    def __init__(self, rmac, feature_layer, **kwargs):
        super().__init__(**kwargs)
        self.rmac = rmac
        self.feature_layer = feature_layer
        prefix, self.backbone = split_backbone(rmac.backbone, feature_layer)
        # The prefix is cached, hence frozen (its layers are rmac's).
        for layer in prefix.layers:
            layer.trainable = False
        # Images -> preprocessing -> backbone up to the cut.
        images = keras.Input((None, None, 3), name="images")
        self.prefix = keras.Model(
            images, prefix(rmac.preprocess(images)), name="feature_prefix"
        )
        # The RPN's frozen copy of the tail reads the same cached features.
        self._proposal_source = None
        if getattr(rmac, "proposal_from", None) is not None:
            # Imported here: proposal_tail imports this module.
            from keras_rmac.models.proposal_tail import ProposalSource

            self._proposal_source = ProposalSource(
                rmac.backbone,
                rmac.proposal_from,
                rmac.proposal_tail,
                start=feature_layer,
            )

    def build(self, input_shape=None):
        # Everything else is built with the backbone; shift + PCA is built
        # on first use, so build it here for weights loading.
        if not self.rmac.shift_pca.built:
            channels = self.backbone.output.shape[-1]
            self.rmac.shift_pca.build((None, None, channels))
        self.built = True

    def region_vectors(self, features, training=False):
        """L2-normalised region vectors `(B, R, C)` before shift + PCA."""
        return self.rmac.pool_regions(*self._maps(features, training))

    def call(self, features, training=False):
        # The tail of the backbone, then `rmac`'s own R-MAC head.
        return self.rmac.head(*self._maps(features, training))

    def _maps(self, features, training):
        """`(tail output, proposal maps or None)`, as `rmac.backbone_maps`."""
        if self._proposal_source is None:
            return self.backbone(features, training=training), None
        return self._proposal_source(features, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dimension)

    @property
    def dimension(self):
        """Dimension D of the descriptors (that of `rmac`)."""
        return self.rmac.dimension

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "rmac": keras.layers.serialize(self.rmac),
                "feature_layer": self.feature_layer,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["rmac"] = keras.layers.deserialize(config["rmac"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_rmac")
class TripletModel(keras.Model):
    """Trains an `RMACModel` with the triplet ranking loss.

    The three streams (query, positive, negative) share one set of weights:
    they all go through the same `embedding` model. When the three inputs
    have the same static image shape they are concatenated along the batch
    axis and embedded in a single pass; otherwise (variable-size images,
    batch of one triplet as in the paper) the embedding is applied three
    times. The model returns the descriptors stacked on axis 1, `(B, 3,
    D)`, which `TripletMarginLoss` consumes, so `model.fit()` on a dataset
    of triplets trains with Keras's own training loop.

    BatchNorm layers are frozen by default (inference mode and fixed
    scale/offset), as is usual when fine-tuning with small batches of
    triplets. Initialise shift + PCA before training with
    `embedding.adapt_pca(training_images, max_size=...)`: the whitening
    learned from region vectors is a much better starting point than the
    identity (`keras_rmac.training.train` does it for you).

    Args:
        embedding: `RMACModel` (or any model mapping images `(B, H, W, 3)`
            to descriptors `(B, D)` with a `backbone` attribute).
        freeze_batchnorm: bool. Set every BatchNormalization layer of the
            backbone to `trainable=False`. Defaults to `True`.
        trainable_from: str, float or None. Freeze the backbone layers
            before this one (a layer name, or a fraction of the layers);
            see `set_trainable`. Defaults to `None` (train all).

    Call arguments:
        inputs: dict with keys `"query"`, `"positive"`, `"negative"` (or a
            tuple of three), each a batch of RGB images `(B, H, W, 3)` with
            values in [0, 255].
        training: bool.

    Returns:
        Descriptors `(B, 3, D)`: query, positive and negative on axis 1.

    Example:
    >>> from keras_rmac.models import RMACModel  # doctest: +SKIP
    >>> rmac = RMACModel("mobilenet_v2", weights="imagenet")  # doctest: +SKIP
    >>> rmac.adapt_pca(train_paths, max_size=224)  # doctest: +SKIP
    >>> model = TripletModel(rmac, trainable_from="block_13_expand")
    ... # doctest: +SKIP
    >>> model.compile()  # Adam(1e-5), triplet margin loss 0.1  # doctest: +SKIP
    >>> model.fit(triplet_dataset, epochs=10)  # doctest: +SKIP
    >>> model.embedding.save("rmac_finetuned.keras")  # doctest: +SKIP

    Reference:
        - [Gordo et al., 2017](https://arxiv.org/abs/1610.07940)
    """

    def __init__(
        self,
        embedding,
        freeze_batchnorm=True,
        trainable_from=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not hasattr(embedding, "backbone"):
            raise ValueError(
                "`embedding` must be an RMACModel (a model with a "
                f"`backbone` attribute), got {type(embedding).__name__}."
            )
        self.embedding = embedding
        self.freeze_batchnorm = bool(freeze_batchnorm)
        self.trainable_from = trainable_from
        frozen = set_trainable(
            embedding.backbone, trainable_from, self.freeze_batchnorm
        )
        if frozen:
            logger.info(
                "TripletModel: %d of %d backbone layers frozen (training "
                "from %r)",
                frozen,
                len(embedding.backbone.layers),
                trainable_from,
            )

    def call(self, inputs, training=False):
        query, positive, negative = _unpack_streams(inputs)
        shapes = [tuple(x.shape[1:]) for x in (query, positive, negative)]
        if None not in shapes[0] and shapes[0] == shapes[1] == shapes[2]:
            # One pass over the concatenated batch: same weights, and BN is
            # frozen by default so batch composition does not matter.
            batch = ops.concatenate([query, positive, negative], axis=0)
            descriptors = self.embedding(batch, training=training)
            streams = ops.split(descriptors, 3, axis=0)
        else:
            streams = [
                self.embedding(x, training=training)
                for x in (query, positive, negative)
            ]
        return ops.stack(streams, axis=1)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            input_shape = input_shape["query"]
        elif isinstance(input_shape[0], (tuple, list)):
            input_shape = input_shape[0]
        dim = self.embedding.compute_output_shape(input_shape)[-1]
        return (input_shape[0], 3, dim)

    def compile(
        self,
        optimizer=None,
        loss=None,
        gradient_accumulation_steps=None,
        **kwargs,
    ):
        """Configures training with working defaults.

        Args:
            optimizer: optimizer instance, name, or None for
                `keras.optimizers.Adam(DEFAULT_LEARNING_RATE)`.
                Defaults to `None`.
            loss: loss or None for `TripletMarginLoss(margin=0.1)`.
                Defaults to `None`.
            gradient_accumulation_steps: int or None. Apply the averaged
                gradients of this many batches at once (an effective batch
                this many times larger; Keras 3 optimizers implement it).
                Defaults to `None`.
            **kwargs: passed to `keras.Model.compile` (`metrics`,
                `jit_compile`, `steps_per_execution`, ...).
        """
        if gradient_accumulation_steps is not None and not (
            int(gradient_accumulation_steps) >= 2
        ):
            raise ValueError(
                "`gradient_accumulation_steps` must be an int >= 2 or None, "
                f"got {gradient_accumulation_steps!r}."
            )
        if optimizer is None:
            optimizer = make_optimizer(
                gradient_accumulation_steps=gradient_accumulation_steps
            )
        elif isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
            if gradient_accumulation_steps:
                optimizer.gradient_accumulation_steps = int(
                    gradient_accumulation_steps
                )
        elif gradient_accumulation_steps:
            current = optimizer.gradient_accumulation_steps
            if current not in (None, gradient_accumulation_steps):
                raise ValueError(
                    "The optimizer already has gradient_accumulation_steps="
                    f"{current}; got gradient_accumulation_steps="
                    f"{gradient_accumulation_steps}. Pass one of them."
                )
            if optimizer.built and current is None:
                raise ValueError(
                    "Cannot add gradient accumulation to an optimizer that is "
                    "already built; create it with "
                    f"gradient_accumulation_steps={gradient_accumulation_steps}."
                )
            optimizer.gradient_accumulation_steps = int(
                gradient_accumulation_steps
            )
        if loss is None:
            loss = TripletMarginLoss(margin=0.1)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # Triplet datasets carry no targets: give the loss a dummy one.
        if y is None:
            y = ops.zeros(ops.shape(y_pred)[:1], dtype=y_pred.dtype)
        return super().compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )

    @property
    def optimizer_step(self):
        """Batches trained on so far (see the function `optimizer_step`)."""
        return optimizer_step(getattr(self, "optimizer", None))

    def train_step(self, data):
        logs = super().train_step(data)
        if _multi_worker(self.distribute_strategy):
            # Keras 3 reduces each log with `strategy.reduce("MEAN", v,
            # axis=0)` under MultiWorkerMirroredStrategy, which fails on
            # scalars (tensorflow/tensorflow#72388). A leading axis of
            # length 1 per replica reduces to the same scalar mean.
            logs = {k: ops.reshape(v, (1,)) for k, v in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a distribution strategy Keras builds the model from the
        # first batch reduced across replicas with `strategy.reduce`, which
        # MultiWorkerMirroredStrategy cannot do on nested (dict) inputs
        # (keras-team/keras#20329). Shapes are all the build needs, so take
        # the first replica's part instead.
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and data_batch is None and strategy:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = keras.tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], batch
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    def compile_from_config(self, config):
        # `compile()` is overridden, so Keras leaves this to us. The saved
        # config holds the optimizer actually used (with its
        # gradient_accumulation_steps), the loss and the other kwargs.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding": keras.layers.serialize(self.embedding),
                "freeze_batchnorm": self.freeze_batchnorm,
                "trainable_from": self.trainable_from,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedding"] = keras.layers.deserialize(config["embedding"])
        return cls(**config)


def _multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy with >1 worker."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return bool(strategy.extended._in_multi_worker_mode())


def _unpack_streams(inputs):
    if isinstance(inputs, dict):
        missing = [k for k in STREAMS if k not in inputs]
        if missing:
            raise ValueError(
                f"TripletModel inputs lack {missing}; expected a dict with "
                f"keys {STREAMS}, got keys {sorted(inputs)}."
            )
        return tuple(inputs[k] for k in STREAMS)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 3:
        return tuple(inputs)
    raise ValueError(
        "TripletModel expects a dict with keys "
        f"{STREAMS} or a tuple of three image batches, got "
        f"{type(inputs).__name__}."
    )
