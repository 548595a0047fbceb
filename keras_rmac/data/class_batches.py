"""Class-balanced batches (P classes x K images) for listwise training.

The listwise AP loss (`keras_rmac.losses.APLoss`) ranks every image of a
batch against the others, so a batch must hold several images of each of
its classes: `ClassBatches` draws `P` distinct classes and `K` images of
each. Batch `position` of `epoch` depends only on `(seed, epoch,
position)`, so a run resumed in the middle of an epoch sees the same
batches as an uninterrupted one (as the triplet table does for triplets).

Classes with a single image cannot give a positive and are never drawn.
A class with `2 <= n < K` images gives all its `n` images and fills its
other `K - n` slots with repeats of them whose label is `-1`: the batch
keeps its static shape `P * K` and the AP loss ignores the repeats (a
copy of the query would be a free, perfect positive).

`class_batch_dataset` decodes the images (cleaned lists, boxes, light
augmentation and bad files exactly as `keras_rmac.data.triplets`);
`feature_class_batch_dataset` gathers cached frozen-prefix features
(`keras_rmac.training`, `cache_features=True`).
"""

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rmac.checks import check_int
from keras_rmac.data.augmentation import Augmentation
from keras_rmac.data.bad_files import BadFiles
from keras_rmac.data.labelled import LabelledImages
from keras_rmac.data.triplets import _check_resize
from keras_rmac.data.triplets import _image_fn
from keras_rmac.data.triplets import _shard_by_data

IGNORED = -1
"""Label of a repeated slot (and of an unreadable image) in a batch."""


class ClassBatches:
    """Draws batches of `P` classes x `K` images, seeded by position.

    Args:
        labels: int array `(N,)`: class of every image.
        classes_per_batch: int >= 2. `P`.
        images_per_class: int >= 2. `K`.
        seed: int. Defaults to `0`.

    Example:

    >>> sampler = ClassBatches([0, 0, 0, 1, 1, 2, 2, 2], 2, 3, seed=1)
    >>> indices, labels = sampler.batch(0)
    >>> indices.shape, sorted(set(labels.tolist()) - {-1}).__len__()
    ((6,), 2)
    """

    def __init__(
        self,
        labels: Sequence[int],
        classes_per_batch: int,
        images_per_class: int,
        seed: int = 0,
    ):
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        self.classes_per_batch = check_int(
            "classes_per_batch", classes_per_batch, minimum=2
        )
        self.images_per_class = check_int(
            "images_per_class", images_per_class, minimum=2
        )
        self.seed = int(seed)
        counts = np.bincount(self.labels) if len(self.labels) else []
        self.classes = np.flatnonzero(np.asarray(counts) >= 2)
        if len(self.classes) < self.classes_per_batch:
            raise ValueError(
                f"classes_per_batch={self.classes_per_batch} but only "
                f"{len(self.classes)} classes have two or more images (of "
                f"{len(self.labels)} images): lower classes_per_batch or "
                "add images."
            )
        self._members = {
            int(c): np.flatnonzero(self.labels == c) for c in self.classes
        }
        self.short_classes = sum(
            len(m) < self.images_per_class for m in self._members.values()
        )
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        """Images per batch, `P * K`."""
        return self.classes_per_batch * self.images_per_class

    def batch(
        self, position: int, epoch: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Batch `position` of `epoch` (default: the current epoch).

        Returns:
            `(indices, labels)`: int64 arrays `(P * K,)`, class by class;
            `labels` is `IGNORED` (-1) on repeated slots.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, int(position), 13])
        k = self.images_per_class
        chosen = rng.choice(self.classes, self.classes_per_batch, False)
        indices, labels = [], []
        for c in chosen:
            members = self._members[int(c)]
            if len(members) >= k:
                indices.append(rng.choice(members, k, replace=False))
                labels.append(np.full(k, c))
                continue
            order = rng.permutation(members)
            indices.append(np.resize(order, k))
            labels.append(
                np.concatenate(
                    [np.full(len(order), c), np.full(k - len(order), IGNORED)]
                )
            )
        return (
            np.concatenate(indices).astype(np.int64),
            np.concatenate(labels).astype(np.int64),
        )

    def callback(self) -> keras.callbacks.Callback:
        """A callback that keeps `epoch` in step with `fit`."""
        return _EpochCallback(self)


class _EpochCallback(keras.callbacks.Callback):
    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler

    def on_epoch_begin(self, epoch, logs=None):
        self.sampler.epoch = int(epoch)


def _positions(sampler, steps, start):
    steps = check_int("steps", steps)
    if not 0 <= start <= steps:
        raise ValueError(
            f"`start` must be in [0, {steps}] (the batches of an epoch), got "
            f"start={start}."
        )

    def lookup(position):
        indices, labels = sampler.batch(int(position))
        return indices, labels, np.int64(sampler.epoch)

    def load(position):
        indices, labels, epoch = tf.numpy_function(
            lookup, [position], (tf.int64, tf.int64, tf.int64), stateful=False
        )
        indices.set_shape([sampler.batch_size])
        labels.set_shape([sampler.batch_size])
        epoch.set_shape([])
        return indices, labels, epoch, position

    ds = tf.data.Dataset.range(start, steps)
    return ds.map(load, num_parallel_calls=1, deterministic=True)


def class_batch_dataset(
    images: LabelledImages,
    sampler: ClassBatches,
    steps: int,
    image_size: int = 224,
    augment: bool | Augmentation = True,
    bad_files: BadFiles | None = None,
    start: int = 0,
) -> tf.data.Dataset:
    """One epoch of class-balanced image batches.

    Images are decoded, cropped to their boxes, augmented (seeded by
    epoch, position and slot) and resized to `image_size` squares as in
    `keras_rmac.data.triplets.triplet_dataset`. An unreadable image keeps
    its slot with label `IGNORED`, so it counts nowhere in the loss.

    Args:
        images: `LabelledImages` the sampler's indices refer to.
        sampler: `ClassBatches`. Add `sampler.callback()` to `fit`.
        steps: int. Batches per epoch.
        image_size: int. Side `S`. Defaults to `224`.
        augment: bool or `Augmentation`. Defaults to `True`.
        bad_files: `BadFiles` or None. Defaults to None.
        start: int. First batch (a resumed epoch). Defaults to `0`.

    Returns:
        A `tf.data.Dataset` of `(images (P*K, S, S, 3) float32 in [0,
        255], labels (P*K,) int32)`, ready for `ListwiseModel.fit`.
    """
    _check_resize("square", sampler.batch_size, image_size)
    load = _image_fn(images, image_size, "square", augment, bad_files)
    size = sampler.batch_size

    def slots(indices, labels, epoch, position):
        # One element per image; the slot number position * P*K + i seeds
        # its augmentation.
        return tf.data.Dataset.from_tensor_slices(
            (
                indices,
                labels,
                tf.fill([size], epoch),
                position * size + tf.range(size, dtype=tf.int64),
            )
        )

    def load_one(index, label, epoch, slot):
        seed = tf.stack(
            [tf.cast(sampler.seed, tf.int64) * 1_000_003 + epoch, slot]
        )
        image, ok = load(index, seed)
        label = tf.where(ok, label, tf.constant(IGNORED, tf.int64))
        return image, tf.cast(label, tf.int32)

    ds = _positions(sampler, steps, start).flat_map(slots)
    ds = ds.map(
        load_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    ds = ds.batch(size, drop_remainder=True)
    # flat_map hides the length; Keras needs it to end epochs on time.
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps - start))
    return _shard_by_data(ds)


def feature_class_batch_dataset(
    features: np.ndarray,
    sampler: ClassBatches,
    steps: int,
    start: int = 0,
) -> tf.data.Dataset:
    """One epoch of class-balanced batches of cached features.

    The counterpart of `class_batch_dataset` on the cached frozen-prefix
    features (same batches, no decoding, no augmentation).

    Args:
        features: array `(N, h, w, c)`, row i for image i.
        sampler: `ClassBatches`.
        steps: int. Batches per epoch.
        start: int. First batch. Defaults to `0`.

    Returns:
        A `tf.data.Dataset` of `(features (P*K, h, w, c), labels (P*K,)
        int32)`.

    Example:

    >>> import numpy as np
    >>> sampler = ClassBatches([0, 0, 1, 1, 2, 2], 2, 2)
    >>> ds = feature_class_batch_dataset(np.zeros((6, 3, 3, 4)), sampler, 5)
    >>> [tuple(t.shape) for t in next(iter(ds))], len(ds)
    ([(4, 3, 3, 4), (4,)], 5)
    """
    features = np.asarray(features)
    if len(features) != len(sampler.labels):
        raise ValueError(
            f"{len(features)} feature rows for {len(sampler.labels)} "
            "labelled images; cache the features of the same image list."
        )
    spec = tf.TensorSpec(features.shape[1:], tf.as_dtype(features.dtype))

    def gather(indices):
        return features[indices]

    def load(indices, labels, epoch, position):
        block = tf.numpy_function(gather, [indices], spec.dtype, False)
        block.set_shape([sampler.batch_size, *spec.shape])
        return block, tf.cast(labels, tf.int32)

    ds = _positions(sampler, steps, start)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _shard_by_data(ds)
