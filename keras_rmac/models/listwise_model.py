"""Batch-wise (listwise) training of an `RMACModel`, with exact big batches.

`ListwiseModel` embeds a batch of images (or cached features) and trains
with a loss over the whole batch, `keras_rmac.losses.APLoss` by default:
every image is a query against all the others, so the loss is not a sum
of per-image terms and averaging it over sub-batches (gradient
accumulation) would be another loss.

Big batches are reached exactly with two passes (`two_pass_gradients`):

1. embed the batch chunk by chunk without recording gradients, keeping
   only the descriptors `E` (B x D);
2. compute the loss on `E` and its gradient `G = dL/dE` (B x D);
3. run each chunk again with gradients and back-propagate its rows of
   `G` into the weights (`tf.GradientTape.gradient(..., output_gradients=
   G_chunk)`), summing over the chunks.

By the chain rule the sum is the gradient of the full-batch loss, as long
as both passes give the same descriptors: no dropout and BatchNorm in
inference mode (frozen, the default), so that a chunk's descriptors do
not depend on the other images.

Memory: what scales with the batch B is only the descriptors and their
gradient (B x D floats) and the loss's own tensors (for APLoss the B x B
similarities and their B x B x M bin weights: 256 images and 20 bins are
5 MB); the network's activations, kept for back-propagation, scale with
the chunk. The price is a second forward pass of the trained part
(about 1.3x to 1.5x the compute of one pass with gradients). On a CPU,
big batches are practical only with the cached frozen-prefix features
(`keras_rmac.training`, `cache_features=True`): the trained tail then
runs on small feature maps.

Reference:
    - [Revaud et al., 2019](https://arxiv.org/abs/1906.07589)
"""

import keras
import tensorflow as tf
from keras import ops

from keras_rmac.checks import check_int
from keras_rmac.losses import APLoss
from keras_rmac.models.triplet_model import TripletModel
from keras_rmac.models.triplet_model import _multi_worker


def _chunks(inputs, chunk_size):
    size = inputs.shape[0]
    if size is None:
        raise ValueError(
            "chunk_size needs batches of a static size: batch the dataset "
            "with drop_remainder=True (the keras_rmac datasets do)."
        )
    return [(a, min(a + chunk_size, size)) for a in range(0, size, chunk_size)]


def two_pass_gradients(embed, variables, inputs, loss_fn, chunk_size):
    """Gradient of a batch-wide loss, computed chunk by chunk, exactly.

    See the module docstring. `embed` must give the same outputs in both
    passes (no dropout, BatchNorm frozen).

    Args:
        embed: callable `inputs chunk -> descriptors chunk`.
        variables: list of the variables to differentiate.
        inputs: tensor `(B, ...)` with a static batch size `B`.
        loss_fn: callable `descriptors (B, D) -> scalar loss`.
        chunk_size: int. Inputs per chunk in both passes.

    Returns:
        `(loss, gradients, descriptors)`: gradients one per variable
        (None where the loss does not depend on it).

    Example:
    >>> import keras, numpy as np, tensorflow as tf
    >>> dense = keras.layers.Dense(2)
    >>> x = tf.constant(np.arange(12.0).reshape(6, 2), tf.float32)
    >>> _ = dense(x)
    >>> loss, grads, _ = two_pass_gradients(
    ...     dense, dense.trainable_variables, x,
    ...     lambda e: tf.reduce_sum(e) ** 2, chunk_size=4)
    >>> with tf.GradientTape() as tape:
    ...     direct = tf.reduce_sum(dense(x)) ** 2
    >>> want = tape.gradient(direct, dense.trainable_variables)
    >>> bool(np.allclose(grads[0], want[0], rtol=1e-5))
    True
    """
    chunk_size = check_int("chunk_size", chunk_size)
    chunks = _chunks(inputs, chunk_size)
    # Pass 1: descriptors only (nothing recorded for back-propagation).
    descriptors = ops.concatenate(
        [ops.stop_gradient(embed(inputs[a:b])) for a, b in chunks], axis=0
    )
    # The loss and its gradient with respect to the descriptors.
    with tf.GradientTape() as tape:
        tape.watch(descriptors)
        loss = loss_fn(descriptors)
    upstream = tape.gradient(loss, descriptors)
    # Pass 2: each chunk again, back-propagating its rows of the gradient.
    total = [None] * len(variables)
    for a, b in chunks:
        with tf.GradientTape() as tape:
            out = embed(inputs[a:b])
        grads = tape.gradient(out, variables, output_gradients=upstream[a:b])
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = tf.convert_to_tensor(g)
            total[i] = g if total[i] is None else total[i] + g
    return loss, total, descriptors


@keras.saving.register_keras_serializable(package="keras_rmac")
class ListwiseModel(TripletModel):
    """Trains an `RMACModel` with a loss over whole batches (AP loss).

    The model maps a batch of images (or cached features, with a
    `FeatureEmbedding`) to descriptors `(B, D)`; `fit` takes batches of
    `(inputs, labels)` such as `keras_rmac.data.class_batch_dataset` (P
    classes x K images) and trains with `APLoss` by default. Set
    `chunk_size` to train batches larger than fit in memory, exactly
    (`two_pass_gradients`). Fine-tuning settings (frozen BatchNorm,
    `trainable_from`, optimizer defaults, gradient accumulation) are those
    of `TripletModel`. Under a `tf.distribute` strategy each replica
    scores its own share of the batch (consecutive rows: whole classes
    when the per-replica batch is a multiple of K), not the global batch.

    Args:
        embedding: `RMACModel` or `FeatureEmbedding`.
        freeze_batchnorm: bool. Defaults to `True` (needed by
            `chunk_size`).
        trainable_from: str, float or None. As in `TripletModel`.
            Defaults to `None`.
        chunk_size: int or None. Images per pass of the two-pass step;
            None (default) trains each batch in one pass.

    Call arguments:
        inputs: images `(B, H, W, 3)` in [0, 255] (or cached features).
        training: bool.

    Returns:
        Descriptors `(B, D)`.

    Example:
    >>> from keras_rmac.models import RMACModel  # doctest: +SKIP
    >>> rmac = RMACModel("mobilenet_v2", weights="imagenet")  # doctest: +SKIP
    >>> model = ListwiseModel(rmac, chunk_size=32)  # doctest: +SKIP
    >>> model.compile()  # Adam(1e-5), APLoss(bins=20)  # doctest: +SKIP
    >>> model.fit(class_batches, epochs=10)  # doctest: +SKIP

    Reference:
        - [Revaud et al., 2019](https://arxiv.org/abs/1906.07589)
    """

    def __init__(
        self,
        embedding,
        freeze_batchnorm=True,
        trainable_from=None,
        chunk_size=None,
        **kwargs,
    ):
        super().__init__(
            embedding,
            freeze_batchnorm=freeze_batchnorm,
            trainable_from=trainable_from,
            **kwargs,
        )
        self.chunk_size = check_int("chunk_size", chunk_size, allow_none=True)
        if self.chunk_size and not self.freeze_batchnorm:
            raise ValueError(
                "chunk_size needs freeze_batchnorm=True: with batch "
                "statistics a chunk's descriptors depend on the other "
                "images, and the two passes would not give the exact "
                "gradient."
            )

    def call(self, inputs, training=False):
        return self.embedding(inputs, training=training)

    def compute_output_shape(self, input_shape):
        return self.embedding.compute_output_shape(input_shape)

    def compile(self, optimizer=None, loss=None, **kwargs):
        """As `TripletModel.compile`, with `APLoss(bins=20)` by default."""
        super().compile(
            optimizer=optimizer, loss=loss or APLoss(bins=20), **kwargs
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y is None:
            raise ValueError(
                "ListwiseModel trains on (inputs, labels) batches: the "
                "dataset gave no labels (use class_batch_dataset)."
            )
        return keras.Model.compute_loss(
            self,
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )

    def train_step(self, data):
        if not self.chunk_size:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables

        def loss_fn(descriptors):
            return self._compute_loss(
                x=x,
                y=y,
                y_pred=descriptors,
                sample_weight=sample_weight,
                training=True,
            )

        loss, grads, descriptors = two_pass_gradients(
            lambda v: self(v, training=True),
            variables,
            x,
            loss_fn,
            self.chunk_size,
        )
        # Keras divides the loss by the replicas; the log shows it whole.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self._loss_tracker.update_state(
            loss * ops.cast(replicas, loss.dtype),
            sample_weight=tf.shape(x)[0],
        )
        self.optimizer.apply_gradients(zip(grads, variables))
        logs = self.compute_metrics(
            x, y, descriptors, sample_weight=sample_weight
        )
        if _multi_worker(self.distribute_strategy):
            # As TripletModel.train_step (tensorflow/tensorflow#72388).
            logs = {k: ops.reshape(v, (1,)) for k, v in logs.items()}
        return logs

    def get_config(self):
        config = super().get_config()
        config.update({"chunk_size": self.chunk_size})
        return config
