"""One training procedure shared by `keras-rmac train` and the examples.

`train(config)` runs the whole recipe of Gordo et al. (2017) on a labelled
image list:

1. read the list (CSV, folder per class or COIL-100's train split) and
   decode every image once, dropping and listing the bad ones;
2. build the `RMACModel`, learn shift + PCA-whitening from the region
   vectors of training images (`adapt_pca`);
3. wrap it in a `TripletModel` (BatchNorm frozen, early backbone layers
   optionally frozen) and compile it;
4. `model.fit` on the triplet dataset, with hard-negative mining, a CSV log
   of the loss, and `ResumableBackupAndRestore` checkpoints every
   `checkpoint_every` steps;
5. save the trained `RMACModel` as `<output_dir>/model.keras`.

Resuming: run the same command again after an interruption (even
`kill -9`): weights, optimizer state, the triplet table and the position in
the epoch are restored from `<output_dir>/backup`, and the remaining steps
see the same triplets, in the same order and with the same augmentation, as
an uninterrupted run (the epoch order and augmentation are seeded by epoch
and position, see `keras_rmac.data.triplets`).

Distribution: pass a `tf.distribute` strategy (`MirroredStrategy` for
several devices of one machine, `MultiWorkerMirroredStrategy` for several
machines with `TF_CONFIG` set); the model is built and compiled in its
scope and `batch_size` is the global batch. Every worker writes its own
backup folder (non-chief workers under `<output_dir>/workers/<id>`), and
only the chief writes the final model.
"""

import dataclasses
import hashlib
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_rmac.backbones import graph_signature
from keras_rmac.data import mining
from keras_rmac.data import triplets as triplet_data
from keras_rmac.models.rmac_model import RMACModel
from keras_rmac.models.triplet_model import FeatureEmbedding
from keras_rmac.models.triplet_model import TripletModel

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; see `train`.

    Data (exactly one of `train_list`, `train_dir`, `coil100`):
        train_list: CSV `path,label[,x0,y0,x1,y1]` (or a Google Landmarks
            train / train_clean CSV); see `triplets.read_image_list`.
        image_root: folder the CSV paths are relative to (default: the
            CSV's folder).
        train_dir: folder with one sub-folder of images per class.
        coil100: COIL-100 folder: trains on the project's train split.
        use_boxes: crop images to the CSV boxes. Defaults to False.

    Model:
        backbone, weights, levels, pooling, pca_dim: as in `RMACModel`.
        trainable_from: first backbone layer trained (name), or fraction
            of the backbone frozen; None trains all.
        freeze_batchnorm: BatchNorm in inference mode with fixed
            scale/offset. Defaults to True.
        pca_images: images used to learn shift + PCA-whitening (0 skips
            it). Defaults to 1000.

    Images:
        image_size: side S in pixels. Defaults to 224.
        resize: "square" or "longest" (batch_size 1). Defaults to
            "square".
        augment: light augmentation. Defaults to True.
        cache_features: run the frozen part of the backbone (the layers
            before `trainable_from`, which must be a layer name) once per
            training image, keep its output in memory (and in
            `output_dir`), and train only the rest on it. Steps then cost
            the tail alone: on CPU, many times faster. Needs
            `augment=False` (a cached image has one version). Defaults to
            False.

    Optimisation:
        optimizer: "adam" or "sgd" (momentum 0.9). Defaults to "adam".
        learning_rate: Defaults to 1e-5.
        lr_decay: learning rate multiplied by this every epoch (exponential
            schedule on steps). Defaults to 1.0.
        weight_decay: Defaults to 0.
        margin: triplet margin. Defaults to 0.1.
        batch_size: triplets per step (global). Defaults to 8.
        gradient_accumulation_steps: Defaults to None.
        epochs: Defaults to 10.
        steps_per_epoch: triplet table size = steps_per_epoch * batch_size.
            Defaults to 100.

    Mining:
        mining: hard-negative mining (else random triplets, redrawn every
            epoch). Defaults to True.
        mine_every_n_epochs: Defaults to 1.
        pool_size: images embedded per mining round. Defaults to 2000.
        negatives_per_query: Defaults to 1.
        positive: "random" or "most_similar". Defaults to "random".
        index: "exact" or "scann". Defaults to "exact".

    Run:
        output_dir: where the log, checkpoints, bad-file list and final
            model go. Defaults to "rmac_training".
        checkpoint_every: steps between checkpoints. Defaults to 50.
        seed: Defaults to 0.
        num_workers: decoding threads. Defaults to 4.
        verbose: Keras fit verbosity. Defaults to 1.
    """

    train_list: str | None = None
    image_root: str | None = None
    train_dir: str | None = None
    coil100: str | None = None
    use_boxes: bool = False
    backbone: str = "mobilenet_v2"
    weights: str | None = "imagenet"
    levels: int = 3
    pooling: str = "rmac"
    pca_dim: int | None = None
    trainable_from: str | float | None = None
    freeze_batchnorm: bool = True
    pca_images: int = 1000
    image_size: int | None = 224
    resize: str = "square"
    augment: bool = True
    cache_features: bool = False
    optimizer: str = "adam"
    learning_rate: float = 1e-5
    lr_decay: float = 1.0
    weight_decay: float = 0.0
    margin: float = 0.1
    batch_size: int = 8
    gradient_accumulation_steps: int | None = None
    epochs: int = 10
    steps_per_epoch: int = 100
    mining: bool = True
    mine_every_n_epochs: int = 1
    pool_size: int = 2000
    negatives_per_query: int = 1
    positive: str = "random"
    index: str = "exact"
    output_dir: str = "rmac_training"
    checkpoint_every: int = 50
    seed: int = 0
    num_workers: int = 4
    verbose: int = 1

    def validate(self) -> None:
        """Raises ValueError naming the first invalid setting."""
        sources = [self.train_list, self.train_dir, self.coil100]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "Give exactly one training source: train_list (CSV), "
                "train_dir (folder per class) or coil100; got "
                f"train_list={self.train_list!r}, train_dir="
                f"{self.train_dir!r}, coil100={self.coil100!r}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r}; choose one of {OPTIMIZERS}."
            )
        for name in ("batch_size", "epochs", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be >= 1, got {getattr(self, name)}."
                )
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be > 0, got {self.learning_rate}."
            )
        if self.cache_features and (
            not isinstance(self.trainable_from, str) or self.augment
        ):
            raise ValueError(
                "cache_features=True needs trainable_from=<backbone layer "
                "name> (where the cached part ends) and augment=False; got "
                f"trainable_from={self.trainable_from!r}, "
                f"augment={self.augment}."
            )
        if self.checkpoint_every < 1:
            raise ValueError(
                f"checkpoint_every must be >= 1, got {self.checkpoint_every}."
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# ---------------------------------------------------------------------------
# Checkpoints that resume mid-epoch.


def optimizer_step(optimizer) -> int:
    """Batches the optimizer has processed.

    With gradient accumulation, Keras's public `iterations` counts applied
    updates (batches // accumulation steps); the raw counter, saved with
    the weights, counts batches.
    """
    counter = getattr(optimizer, "_iterations", None)
    if counter is None:
        counter = optimizer.iterations
    return int(np.asarray(counter))


class ResumableBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that can resume inside an epoch.

    Keras's callback restores the weights of a mid-epoch checkpoint but
    restarts that epoch from its first batch, so the steps already done are
    done twice (on other data). This subclass also records how many batches
    of the epoch were done and saves the `TripletTable` in use, and
    `restore()` returns that position so that the caller (see `train`) can
    run exactly the remaining batches of the epoch, on the same data, before
    continuing with the next epochs.

    Files are written atomically (temporary file, then rename), so a kill
    at any moment leaves a loadable checkpoint. The weights file holds the
    optimizer state, `iterations` included; if a kill lands between writing
    the weights and the metadata, the position is corrected from the
    restored `iterations`.

    Args:
        backup_dir: str. Folder of the checkpoint (one run only).
        table: `TripletTable` or None. Saved and restored with the weights.
        batches_per_epoch: int or None. Batches in a full epoch (to tell a
            checkpoint taken after an epoch's last batch). Defaults to
            None.
        save_freq: `"epoch"` or int (steps). Defaults to `"epoch"`.
        delete_checkpoint: bool. Delete the backup when training
            completes. Defaults to `True`.
    """

    def __init__(
        self,
        backup_dir,
        table=None,
        batches_per_epoch=None,
        save_freq="epoch",
        delete_checkpoint=True,
    ):
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            delete_checkpoint=delete_checkpoint,
        )
        self.table = table
        self.batches_per_epoch = batches_per_epoch
        self._table_path = os.path.join(backup_dir, "triplets.npz")
        self._batches_done = 0
        self._restored_here = False
        self.keep_checkpoint = False
        self.restored = None

    def restore(self, model):
        """Loads the checkpoint into `model` (built and compiled), if any.

        Returns:
            None when there is no checkpoint, else a dict with `epoch`
            (0-based, the epoch to continue), `batches_done` (batches of
            that epoch already trained) and `step` (optimizer iterations).
        """
        self.set_model(model)
        self._restored_here = True
        super().on_train_begin()  # Keras: weights (+ .bkp fallback).
        if not os.path.exists(self._training_metadata_path):
            return None
        with open(self._training_metadata_path) as f:
            meta = json.load(f)
        epoch = int(meta["epoch"])
        done = int(meta.get("batches_done", 0))
        saved_step = meta.get("iterations")
        step = optimizer_step(model.optimizer)
        if saved_step is not None and step != int(saved_step):
            logger.warning(
                "checkpoint weights are at step %d but its metadata at "
                "step %s (interrupted while saving); resuming from the "
                "weights",
                step,
                saved_step,
            )
            done += step - int(saved_step)
        if self.table is not None and os.path.exists(self._table_path):
            self.table.load(self._table_path)
        if self.batches_per_epoch and done >= self.batches_per_epoch:
            # Saved after the last batch of the epoch: start the next one.
            epoch, done = epoch + 1, 0
        self._current_epoch = epoch
        self._batches_done = done
        self.restored = {"epoch": epoch, "batches_done": done, "step": step}
        logger.info(
            "resuming from %s: epoch %d, %d batches done, step %d",
            self.backup_dir,
            epoch + 1,
            done,
            step,
        )
        return self.restored

    def on_train_begin(self, logs=None):
        if not self._restored_here:
            self.restore(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch
        if self.restored is None or epoch != self.restored["epoch"]:
            self._batches_done = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches_done += 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._batches_done = 0
        super().on_epoch_end(epoch, logs)

    def save(self):
        """Writes a checkpoint of the current state now."""
        self._save_model()

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = self._weights_path + ".tmp.weights.h5"
        self.model.save_weights(tmp, overwrite=True)
        if self.table is not None:
            self.table.save(self._table_path)
        os.replace(tmp, self._weights_path)
        meta = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "batches_done": self._batches_done,
            "iterations": optimizer_step(self.model.optimizer),
        }
        tmp = self._training_metadata_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, self._training_metadata_path)

    def on_train_end(self, logs=None):
        if self.keep_checkpoint:
            return
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            super().on_train_end(logs)


# ---------------------------------------------------------------------------
# Building blocks.


def load_training_images(config: TrainConfig) -> triplet_data.LabelledImages:
    """The labelled training images named by `config` (not validated)."""
    if config.coil100 is not None:
        from keras_rmac.data.datasets import load_coil100

        data = load_coil100(config.coil100)
        return triplet_data.LabelledImages.from_labels(
            data.train_paths, data.train_labels
        )
    if config.train_dir is not None:
        return triplet_data.folder_per_class(config.train_dir)
    images = triplet_data.read_image_list(config.train_list, config.image_root)
    if not config.use_boxes:
        images.boxes = None
    return images


def build_optimizer(config: TrainConfig):
    """The optimizer of `config` (with its learning-rate schedule)."""
    learning_rate = config.learning_rate
    if config.lr_decay != 1.0:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate,
            decay_steps=config.steps_per_epoch,
            decay_rate=config.lr_decay,
        )
    kwargs = {"gradient_accumulation_steps": config.gradient_accumulation_steps}
    if config.weight_decay:
        kwargs["weight_decay"] = config.weight_decay
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, **kwargs)
    return keras.optimizers.Adam(learning_rate, **kwargs)


def _default_embedding(config):
    return RMACModel(
        config.backbone,
        weights=config.weights,
        levels=config.levels,
        pooling=config.pooling,
        pca_dim=config.pca_dim,
    )


def adapt_pca(embedding, images, config: TrainConfig) -> int:
    """Learns shift + PCA-whitening from training images (seeded subset).

    Images are resized exactly as in training (`image_dataset`).

    Returns:
        The number of region vectors used (0 if `pca_images` is 0).
    """
    if not config.pca_images:
        return 0
    rng = np.random.default_rng([config.seed, 3])
    count = min(config.pca_images, len(images))
    chosen = np.sort(rng.choice(len(images), count, replace=False))
    ds = triplet_data.image_dataset(
        images, chosen, config.image_size, config.resize
    ).map(_image_only)
    return embedding.adapt_pca(ds, verbose=0)


def _image_only(image, index):
    return image


def _batches(features, batch_size=64):
    for start in range(0, len(features), batch_size):
        yield features[start : start + batch_size]


def cached_features(
    head: FeatureEmbedding, images, config: TrainConfig, work_dir: str
) -> np.ndarray:
    """Backbone-prefix features of every training image, computed once.

    Images are resized as in training (`image_dataset`, no augmentation).
    The array is stored in `<work_dir>/features-<key>.npy`, where the key
    hashes the prefix weights and arithmetic (padding, ...), the cut layer,
    the image list, its boxes (when images are cropped) and the size, so a
    later run (or a resumed one) reuses it only when all match.

    Returns:
        float32 array `(N, h, w, c)`, row i for image i.
    """
    digest = hashlib.sha256()
    for weight in head.prefix.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    digest.update(graph_signature(head.prefix).encode())
    key = [
        head.rmac.preprocessing,
        head.feature_layer,
        config.image_size,
        config.resize,
        images.paths,
    ]
    if images.boxes is not None:  # Cropped images are other features.
        key.append(images.boxes.tolist())
    digest.update(json.dumps(key).encode())
    path = os.path.join(work_dir, f"features-{digest.hexdigest()[:16]}.npy")
    if os.path.exists(path):
        features = np.load(path, mmap_mode="r")
        if len(features) == len(images):
            logger.info("using cached features %s", path)
            return np.asarray(features)
    prefix = tf.function(
        lambda x: head.prefix(x, training=False),
        reduce_retracing=True,
        autograph=False,
    )
    ds = triplet_data.image_dataset(
        images, None, config.image_size, config.resize
    ).batch(32 if config.resize == "square" else 1)
    start = time.perf_counter()
    blocks, kept = [], []
    progbar = keras.utils.Progbar(len(images)) if config.verbose else None
    for batch, index in ds:
        blocks.append(np.asarray(prefix(batch)))
        kept.append(index.numpy())
        if progbar is not None:
            progbar.add(len(index))
    kept = np.concatenate(kept)
    if len(kept) != len(images):
        raise ValueError(
            f"{len(images) - len(kept)} images could not be read while "
            "caching features; run validate_images first."
        )
    features = np.concatenate(blocks).astype(np.float32)
    logger.info(
        "cached %s features of %d images in %.1f s (%.0f MB)",
        features.shape[1:],
        len(features),
        time.perf_counter() - start,
        features.nbytes / 2**20,
    )
    tmp = path + ".tmp.npy"
    np.save(tmp, features)
    os.replace(tmp, path)
    return features


def adapt_pca_from_features(head, features, config: TrainConfig) -> int:
    """`adapt_pca` on cached features (same seeded image subset)."""
    if not config.pca_images:
        return 0
    rng = np.random.default_rng([config.seed, 3])
    count = min(config.pca_images, len(features))
    chosen = np.sort(rng.choice(len(features), count, replace=False))
    regions = tf.function(
        lambda x: head.region_vectors(x, training=False),
        reduce_retracing=True,
        autograph=False,
    )
    used = [0]

    def blocks():
        for block in _batches(features[chosen]):
            out = np.asarray(regions(block))
            out = out.reshape(-1, out.shape[-1])
            used[0] += len(out)
            yield out

    head.rmac.shift_pca.adapt(blocks(), power=head.rmac.whiten_power)
    return used[0]


def _feature_embed_fn(head, features):
    embed = tf.function(
        lambda x: head(x, training=False),
        reduce_retracing=True,
        autograph=False,
    )

    def embed_fn(indices):
        indices = np.asarray(indices, np.int64)
        out = [np.asarray(embed(b)) for b in _batches(features[indices])]
        return np.concatenate(out), indices

    return embed_fn


def _worker_info(strategy):
    """`(is_chief, task id string)` under any strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, None
    task_type, task_id = resolver.task_type, resolver.task_id
    chief = task_type == "chief" or (
        task_type == "worker"
        and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )
    return chief, f"{task_type}_{task_id}"


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        embedding: the trained `RMACModel`.
        triplet_model: the `TripletModel`.
        history: `keras.callbacks.History.history` of this call (epochs run
            by this call only when resumed).
        model_path: the saved `.keras` file (None on non-chief workers).
        bad_files: list of `(path, reason)` skipped.
        seconds: wall time of `fit`.
        restored: dict or None: where a resumed run restarted.
        timings: dict of wall times in seconds (`cache_seconds` with
            cached features, `pca_seconds`, `fit_seconds`).
    """

    embedding: object
    triplet_model: object
    history: dict
    model_path: str | None
    bad_files: list
    seconds: float
    restored: dict | None = None
    timings: dict = dataclasses.field(default_factory=dict)


def train(
    config: TrainConfig,
    strategy=None,
    embedding_fn=None,
    images: triplet_data.LabelledImages | None = None,
    callbacks=(),
) -> TrainResult:
    """Trains an R-MAC model with triplets and hard-negative mining.

    See the module docstring for the steps. Calling it again with the same
    `config` after an interruption resumes the run.

    Args:
        config: `TrainConfig`.
        strategy: `tf.distribute.Strategy` or None (the default strategy).
        embedding_fn: callable `config -> RMACModel` or None (builds
            `RMACModel(config.backbone, config.weights, ...)`); called in
            the strategy's scope. Defaults to None.
        images: `LabelledImages` or None: the training images, instead of
            the data source of `config`. Defaults to None.
        callbacks: extra Keras callbacks.

    Returns:
        `TrainResult`.
    """
    config.validate()
    strategy = strategy or tf.distribute.get_strategy()
    chief, worker = _worker_info(strategy)
    out = config.output_dir
    work = out if chief else os.path.join(out, "workers", worker)
    os.makedirs(work, exist_ok=True)
    if chief:
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write(config.to_json())

    if images is None:
        images = load_training_images(config)
    report = os.path.join(work, "bad_files.txt")
    images, errors = triplet_data.validate_images(
        images, config.num_workers, report, verbose=config.verbose
    )
    # Files that go bad later are appended to the same report.
    bad_files = triplet_data.BadFiles(report, known=errors)
    triplet_data.check_trainable(images.labels)
    logger.info(
        "training on %d images of %d classes (%d unreadable skipped)",
        len(images),
        len(np.unique(images.labels)),
        len(errors),
    )

    table = triplet_data.TripletTable(
        triplet_data.random_triplets(
            images.labels,
            config.steps_per_epoch * config.batch_size,
            [config.seed, 1],
        ),
        seed=config.seed,
    )
    features = None
    timings = {}
    with strategy.scope():
        embedding = (embedding_fn or _default_embedding)(config)
        net = embedding
        tick = time.perf_counter()
        if config.cache_features:
            net = FeatureEmbedding(embedding, config.trainable_from)
            features = cached_features(net, images, config, work)
            timings["cache_seconds"] = time.perf_counter() - tick
            tick = time.perf_counter()
            regions = adapt_pca_from_features(net, features, config)
        else:
            regions = adapt_pca(embedding, images, config)
        timings["pca_seconds"] = time.perf_counter() - tick
        if regions:
            logger.info(
                "shift + PCA-whitening learned from %d regions", regions
            )
        # With cached features `net` holds only the trainable tail.
        tail_from = None if features is not None else config.trainable_from
        model = TripletModel(
            net,
            freeze_batchnorm=config.freeze_batchnorm,
            trainable_from=tail_from,
        )
        model.compile(
            optimizer=build_optimizer(config),
            loss=_loss(config),
        )
        # Create every variable (BackupAndRestore restores into them).
        if features is not None:
            shape = (1,) + features.shape[1:]
        else:
            side = config.image_size or 64
            shape = (1, side, side, 3)
        model({k: tf.zeros(shape) for k in triplet_data.STREAMS})
        model.optimizer.build(model.trainable_variables)

    batches_per_epoch = len(table) // config.batch_size
    backup = ResumableBackupAndRestore(
        os.path.join(work, "backup"),
        table=table,
        batches_per_epoch=batches_per_epoch,
        save_freq=config.checkpoint_every,
    )
    restored = backup.restore(model)
    all_callbacks = [backup, table.callback()]
    if config.mining:
        all_callbacks.append(
            mining.HardNegativeMiner(
                images,
                table,
                image_size=config.image_size,
                resize=config.resize,
                pool_size=config.pool_size,
                negatives_per_query=config.negatives_per_query,
                positive=config.positive,
                every_n_epochs=config.mine_every_n_epochs,
                index=config.index,
                seed=config.seed,
                embed_fn=None
                if features is None
                else _feature_embed_fn(net, features),
                verbose=config.verbose,
            )
        )
    else:
        all_callbacks.append(_RandomTriplets(images.labels, table, config.seed))
    all_callbacks.append(
        keras.callbacks.CSVLogger(os.path.join(work, "log.csv"), append=True)
    )
    all_callbacks.extend(callbacks)

    def data(start=0):
        if features is not None:
            return triplet_data.feature_triplet_dataset(
                features, table, config.batch_size, start=start
            )
        return triplet_data.triplet_dataset(
            images,
            table,
            config.image_size,
            config.batch_size,
            config.resize,
            config.augment,
            bad_files,
            start=start,
        )

    start = time.perf_counter()
    history = {}
    epoch = restored["epoch"] if restored else 0
    if restored and restored["batches_done"] and epoch < config.epochs:
        # Finish the interrupted epoch on its remaining rows first: a fit
        # of its own, since Keras cannot start an epoch mid-way.
        backup.keep_checkpoint = True
        partial = model.fit(
            data(restored["batches_done"] * config.batch_size),
            epochs=epoch + 1,
            initial_epoch=epoch,
            callbacks=all_callbacks,
            verbose=config.verbose,
            shuffle=False,
        )
        _merge(history, partial.history)
        backup.keep_checkpoint = False
        backup.save()  # The state at the end of the epoch.
        epoch += 1
    if epoch < config.epochs:
        rest = model.fit(
            data(),
            epochs=config.epochs,
            initial_epoch=epoch,
            callbacks=all_callbacks,
            verbose=config.verbose,
            shuffle=False,
        )
        _merge(history, rest.history)
    else:
        backup.on_train_end()
    seconds = time.perf_counter() - start
    timings["fit_seconds"] = seconds

    model_path = None
    if chief:
        model_path = os.path.join(out, "model.keras")
        embedding.save(model_path)
        logger.info("trained model written to %s", model_path)
    return TrainResult(
        embedding,
        model,
        history,
        model_path,
        sorted(bad_files.errors.items()),
        seconds,
        restored,
        timings,
    )


def _merge(history, new):
    for key, values in new.items():
        history.setdefault(key, []).extend(values)


def _loss(config):
    from keras_rmac.losses import TripletMarginLoss

    return TripletMarginLoss(margin=config.margin)


class _RandomTriplets(keras.callbacks.Callback):
    """Redraws random triplets at each epoch start (no mining)."""

    def __init__(self, labels, table, seed):
        super().__init__()
        self.labels = labels
        self.table = table
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0 or self.table.mined_epoch == epoch:
            return
        self.table.set(
            triplet_data.random_triplets(
                self.labels, len(self.table), [self.seed, 1, epoch]
            ),
            mined_epoch=epoch,
        )
