"""The training run, as plain steps: `train(config)`.

prepare the output folder -> read and check the images -> first triplet
table (or the class-balanced sampler of the AP loss) -> build the models
(feature cache, shift + PCA, `TripletModel` or `ListwiseModel`) -> restore
a checkpoint -> fit (the rest of an interrupted epoch first) -> save the
trained `RMACModel`. See the package docstring for the recipe.
"""

import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_rmac.data import mining
from keras_rmac.data import triplets as triplet_data
from keras_rmac.data.class_batches import ClassBatches
from keras_rmac.data.class_batches import class_batch_dataset
from keras_rmac.data.class_batches import feature_class_batch_dataset
from keras_rmac.fileio import atomic_write_text
from keras_rmac.losses import APLoss
from keras_rmac.losses import ContrastiveTupleLoss
from keras_rmac.losses import TripletMarginLoss
from keras_rmac.models.listwise_model import ListwiseModel
from keras_rmac.models.rmac_model import RMACModel
from keras_rmac.models.triplet_model import FeatureEmbedding
from keras_rmac.models.triplet_model import TripletModel
from keras_rmac.models.triplet_model import make_optimizer
from keras_rmac.training.callbacks import RandomTriplets
from keras_rmac.training.callbacks import ResumableBackupAndRestore
from keras_rmac.training.config import TrainConfig
from keras_rmac.training.feature_cache import adapt_pca_from_features
from keras_rmac.training.feature_cache import cached_features
from keras_rmac.training.feature_cache import feature_extract_fn

logger = logging.getLogger(__name__)


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
    """The optimizer of `config` (with its learning-rate schedule).

    Example:

    >>> config = TrainConfig(train_dir="photos", optimizer="sgd")
    >>> build_optimizer(config).momentum
    0.9
    """
    learning_rate = config.learning_rate
    if config.lr_decay != 1.0:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate,
            decay_steps=config.steps_per_epoch,
            decay_rate=config.lr_decay,
        )
    return make_optimizer(
        config.optimizer,
        learning_rate,
        config.gradient_accumulation_steps,
        config.weight_decay,
    )


def _default_embedding(config):
    if config.rpn_model is not None:
        from keras_rmac.training.rpn import rpn_embedding

        # The RPN reads a frozen copy of the backbone from the
        # trainable_from cut on (fixed_proposals): training leaves the
        # proposals fixed.
        return rpn_embedding(
            config.rpn_model,
            config.pca_dim,
            config.trainable_from,
            config.fixed_proposals,
        )
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


@dataclasses.dataclass
class _Models:
    """What `_build_models` makes.

    `net` is what the triplet model trains: the `RMACModel`, or with cached
    features the `FeatureEmbedding` of its tail; `features` is None unless
    cached.
    """

    embedding: object
    net: object
    features: np.ndarray | None
    triplet_model: TripletModel


# ---------------------------------------------------------------------------
# The steps of `train`.


# The checkpoint folder under the output directory (a run resumes from it).
BACKUP_DIR = "backup"
# Settings a resumed run may change: they do not alter what is trained.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "verbose", "num_workers", "checkpoint_every", "output_dir"}
)


def check_resumed_config(config, output_dir):
    """Refuses to resume a run under other training settings.

    When `output_dir` holds a checkpoint (`backup/`) and the `config.json`
    of the run that wrote it, every setting but `RESUMABLE_CHANGES` must
    be the same: otherwise the resumed epochs would silently train under
    another loss, learning rate, data... than the first ones. Settings
    absent from an older `config.json` are not compared.

    Raises:
        ValueError: naming each setting that differs, both values, and
            what to do.
    """
    saved = os.path.join(output_dir, "config.json")
    if not (
        os.path.isdir(os.path.join(output_dir, BACKUP_DIR))
        and os.path.isfile(saved)
    ):
        return
    with open(saved) as f:
        before = json.load(f)
    now = json.loads(config.to_json())
    changed = [
        f"{key}={before[key]!r} there, {now[key]!r} now"
        for key in sorted(now)
        if key in before
        and key not in RESUMABLE_CHANGES
        and before[key] != now[key]
    ]
    if changed:
        raise ValueError(
            f"{output_dir} holds an interrupted run trained with other "
            f"settings ({'; '.join(changed)}). Pass the same settings to "
            "resume it, or another output directory to start a new run."
        )


def _prepare_output(config, strategy):
    """`(is_chief, work folder)`; the chief also writes `config.json`."""
    chief, worker = _worker_info(strategy)
    out = config.output_dir
    work = out if chief else os.path.join(out, "workers", worker)
    if chief:
        check_resumed_config(config, out)
    os.makedirs(work, exist_ok=True)
    if chief:
        atomic_write_text(os.path.join(out, "config.json"), config.to_json())
    return chief, work


def _checked_images(config, images, work):
    """The readable training images and the `BadFiles` report."""
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
    return images, bad_files


def _first_table(config, images):
    """Random triplets for the first epoch (mining replaces them), or the
    class-balanced sampler of the AP loss."""
    if config.loss == "ap":
        sampler = ClassBatches(
            images.labels,
            config.classes_per_batch,
            config.images_per_class,
            config.seed,
        )
        if sampler.short_classes:
            logger.info(
                "%d classes have fewer than %d images: their batches "
                "repeat images, ignored by the loss",
                sampler.short_classes,
                config.images_per_class,
            )
        return sampler
    rows = triplet_data.random_triplets(
        images.labels,
        config.steps_per_epoch * config.batch_size,
        [config.seed, 1],
    )
    return triplet_data.TripletTable(rows, seed=config.seed)


def _build_models(config, embedding_fn, images, work, timings):
    """The models, with shift + PCA learned (in the strategy's scope)."""
    embedding = (embedding_fn or _default_embedding)(config)
    net, features = embedding, None
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
        logger.info("shift + PCA-whitening learned from %d regions", regions)
    model = _triplet_model(config, net, features)
    return _Models(embedding, net, features, model)


def build_loss(config: TrainConfig):
    """The `keras.losses.Loss` of `config.loss`.

    Example:

    >>> build_loss(TrainConfig(train_dir="photos", loss="ap")).bins
    20
    """
    if config.loss == "ap":
        return APLoss(bins=config.ap_bins)
    if config.loss == "contrastive":
        # Mining writes each tuple as negatives_per_query rows.
        rows = config.negatives_per_query if config.mining else 1
        return ContrastiveTupleLoss(config.loss_margin, rows)
    return TripletMarginLoss(margin=config.loss_margin)


def jit_compile_setting(config: TrainConfig, cached: bool):
    """`Model.compile`'s `jit_compile` for a training run: Keras's `"auto"`
    (XLA with a GPU, not on CPU nor under `tf.distribute`), except False
    for learned regions on images whose height is not fixed (not
    `resize="square"` with an `image_size`, nor cached features): XLA
    compiles the gradient of their box max-pooling only with the feature
    map's height known when traced (`box_ops.box_max_pool_static`)."""
    fixed = cached or (config.resize == "square" and bool(config.image_size))
    return False if config.rpn_model and not fixed else "auto"


def _triplet_model(config, net, features):
    """The compiled `TripletModel` (or `ListwiseModel` for the AP loss) of
    `net`, every variable created."""
    # With cached features `net` holds only the trainable tail.
    tail_from = None if features is not None else config.trainable_from
    settings = dict(
        freeze_batchnorm=config.freeze_batchnorm, trainable_from=tail_from
    )
    if config.loss == "ap":
        model = ListwiseModel(net, chunk_size=config.chunk_size, **settings)
    else:
        model = TripletModel(net, **settings)
    model.compile(
        optimizer=build_optimizer(config),
        loss=build_loss(config),
        jit_compile=jit_compile_setting(config, cached=features is not None),
    )
    # Create every variable (BackupAndRestore restores into them).
    if features is not None:
        shape = (1,) + features.shape[1:]
    else:
        side = config.image_size or 64
        shape = (1, side, side, 3)
    if config.loss == "ap":
        model(tf.zeros(shape))
    else:
        model({k: tf.zeros(shape) for k in triplet_data.STREAMS})
    model.optimizer.build(model.trainable_variables)
    return model


def _triplet_source(config, images, table, models):
    """The callback that rewrites the table: mining or random triplets (or
    the one that gives the AP sampler its epoch)."""
    if config.loss == "ap":
        return table.callback()
    if not config.mining:
        return RandomTriplets(images.labels, table, config.seed)
    extract_fn = None
    if models.features is not None:
        extract_fn = feature_extract_fn(models.net, models.features)
    return mining.HardNegativeMiner(
        images,
        table,
        image_size=config.image_size,
        resize=config.resize,
        pool_size=config.pool_size,
        negatives_per_query=config.negatives_per_query,
        positive=config.positive,
        negatives=config.negatives,
        every_n_epochs=config.mine_every_n_epochs,
        index=config.index,
        seed=config.seed,
        extract_fn=extract_fn,
        verbose=config.verbose,
    )


def _triplet_data(config, images, table, features, bad_files, start=0):
    """The training dataset from batch `start` of the epoch on."""
    if config.loss == "ap":
        if features is not None:
            return feature_class_batch_dataset(
                features, table, config.steps_per_epoch, start
            )
        return class_batch_dataset(
            images,
            table,
            config.steps_per_epoch,
            config.image_size,
            config.augment,
            bad_files,
            start,
        )
    start = start * config.batch_size  # Rows of the table.
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


def _fit(model, data, config, backup, restored, callbacks):
    """Runs the epochs left; returns the merged history of this call.

    Args:
        data: callable `start row -> dataset`.
    """
    history = {}
    fit = dict(
        callbacks=callbacks,
        verbose=config.verbose,
        shuffle=False,
    )
    epoch = restored["epoch"] if restored else 0
    if restored and restored["batches_done"] and epoch < config.epochs:
        # Finish the interrupted epoch on its remaining rows first: a fit
        # of its own, since Keras cannot start an epoch mid-way.
        backup.keep_checkpoint = True
        start = restored["batches_done"]
        partial = model.fit(
            data(start), epochs=epoch + 1, initial_epoch=epoch, **fit
        )
        _merge(history, partial.history)
        backup.keep_checkpoint = False
        backup.save()  # The state at the end of the epoch.
        epoch += 1
    if epoch < config.epochs:
        rest = model.fit(
            data(), epochs=config.epochs, initial_epoch=epoch, **fit
        )
        _merge(history, rest.history)
    else:
        backup.on_train_end()
    return history


def _merge(history, new):
    for key, values in new.items():
        history.setdefault(key, []).extend(values)


def _save_embedding(config, embedding):
    """Writes the trained `RMACModel` to `<output_dir>/model.keras`."""
    path = os.path.join(config.output_dir, "model.keras")
    embedding.save(path)
    logger.info("trained model written to %s", path)
    return path


# ---------------------------------------------------------------------------
# The run.


def train(
    config: TrainConfig,
    strategy=None,
    embedding_fn=None,
    images: triplet_data.LabelledImages | None = None,
    callbacks=(),
) -> TrainResult:
    """Trains an R-MAC model (triplet, contrastive or AP loss).

    See the `keras_rmac.training` docstring for the steps. Calling it
    again with the same `config` after an interruption resumes the run.

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
    chief, work = _prepare_output(config, strategy)
    images, bad_files = _checked_images(config, images, work)
    table = _first_table(config, images)
    timings = {}
    with strategy.scope():
        models = _build_models(config, embedding_fn, images, work, timings)
    pairwise = config.loss != "ap"
    backup = ResumableBackupAndRestore(
        os.path.join(work, BACKUP_DIR),
        # The AP batches follow from (seed, epoch, position) alone.
        table=table if pairwise else None,
        batches_per_epoch=config.steps_per_epoch,
        save_freq=config.checkpoint_every,
    )
    restored = backup.restore(models.triplet_model)
    all_callbacks = [
        backup,
        *([table.callback()] if pairwise else []),
        _triplet_source(config, images, table, models),
        keras.callbacks.CSVLogger(os.path.join(work, "log.csv"), append=True),
        *callbacks,
    ]

    def data(start=0):
        return _triplet_data(
            config, images, table, models.features, bad_files, start
        )

    start = time.perf_counter()
    history = _fit(
        models.triplet_model, data, config, backup, restored, all_callbacks
    )
    seconds = time.perf_counter() - start
    timings["fit_seconds"] = seconds
    return TrainResult(
        models.embedding,
        models.triplet_model,
        history,
        _save_embedding(config, models.embedding) if chief else None,
        sorted(bad_files.errors.items()),
        seconds,
        restored,
        timings,
    )
