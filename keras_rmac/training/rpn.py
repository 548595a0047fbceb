"""Training the region proposal network on boxes: `train_rpn(config)`.

The first stage of Gordo et al.'s learned regions (ECCV 2016 version, arXiv
1604.01325): the RPN of Faster R-CNN is trained on the boxes that the
cleaning estimates for the training images (`keras-rmac clean` writes them),
with the backbone frozen; the descriptor is then trained with the triplet
loss on the learned regions (`keras_rmac.training.train` with
`TrainConfig(rpn_model=...)`: the RPN stays frozen there).

The recipe, as Faster R-CNN's RPN: anchors (`AnchorGenerator`) whose IoU
with a true box is >= `positive_iou` (0.7), and for each true box the
anchors of highest IoU with it, are positives; anchors with IoU below
`negative_iou` (0.3) with every box are negatives; the others are ignored.
Each step samples `anchors_per_image` (256) anchors of one image, up to half
positives; the loss is the binary cross-entropy of the objectness on them
plus `box_weight` times the smooth-L1 (beta 1/9) of the box deltas of the
positives, divided by the number sampled.

Run: read the list (CSV `path,label,x0,y0,x1,y1`; images without a box are
skipped, as are bad files) -> decode each image once, resize its longest
side to `image_size`, run the frozen backbone once and write the feature
map to `<output_dir>/rpn_features/` (module `rpn_features`: one file per
image, keyed by backbone, weights and image size, about
`image_size**2 / stride**2 * C * 4` bytes an image: 1.3 MB for MobileNetV2
at 512; an interrupted pass, or a second run, computes only the missing
maps) -> train the RPN head (one image per step, seeded order per epoch,
each map read from disk when its step comes, so memory does not grow with
the list) with a checkpoint every `checkpoint_every` steps in
`<output_dir>/rpn_backup.npz` (running the same config again resumes from
it, with the same order and sampling) -> save the `RMACModel(regions="rpn")`
as `<output_dir>/model.keras` and the loss per epoch in `rpn_log.csv` (after
a resume, the epoch it resumed in averages the steps run since).

Anchor sizes are in feature cells: extract at the `image_size` the RPN was
trained at (`extract(max_size=image_size)`) so that objects have the sizes
it learned.
"""

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from keras_rmac.data.labelled import read_image_list
from keras_rmac.fileio import atomic_write
from keras_rmac.fileio import atomic_write_text
from keras_rmac.layers import box_ops
from keras_rmac.models.proposal_tail import proposal_cut
from keras_rmac.models.rmac_model import RMACModel
from keras_rmac.progress import progress_bar
from keras_rmac.training.config import RPNConfig
from keras_rmac.training.rpn_features import cache_boxed_features

logger = logging.getLogger(__name__)

BACKUP = "rpn_backup.npz"


@dataclasses.dataclass
class RPNResult:
    """What `train_rpn` did: `model_path`, `losses` per epoch, the images
    used, the bad files skipped and the step it resumed from (0: fresh)."""

    model_path: str
    losses: list
    images: int
    bad_files: list
    resumed_from: int


def anchor_labels(anchors, true_boxes, positive_iou=0.7, negative_iou=0.3):
    """Faster R-CNN's anchor labels and box targets for one image.

    Args:
        anchors: float tensor `(K, 4)`.
        true_boxes: float tensor `(G, 4)`, G >= 0 (no box: all negative).
        positive_iou: float. IoU from which an anchor is positive.
        negative_iou: float. IoU under which an anchor is negative.

    Returns:
        `(labels (K,) int32: 1 positive, 0 negative, -1 ignored,
        targets (K, 4): deltas to the box of highest IoU)`.
    """
    iou = box_ops.box_iou(anchors, true_boxes)  # (K, G)
    count = tf.shape(true_boxes)[0]
    # A column of IoU 0 (and a zero box) so that G = 0 needs no branch.
    column = tf.zeros([tf.shape(iou)[0], 1])
    best = tf.reduce_max(tf.concat([iou, column], 1), 1)
    match = tf.argmax(tf.concat([iou, column - 1.0], 1), 1)
    match = tf.minimum(tf.cast(match, tf.int32), tf.maximum(count - 1, 0))
    # The anchors of highest IoU with each box (ties included, IoU > 0).
    per_box = tf.reduce_max(
        tf.concat([iou, tf.zeros([1, count])], 0), 0, keepdims=True
    )
    is_best = tf.reduce_any((iou >= per_box) & (iou > 0), axis=1)
    positive = (best >= positive_iou) | is_best
    labels = tf.where(positive, 1, tf.where(best < negative_iou, 0, -1))
    padded = tf.concat([true_boxes, tf.zeros((1, 4))], 0)
    targets = box_ops.encode_boxes(tf.gather(padded, match), anchors)
    return tf.cast(labels, tf.int32), targets


def sample_anchors(labels, count, positive_fraction, seed):
    """float32 masks `(positives, negatives)` of a seeded anchor sample."""
    noise = tf.random.stateless_uniform(tf.shape(labels), seed)

    def pick(mask, n):
        score = tf.where(mask, noise, -1.0)
        n = tf.minimum(n, tf.reduce_sum(tf.cast(mask, tf.int32)))
        threshold = tf.sort(score, direction="DESCENDING")[tf.maximum(n - 1, 0)]
        return tf.cast(mask & (score >= threshold) & (n > 0), tf.float32)

    pos = pick(labels == 1, int(count * positive_fraction))
    n_neg = count - tf.cast(tf.reduce_sum(pos), tf.int32)
    return pos, pick(labels == 0, n_neg)


def smooth_l1(x, beta=1.0 / 9.0):
    """Smooth-L1 of Fast R-CNN, elementwise (`beta`: the quadratic zone)."""
    x = tf.abs(x)
    return tf.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)


def rpn_loss(outputs, anchors, true_boxes, seed, config: RPNConfig):
    """Objectness + box loss of one image's `RPNHead` outputs `(K, 5)`."""
    labels, targets = anchor_labels(
        anchors, true_boxes, config.positive_iou, config.negative_iou
    )
    pos, neg = sample_anchors(
        labels, config.anchors_per_image, config.positive_fraction, seed
    )
    sampled = pos + neg
    norm = tf.maximum(tf.reduce_sum(sampled), 1.0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(labels == 1, tf.float32), logits=outputs[:, 0]
    )
    box = tf.reduce_sum(smooth_l1(outputs[:, 1:] - targets), axis=1)
    cls_loss = tf.reduce_sum(bce * sampled) / norm
    box_loss = tf.reduce_sum(box * pos) / norm
    return cls_loss + config.box_weight * box_loss


def build_rpn_model(config: RPNConfig) -> RMACModel:
    """The untrained `RMACModel(regions="rpn")` of `config`."""
    return RMACModel(
        config.backbone,
        weights=config.weights,
        regions="rpn",
        rpn_options=config.rpn_options(),
    )


def feature_recall(pool, items, top_n=None, iou=0.5):
    """Proposal recall of `LearnedRegionPooling` `pool` on cached items
    (`(features (1, h, w, C), boxes (G, 4) in cells)` pairs, such as the
    `BoxedFeatures` of `cache_boxed_features`)."""
    found = total = 0
    for features, boxes in items:
        props = pool.proposals(features)[0][0][:top_n]
        best = tf.reduce_max(box_ops.box_iou(boxes, props), axis=1)
        found += int(tf.reduce_sum(tf.cast(best >= iou, tf.int32)))
        total += int(boxes.shape[0])
    return found / max(total, 1)


class _Trainer:
    """The RPN head, its optimizer and the step counter, with checkpoints."""

    def __init__(self, pool, config: RPNConfig):
        self.pool, self.config = pool, config
        self.head = pool.head
        self.head.trainable = True
        self.optimizer = keras.optimizers.Adam(config.learning_rate)
        self.optimizer.build(self.head.trainable_variables)
        self.path = os.path.join(config.output_dir, BACKUP)
        self.step = 0
        self.losses = []
        self._train = tf.function(
            self._step,
            input_signature=[
                tf.TensorSpec([1, None, None, None], tf.float32),
                tf.TensorSpec([None, 4], tf.float32),
                tf.TensorSpec([2], tf.int32),
            ],
        )

    def _step(self, features, boxes, seed):
        anchors = self.pool.anchors(features)
        with tf.GradientTape() as tape:
            outputs = self.head(features)[0]
            loss = rpn_loss(outputs, anchors, boxes, seed, self.config)
        variables = self.head.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)
        return loss

    def run(self, features, boxes):
        seed = tf.constant([self.config.seed, self.step], tf.int32)
        self.step += 1
        return float(self._train(features, boxes, seed))

    def save(self):
        arrays = {f"w{i}": w.numpy() for i, w in enumerate(self.head.weights)}
        for i, v in enumerate(self.optimizer.variables):
            arrays[f"o{i}"] = v.numpy()
        arrays["step"] = np.int64(self.step)
        arrays["losses"] = np.asarray(self.losses, np.float64)
        with atomic_write(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def restore(self):
        if not os.path.exists(self.path):
            return 0
        with np.load(self.path) as data:
            for i, w in enumerate(self.head.weights):
                w.assign(data[f"w{i}"])
            for i, v in enumerate(self.optimizer.variables):
                v.assign(data[f"o{i}"])
            self.step = int(data["step"])
            self.losses = data["losses"].tolist()
        logger.info("resumed RPN training at step %d", self.step)
        return self.step


def rpn_embedding(
    path, pca_dim=None, trainable_from=1.0, fixed_proposals=True
) -> RMACModel:
    """A fresh `RMACModel(regions="rpn")` with the backbone and frozen RPN
    of the `train_rpn` model at `path`, for training the descriptor on the
    learned regions (shift + PCA is learned anew, of size `pca_dim`).

    `trainable_from` is where the backbone will be trained from (as
    `TripletModel` reads it; 1.0: not at all). When some of it trains and
    `fixed_proposals` is True (the default), the model gets
    `proposal_from=proposal_cut(backbone, trainable_from)`: the RPN reads
    a frozen copy of the backbone from that cut, with the weights it was
    trained on, so that the proposals stay fixed. False: no copy (the
    proposals follow the trained backbone; no extra pass, no copy of the
    weights).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"RPN model {path!r} not found: pass the model.keras that "
            "`keras-rmac train-rpn` wrote."
        )
    trained = keras.models.load_model(path)
    if getattr(trained, "regions", None) != "rpn":
        raise ValueError(
            f"{path} is not an RMACModel(regions='rpn') (regions="
            f"{getattr(trained, 'regions', None)!r}); pass the model.keras "
            "that `keras-rmac train-rpn` wrote."
        )
    model = RMACModel(
        trained.backbone,
        weights=None,
        preprocessing=trained.preprocessing,
        pca_dim=pca_dim,
        regions="rpn",
        rpn_options=trained.rpn_options,
        proposal_from=(
            proposal_cut(trained.backbone, trainable_from)
            if fixed_proposals
            else None
        ),
    )
    model.backbone_name = trained.backbone_name
    for mine, theirs in zip(model.pool.weights, trained.pool.weights):
        mine.assign(theirs)
    return model


def train_rpn(config: RPNConfig, model: RMACModel | None = None) -> RPNResult:
    """Trains the RPN head on the boxes of `config.train_list`.

    Args:
        config: `RPNConfig`.
        model: optional `RMACModel(regions="rpn")` whose RPN is trained
            (e.g. with a custom backbone); None builds one from `config`.
            With `proposal_from` set, the RPN learns on its frozen copy's
            maps (those it reads at inference), not the backbone's.

    Returns:
        `RPNResult`; the trained model is `<output_dir>/model.keras`.
    """
    config.validate()
    os.makedirs(config.output_dir, exist_ok=True)
    model = model if model is not None else build_rpn_model(config)
    if getattr(model, "regions", None) != "rpn":
        raise ValueError(
            "train_rpn trains the RPN of an RMACModel(regions='rpn'); got "
            f"regions={getattr(model, 'regions', None)!r}."
        )
    images = read_image_list(config.train_list, config.image_root)
    if images.boxes is None:
        raise ValueError(
            f"{config.train_list} has no box columns (x0,y0,x1,y1); the RPN "
            "learns from boxes: use the list `keras-rmac clean` writes."
        )
    items, bad = cache_boxed_features(model, images, config)
    trainer = _Trainer(model.pool, config)
    resumed = trainer.restore()
    total = config.epochs * len(items)
    progress = progress_bar(total, config.verbose, label="train-rpn")
    epoch_losses = []
    while trainer.step < total:
        epoch, position = divmod(trainer.step, len(items))
        order = np.random.default_rng([config.seed, epoch]).permutation(
            len(items)
        )
        features, boxes = items[order[position]]
        epoch_losses.append(trainer.run(features, boxes))
        if trainer.step % len(items) == 0:
            trainer.losses.append(float(np.mean(epoch_losses)))
            epoch_losses = []
        if trainer.step % config.checkpoint_every == 0:
            trainer.save()
        if progress is not None:
            progress.update(trainer.step)
    model.pool.head.trainable = False
    path = os.path.join(config.output_dir, "model.keras")
    with atomic_write(path) as tmp:
        model.save(tmp)
    log = "epoch,loss\n" + "".join(
        f"{i},{loss:.6f}\n" for i, loss in enumerate(trainer.losses)
    )
    atomic_write_text(os.path.join(config.output_dir, "rpn_log.csv"), log)
    if os.path.exists(trainer.path):
        os.remove(trainer.path)
    return RPNResult(path, trainer.losses, len(items), bad, resumed)
