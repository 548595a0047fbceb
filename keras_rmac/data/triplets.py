"""The `tf.data` pipeline of training triplets.

Training data is a list of images with class labels (one landmark or object
instance per class), a `keras_rmac.data.labelled.LabelledImages` read from a
CSV file or a folder per class. The triplets themselves (query, positive,
negative image indices) live in a `keras_rmac.data.triplet_table.
TripletTable` that hard-negative mining (`keras_rmac.data.mining`) rewrites
during training; `triplet_dataset` looks each row up in the table when it
produces it, so training picks up new triplets as soon as they are mined.
Crops to boxes and augmentation are in `keras_rmac.data.augmentation`, bad
files in `keras_rmac.data.bad_files`. The names of those modules that this
one used to define are still importable from here.

Design decisions:

- Batching and aspect ratio. R-MAC is not invariant to padding (padded
  zeros become part of the feature map and of the regions), so images of
  different shapes are never padded into one batch. Two modes:
  `resize="square"` resizes every image to `S x S` (the aspect ratio is not
  kept), which allows batches of many triplets and a single backbone pass
  over `3 * batch_size` images; `resize="longest"` keeps the aspect ratio
  with the longest side `S`, as the paper trains (one triplet per batch,
  each stream its own pass), and requires `batch_size=1`. COIL-100 is
  square, so both give the same images there. Batching buys less than
  one might expect on CPU: on the 2 cores of `benchmarks/train_coil100.py`,
  8 triplets per step trained only about as many triplets per second as
  one triplet per step (1.02x in benchmarks/RESULTS.md); so prefer
  "longest" for landmark photos whose aspect ratio varies, and "square"
  when the images are (nearly) square or the accelerator needs batches.
- Decoding uses `keras_rmac.data.image_io.load_image` (EXIF orientation,
  transparency on white, the same colour rules as inference) inside
  `tf.numpy_function`, which returns a success flag. A file that fails is
  logged once and recorded in a `BadFiles` list, and its triplet gets
  sample weight 0; it never stops training. `validate_images` checks every
  file up front in a thread pool and writes the list of bad files, so that
  in practice the pipeline only meets files that went bad during training.
- Reproducibility. The order of an epoch is a permutation of the table
  seeded by `(seed, epoch)`, and augmentation uses stateless random ops
  seeded by `(seed, epoch, position, stream)`. A run resumed from a
  checkpoint (see `keras_rmac.training`) therefore sees the same images,
  with the same crops and flips, as an uninterrupted run.
"""

import logging
import os

import numpy as np
import tensorflow as tf

from keras_rmac.data import image_io
from keras_rmac.data.augmentation import Augmentation
from keras_rmac.data.augmentation import augment_image
from keras_rmac.data.augmentation import crop_to_box
from keras_rmac.data.bad_files import BadFiles
from keras_rmac.data.bad_files import validate_images
from keras_rmac.data.labelled import LabelledImages
from keras_rmac.data.labelled import folder_per_class
from keras_rmac.data.labelled import read_image_list
from keras_rmac.data.resize import resize_longest_side
from keras_rmac.data.triplet_table import STREAMS
from keras_rmac.data.triplet_table import TripletTable
from keras_rmac.data.triplet_table import check_trainable
from keras_rmac.data.triplet_table import random_triplets

__all__ = [
    # The pipeline, defined here.
    "RESIZE_MODES",
    "feature_triplet_dataset",
    "image_dataset",
    "triplet_dataset",
    # Defined in their own modules, importable from here as before.
    "Augmentation",
    "BadFiles",
    "LabelledImages",
    "STREAMS",
    "TripletTable",
    "check_trainable",
    "folder_per_class",
    "random_triplets",
    "read_image_list",
    "validate_images",
]

logger = logging.getLogger(__name__)

RESIZE_MODES = ("square", "longest")


# ---------------------------------------------------------------------------
# Decoding, resizing.


def _decoder(paths, bad_files):
    paths = [os.fspath(p) for p in paths]

    def load(index):
        path = paths[int(index)]
        try:
            return image_io.load_image(path), True
        except image_io.ImageError as error:
            if bad_files is not None:
                bad_files.add(error)
            else:
                logger.warning("Skipping unreadable image %s", error)
            return np.zeros((1, 1, 3), np.uint8), False

    def decode(index):
        image, ok = tf.numpy_function(
            load, [index], (tf.uint8, tf.bool), stateful=False
        )
        image.set_shape([None, None, 3])
        ok.set_shape([])
        return image, ok

    return decode


def _resize(image, image_size, resize):
    if image_size is None:
        return image
    if resize == "square":
        out = tf.image.resize(
            image, (image_size, image_size), method="bilinear", antialias=True
        )
        out.set_shape([image_size, image_size, 3])
        return out
    return resize_longest_side(image, image_size)


def _check_resize(resize, batch_size, image_size):
    if resize not in RESIZE_MODES:
        raise ValueError(
            f"Unknown resize={resize!r}; choose one of {RESIZE_MODES}."
        )
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 1
    ):
        raise ValueError(
            f"`image_size` must be a positive int or None, got {image_size!r}."
        )
    if (resize == "longest" or image_size is None) and batch_size != 1:
        raise ValueError(
            f"resize={resize!r} (image_size={image_size}) keeps each "
            "image's aspect ratio, so images of different shapes cannot be "
            f"batched: use batch_size=1 (got {batch_size}) or "
            "resize='square' with an image_size."
        )


def _image_fn(images, image_size, resize, augment, bad_files):
    """`(index, seed) -> (image float32, ok)` for one image."""
    decode = _decoder(images.paths, bad_files)
    boxes = None
    if images.boxes is not None:
        boxes = tf.constant(images.boxes, tf.float32)
    aug = (
        augment
        if isinstance(augment, Augmentation)
        else (Augmentation() if augment else None)
    )

    def load(index, seed):
        image, ok = decode(index)
        if boxes is not None:
            image = crop_to_box(image, tf.gather(boxes, index))
        image = tf.cast(image, tf.float32)
        if aug is not None:
            image = augment_image(image, seed, aug)
        return _resize(image, image_size, resize), ok

    return load


def triplet_dataset(
    images: LabelledImages,
    table: TripletTable,
    image_size: int | None = 224,
    batch_size: int = 8,
    resize: str = "square",
    augment: bool | Augmentation = True,
    bad_files: BadFiles | None = None,
    start: int = 0,
) -> tf.data.Dataset:
    """The `tf.data` pipeline of training triplets read from a table.

    An epoch is `len(table) // batch_size` batches: positions `0..T-1` of
    the current epoch's permutation of the table (`TripletTable.lookup`,
    read when each element is produced, so mining shows up at once).
    Images are decoded in parallel, optionally cropped to their box,
    augmented (independently per stream, seeded by epoch and position),
    resized, batched and prefetched (`tf.data.AUTOTUNE` for both). The
    cardinality is known, so Keras shows progress and never truncates an
    epoch.

    A triplet with an unreadable image is kept in place with sample weight
    0 (its loss does not count; the file is recorded in `bad_files`), so
    epochs keep their length and a resumed run stays aligned.

    Args:
        images: `LabelledImages`. Indices in the table refer to it.
        table: `TripletTable`. Add `table.callback()` to `fit`'s callbacks
            so the epoch advances.
        image_size: int or None. Side `S` (see `resize`); None keeps the
            decoded size (batch_size must be 1). Defaults to `224`.
        batch_size: int. Triplets per batch. Defaults to `8`.
        resize: `"square"` (S x S, batches of any size) or `"longest"`
            (longest side S, batch_size 1). Defaults to `"square"`.
        augment: bool or `Augmentation`. Defaults to `True` (light
            defaults).
        bad_files: `BadFiles` or None. Defaults to None (bad files are only
            logged).
        start: int. First position of the epoch (a resumed epoch starts
            after the rows already trained on). Defaults to `0`.

    Returns:
        A `tf.data.Dataset` of `(inputs, targets, sample_weight)`: `inputs`
        a dict `{"query", "positive", "negative"}` of float32 `(batch_size,
        S, S, 3)` (or `(1, H, W, 3)`) images in [0, 255], `targets` zeros
        `(batch_size,)` (unused by the triplet loss), `sample_weight` 1.0,
        or 0.0 for triplets with a bad image. Ready for
        `TripletModel.fit`.
    """
    _check_resize(resize, batch_size, image_size)
    if not 0 <= start <= len(table):
        raise ValueError(
            f"`start` must be in [0, {len(table)}] (the table size), got "
            f"start={start}."
        )
    load = _image_fn(images, image_size, resize, augment, bad_files)
    seed = table.seed

    def lookup(position):
        row, epoch = table.lookup(position)
        return np.asarray(row, np.int64), np.int64(epoch)

    def stream_seed(epoch, position, stream):
        return tf.stack(
            [
                tf.cast(seed, tf.int64) * 1_000_003 + epoch,
                position * len(STREAMS) + stream,
            ]
        )

    def load_triplet(position):
        row, epoch = tf.numpy_function(
            lookup, [position], (tf.int64, tf.int64), stateful=False
        )
        row.set_shape([3])
        epoch.set_shape([])
        out, oks = {}, []
        for s, name in enumerate(STREAMS):
            image, ok = load(row[s], stream_seed(epoch, position, s))
            out[name] = image
            oks.append(ok)
        weight = tf.cast(tf.reduce_all(tf.stack(oks)), tf.float32)
        return out, tf.zeros([], tf.float32), weight

    ds = tf.data.Dataset.range(start, len(table))
    ds = ds.map(
        load_triplet,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    return _shard_by_data(ds)


def feature_triplet_dataset(
    features: np.ndarray,
    table: TripletTable,
    batch_size: int = 8,
    start: int = 0,
) -> tf.data.Dataset:
    """Triplets of cached backbone features, in the table's epoch order.

    The counterpart of `triplet_dataset` when the frozen part of the
    backbone was run once per image (see
    `keras_rmac.models.triplet_model.FeatureEmbedding`): the same rows,
    order and batching, gathered from an in-memory array instead of
    decoded (so without augmentation).

    Args:
        features: array `(N, h, w, c)`: the cached features of every image
            the table indexes.
        table: `TripletTable`.
        batch_size: int. Defaults to `8`.
        start: int. First position of the epoch. Defaults to `0`.

    Returns:
        A `tf.data.Dataset` of `(inputs, targets, sample_weight)` as
        `triplet_dataset` gives, with feature maps instead of images.
    """
    if not 0 <= start <= len(table):
        raise ValueError(
            f"`start` must be in [0, {len(table)}] (the table size), got "
            f"start={start}."
        )
    features = np.asarray(features)
    spec = tf.TensorSpec(features.shape[1:], tf.as_dtype(features.dtype))

    def gather(positions):
        rows = np.stack([table.lookup(p)[0] for p in positions])
        return tuple(features[rows[:, s]] for s in range(len(STREAMS)))

    def load(positions):
        streams = tf.numpy_function(
            gather, [positions], [spec.dtype] * len(STREAMS), stateful=False
        )
        out = {}
        for name, value in zip(STREAMS, streams):
            value.set_shape([batch_size, *spec.shape])
            out[name] = value
        ones = tf.ones([batch_size], tf.float32)
        return out, tf.zeros([batch_size], tf.float32), ones

    ds = tf.data.Dataset.range(start, len(table)).batch(
        batch_size, drop_remainder=True
    )
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _shard_by_data(ds)


def image_dataset(
    images: LabelledImages,
    indices=None,
    image_size: int | None = 224,
    resize: str = "square",
    bad_files: BadFiles | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Single images resized as for training, without augmentation.

    Used to embed images with the current weights (hard-negative mining,
    evaluation) exactly as the training pipeline sees them.

    Args:
        images: `LabelledImages`.
        indices: int array or None. Which images (default: all).
        image_size: int or None. As in `triplet_dataset`. Defaults to 224.
        resize: `"square"` or `"longest"`. Defaults to `"square"`.
        bad_files: `BadFiles` or None. Defaults to None.
        num_parallel_calls: int. Defaults to `tf.data.AUTOTUNE`.

    Returns:
        An unbatched `tf.data.Dataset` of `(image, index)`, in `indices`
        order, skipping unreadable images.
    """
    _check_resize(resize, 1, image_size)
    if indices is None:
        indices = np.arange(len(images))
    load = _image_fn(images, image_size, resize, False, bad_files)
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))

    def load_one(index):
        image, ok = load(index, tf.zeros([2], tf.int64))
        return image, index, ok

    ds = ds.map(
        load_one, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    return ds.filter(_last).map(_drop_last)


def _last(*values):
    return values[-1]


def _drop_last(*values):
    return values[:-1]


def _shard_by_data(ds):
    """`ds` sharded by data under multi-worker strategies, prefetched.

    Every worker of a multi-worker strategy builds the same positions and
    keeps its share of each global batch.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
