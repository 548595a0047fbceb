"""Labelled image lists and the `tf.data` pipeline of training triplets.

Training data is a list of images with class labels (one landmark or object
instance per class), read from a CSV file or a folder per class. The
triplets themselves (query, positive, negative image indices) live in a
`TripletTable` that hard-negative mining (`keras_rmac.data.mining`) rewrites
during training; `triplet_dataset` looks each row up in the table when it
produces it, so training picks up new triplets as soon as they are mined.

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

import csv
import dataclasses
import logging
import os
import threading
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rmac.data import image_io

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

STREAMS = ("query", "positive", "negative")
RESIZE_MODES = ("square", "longest")

_PATH_COLUMNS = ("path", "image", "filename", "file")
_LABEL_COLUMNS = ("label", "landmark_id", "class", "instance")
_BOX_COLUMNS = ("x0", "y0", "x1", "y1")


# ---------------------------------------------------------------------------
# Labelled image lists.


@dataclasses.dataclass
class LabelledImages:
    """Image files with a class index each, and optional boxes.

    Args:
        paths: list of str. Image files.
        labels: int64 array `(N,)`. Class index of each image, in
            `[0, len(class_names))`.
        class_names: list of str. Name of each class index.
        boxes: float32 array `(N, 4)` of `(x0, y0, x1, y1)` pixel boxes
            (NaN rows: no box), or None. Defaults to None.
    """

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    boxes: np.ndarray | None = None

    def __post_init__(self):
        self.paths = [os.fspath(p) for p in self.paths]
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if len(self.labels) != len(self.paths):
            raise ValueError(
                f"{len(self.paths)} paths but {len(self.labels)} labels; "
                "give one label per image."
            )
        if len(self.labels) and (
            self.labels.min() < 0 or self.labels.max() >= len(self.class_names)
        ):
            raise ValueError(
                "labels must be class indices in [0, "
                f"{len(self.class_names)}), got range "
                f"[{self.labels.min()}, {self.labels.max()}]."
            )
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
            if len(self.boxes) != len(self.paths):
                raise ValueError(
                    f"{len(self.paths)} paths but {len(self.boxes)} boxes."
                )

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_labels(
        cls,
        paths: Sequence[PathLike],
        labels: Sequence,
        boxes: np.ndarray | None = None,
    ) -> "LabelledImages":
        """Builds from arbitrary labels (str or int), sorted into classes.

        Args:
            paths: image files.
            labels: one label per image, any hashable values.
            boxes: optional `(N, 4)` boxes. Defaults to None.

        Returns:
            `LabelledImages` whose `class_names` are the sorted distinct
            labels (as str).
        """
        keys = [str(label) for label in labels]
        names = sorted(set(keys), key=_natural_key)
        index = {name: i for i, name in enumerate(names)}
        return cls(
            list(paths),
            np.array([index[k] for k in keys], np.int64),
            names,
            boxes,
        )

    def subset(self, indices) -> "LabelledImages":
        """The images at `indices` (class names and indices unchanged)."""
        indices = np.asarray(indices, np.int64)
        return LabelledImages(
            [self.paths[i] for i in indices],
            self.labels[indices],
            list(self.class_names),
            None if self.boxes is None else self.boxes[indices],
        )


def _natural_key(text: str):
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _resolve(path: str, root: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def _gld_path(image_id: str, root: str) -> str:
    """Google Landmarks v2 layout: `root/a/b/c/abc...jpg`."""
    return os.path.join(root, *image_id[:3], image_id + ".jpg")


def read_image_list(
    csv_path: PathLike, root: PathLike | None = None
) -> LabelledImages:
    """Reads a labelled image list from a CSV file.

    Accepted layouts (a header row is optional for the first):

    - `path,label[,x0,y0,x1,y1]`: the format of `keras-rmac clean`'s
      clean list (boxes in pixels of the original image) and of a plain
      labelled list. Header names recognised: path/image/filename/file,
      label/landmark_id/class/instance, x0, y0, x1, y1.
    - Google Landmarks v2 `train.csv` (`id,url,landmark_id`): images at
      `root/<id[0]>/<id[1]>/<id[2]>/<id>.jpg`.
    - Google Landmarks v2 `train_clean.csv` (`landmark_id,images` with
      space-separated image ids): same image layout.

    Args:
        csv_path: path-like. The CSV file.
        root: path-like or None. Folder that relative paths (and GLD image
            ids) are relative to; defaults to the CSV file's folder.

    Returns:
        `LabelledImages`, in file order; `boxes` is set when the file has
        box columns (empty cells give NaN rows).

    Raises:
        ValueError: a malformed row (the message names the line).
    """
    csv_path = os.fspath(csv_path)
    root = os.fspath(root) if root is not None else os.path.dirname(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{csv_path}: empty image list.")
    header = [c.strip().lower() for c in rows[0]]
    paths, labels, boxes = [], [], []
    if header[:3] == ["id", "url", "landmark_id"]:
        for line, row in enumerate(rows[1:], start=2):
            _need(row, 3, csv_path, line, "id,url,landmark_id")
            paths.append(_gld_path(row[0].strip(), root))
            labels.append(row[2].strip())
        return LabelledImages.from_labels(paths, labels)
    if header[:2] == ["landmark_id", "images"]:
        for line, row in enumerate(rows[1:], start=2):
            _need(row, 2, csv_path, line, "landmark_id,images")
            for image_id in row[1].split():
                paths.append(_gld_path(image_id, root))
                labels.append(row[0].strip())
        return LabelledImages.from_labels(paths, labels)

    path_col, label_col, box_cols = 0, 1, None
    body = rows
    if any(h in _PATH_COLUMNS for h in header) and any(
        h in _LABEL_COLUMNS for h in header
    ):
        path_col = next(i for i, h in enumerate(header) if h in _PATH_COLUMNS)
        label_col = next(i for i, h in enumerate(header) if h in _LABEL_COLUMNS)
        if all(b in header for b in _BOX_COLUMNS):
            box_cols = [header.index(b) for b in _BOX_COLUMNS]
        body = rows[1:]
        first_line = 2
    else:
        first_line = 1
        if any(len(r) >= 6 for r in rows):
            box_cols = [2, 3, 4, 5]
    for line, row in enumerate(body, start=first_line):
        _need(row, 2, csv_path, line, "path,label[,x0,y0,x1,y1]")
        path, label = row[path_col].strip(), row[label_col].strip()
        if not path or not label:
            raise ValueError(
                f"{csv_path}:{line}: empty path or label in {row!r}; fix or "
                "remove that line."
            )
        paths.append(_resolve(path, root))
        labels.append(label)
        if box_cols is not None:
            cells = [row[c].strip() if c < len(row) else "" for c in box_cols]
            if all(not c for c in cells):
                boxes.append([np.nan] * 4)
                continue
            try:
                boxes.append([float(c) for c in cells])
            except ValueError:
                raise ValueError(
                    f"{csv_path}:{line}: box columns must be numbers, got "
                    f"{cells!r}."
                ) from None
    return LabelledImages.from_labels(
        paths, labels, np.array(boxes, np.float32) if box_cols else None
    )


def _need(row, count, path, line, layout):
    if len(row) < count:
        raise ValueError(
            f"{path}:{line}: expected `{layout}`, got {row!r}. Fix or "
            "remove that line."
        )


def folder_per_class(root: PathLike) -> LabelledImages:
    """Labelled images from a folder holding one sub-folder per class.

    Images are found with `image_io.list_images` (recursively under each
    class folder); the class name is the sub-folder name.

    Args:
        root: path-like. The folder of class folders.

    Returns:
        `LabelledImages` sorted by class then path.

    Raises:
        FileNotFoundError: `root` is missing or holds no class folder with
            images.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Training folder not found: {root!r}")
    paths, labels = [], []
    for name in sorted(os.listdir(root), key=_natural_key):
        folder = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        for path in image_io.list_images(folder):
            paths.append(path)
            labels.append(name)
    if not paths:
        raise FileNotFoundError(
            f"No class folders with images under {root!r}; expected "
            "root/<class>/<image files>."
        )
    return LabelledImages.from_labels(paths, labels)


# ---------------------------------------------------------------------------
# Bad files.


class BadFiles:
    """Thread-safe record of image files that could not be decoded.

    Each file is logged once (at WARNING) when first seen.

    Args:
        report_path: path-like or None. When given, every new bad file is
            appended to it as a `path<TAB>reason` line. Defaults to None.
        known: iterable of `ImageError` already reported (e.g. by
            `validate_images`): recorded, not logged or written again.
            Defaults to `()`.
    """

    def __init__(self, report_path: PathLike | None = None, known=()):
        self.report_path = None if report_path is None else str(report_path)
        self._errors = {e.path: e.reason for e in known}
        self._lock = threading.Lock()

    def add(self, error: image_io.ImageError) -> None:
        """Records an `ImageError` (ignored if the file is known)."""
        with self._lock:
            if error.path in self._errors:
                return
            self._errors[error.path] = error.reason
            logger.warning("Skipping unreadable image %s", error)
            if self.report_path:
                with open(self.report_path, "a", encoding="utf-8") as f:
                    f.write(f"{error.path}\t{error.reason}\n")

    @property
    def errors(self) -> dict[str, str]:
        """`{path: reason}` of every bad file seen so far."""
        with self._lock:
            return dict(self._errors)

    def __len__(self) -> int:
        with self._lock:
            return len(self._errors)


def validate_images(
    images: LabelledImages,
    num_workers: int = 4,
    report_path: PathLike | None = None,
    verbose="auto",
) -> tuple[LabelledImages, list[image_io.ImageError]]:
    """Decodes every image once and drops the ones that fail.

    Runs `image_io.load_images` in a thread pool. Bad files are logged
    (a summary at WARNING, each file at DEBUG) and, with `report_path`,
    written as `path<TAB>reason` lines (the file is written even when
    empty, so a run's report always exists).

    Args:
        images: `LabelledImages`.
        num_workers: int. Decoding threads. Defaults to `4`.
        report_path: path-like or None. Where to write the bad-file list.
            Defaults to None.
        verbose: `"auto"`, 0 or 1. Progress bar. Defaults to `"auto"`
            (shown for more than 1000 images).

    Returns:
        `(good_images, errors)`: the readable images and the `ImageError`
        of each bad one.
    """
    if verbose == "auto":
        verbose = 1 if len(images) > 1000 else 0
    progbar = keras.utils.Progbar(len(images)) if verbose else None
    keep, errors = [], []
    for i, result in image_io.load_images(images.paths, num_workers):
        if isinstance(result, image_io.ImageError):
            errors.append(result)
            logger.debug("bad image: %s", result)
        else:
            keep.append(i)
        if progbar is not None:
            progbar.update(i + 1)
    if errors:
        logger.warning(
            "%d of %d images cannot be read and are skipped (first: %s)%s",
            len(errors),
            len(images),
            errors[0],
            f"; list written to {os.fspath(report_path)}"
            if report_path
            else "",
        )
    if report_path is not None:
        with open(report_path, "w", encoding="utf-8") as f:
            for err in errors:
                f.write(f"{err.path}\t{err.reason}\n")
    return images.subset(keep), errors


# ---------------------------------------------------------------------------
# The triplet table.


def _classes_with_pairs(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels)
    return np.flatnonzero(counts >= 2)


def check_trainable(labels: np.ndarray) -> None:
    """Raises ValueError unless triplets can be formed from `labels`."""
    labels = np.asarray(labels, np.int64)
    if len(np.unique(labels)) < 2 or not len(_classes_with_pairs(labels)):
        raise ValueError(
            "Triplets need at least two classes and one class with two or "
            f"more images; got {len(labels)} images in "
            f"{len(np.unique(labels))} classes."
        )


def random_triplets(
    labels: np.ndarray, num_triplets: int, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """Random triplets: query, random positive, random negative.

    Queries are drawn uniformly among images whose class has at least two
    images; the positive is another image of the same class and the
    negative any image of another class.

    Args:
        labels: int array `(N,)`. Class index per image.
        num_triplets: int. Rows to draw.
        seed: int or sequence of int. NumPy seed. Defaults to `0`.

    Returns:
        int64 array `(num_triplets, 3)` of image indices.
    """
    labels = np.asarray(labels, np.int64)
    check_trainable(labels)
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(np.isin(labels, _classes_with_pairs(labels)))
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    out = np.empty((num_triplets, 3), np.int64)
    for row in range(num_triplets):
        q = int(eligible[rng.integers(len(eligible))])
        same = members[labels[q]]
        others = same[same != q]
        p = int(others[rng.integers(len(others))])
        while True:
            n = int(rng.integers(len(labels)))
            if labels[n] != labels[q]:
                break
        out[row] = (q, p, n)
    return out


class TripletTable:
    """Thread-safe table of `(query, positive, negative)` image indices.

    The training dataset reads it, hard-negative mining replaces it. Rows
    are replaced, never mutated in place, so a reader holding a snapshot is
    never disturbed. The table also carries the current epoch (set by
    `callback()` at each epoch start, before Keras creates that epoch's
    iterator), which selects the permutation of the rows. The number of
    rows must stay constant (it is the epoch length).

    Args:
        triplets: int array `(T, 3)`. The initial triplets.
        seed: int. Seed of the per-epoch permutations and augmentation.
            Defaults to `0`.
    """

    def __init__(self, triplets, seed: int = 0):
        self.seed = int(seed)
        self._lock = threading.Lock()
        self._triplets = self._check(triplets)
        self._version = 0
        self._mined_epoch = -1
        self._epoch = 0
        self._order_key = None
        self._order = None

    @staticmethod
    def _check(triplets):
        triplets = np.asarray(triplets, np.int64)
        if triplets.ndim != 2 or triplets.shape[1] != 3 or not len(triplets):
            raise ValueError(
                "Triplets must be a non-empty int array (T, 3) of "
                f"(query, positive, negative) indices, got shape "
                f"{triplets.shape}."
            )
        triplets.setflags(write=False)
        return triplets

    def __len__(self) -> int:
        with self._lock:
            return len(self._triplets)

    def set(self, triplets, mined_epoch: int | None = None) -> None:
        """Replaces the triplets (e.g. after mining at `mined_epoch`).

        The new table must have as many rows as the old one (the epoch
        length).
        """
        triplets = self._check(triplets)
        with self._lock:
            if len(triplets) != len(self._triplets):
                raise ValueError(
                    f"The triplet table has {len(self._triplets)} rows (the "
                    f"epoch length); got {len(triplets)} new rows."
                )
            self._triplets = triplets
            self._version += 1
            if mined_epoch is not None:
                self._mined_epoch = int(mined_epoch)

    def snapshot(self) -> np.ndarray:
        """The current triplets (read-only array)."""
        with self._lock:
            return self._triplets

    @property
    def version(self) -> int:
        """Number of times the triplets were replaced."""
        with self._lock:
            return self._version

    @property
    def mined_epoch(self) -> int:
        """Epoch of the last mining (-1 if never mined)."""
        with self._lock:
            return self._mined_epoch

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch the next dataset iterator will produce."""
        with self._lock:
            self._epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of rows used in `epoch` (cached)."""
        epoch = int(epoch)
        with self._lock:
            size = len(self._triplets)
            if self._order_key != (epoch, size):
                rng = np.random.default_rng([self.seed, epoch])
                self._order = rng.permutation(size)
                self._order_key = (epoch, size)
            return self._order

    def lookup(self, position: int) -> tuple[np.ndarray, int]:
        """`(triplet, epoch)` at `position` of the current epoch's order.

        If the table is replaced mid-epoch (mining every N steps), later
        positions read the new table.
        """
        epoch = self.epoch
        order = self.order(epoch)
        triplets = self.snapshot()
        return triplets[order[int(position)] % len(triplets)], epoch

    def state(self) -> dict:
        """A dict of arrays to persist the table (see `load_state`)."""
        with self._lock:
            return {
                "triplets": np.asarray(self._triplets),
                "mined_epoch": np.int64(self._mined_epoch),
                "version": np.int64(self._version),
                "seed": np.int64(self.seed),
            }

    def load_state(self, state) -> None:
        """Restores the triplets saved by `state()`."""
        triplets = self._check(np.array(state["triplets"]))
        with self._lock:
            self._triplets = triplets
            self._mined_epoch = int(state["mined_epoch"])
            self._version = int(state["version"])

    def save(self, path: PathLike) -> None:
        """Writes `state()` to an `.npz` file atomically."""
        path = os.fspath(path)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **self.state())
        os.replace(tmp, path)

    def load(self, path: PathLike) -> None:
        """Restores the table from a file written by `save`."""
        with np.load(os.fspath(path)) as data:
            self.load_state(dict(data))

    def callback(self) -> keras.callbacks.Callback:
        """A callback that sets the table's epoch at each epoch start."""
        return _EpochCallback(self)


class _EpochCallback(keras.callbacks.Callback):
    def __init__(self, table):
        super().__init__()
        self.table = table

    def on_epoch_begin(self, epoch, logs=None):
        self.table.set_epoch(epoch)


# ---------------------------------------------------------------------------
# Decoding, augmentation, resizing.


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


def _crop_to_box(image, box):
    """Crops to an `(x0, y0, x1, y1)` box; NaN boxes leave the image."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]

    def crop():
        x0 = tf.clip_by_value(tf.cast(tf.floor(box[0]), tf.int32), 0, w - 1)
        y0 = tf.clip_by_value(tf.cast(tf.floor(box[1]), tf.int32), 0, h - 1)
        x1 = tf.clip_by_value(
            tf.cast(tf.math.ceil(box[2]), tf.int32), x0 + 1, w
        )
        y1 = tf.clip_by_value(
            tf.cast(tf.math.ceil(box[3]), tf.int32), y0 + 1, h
        )
        return image[y0:y1, x0:x1]

    valid = tf.reduce_all(tf.math.is_finite(box))
    return tf.cond(valid, crop, lambda: image)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Light augmentation of training images.

    Args:
        crop_area: `(min, max)` fraction of the image area kept by the
            random crop (aspect ratio in `crop_aspect`). `(1, 1)` disables
            cropping. Defaults to `(0.7, 1.0)`.
        crop_aspect: `(min, max)` width / height of the crop. Defaults to
            `(0.8, 1.25)`.
        flip: bool. Random horizontal flip. Defaults to `True`.
        brightness: float. Max brightness shift, as a fraction of 255.
            Defaults to `0.1`.
        contrast: float. Contrast factor drawn in `[1 - c, 1 + c]`.
            Defaults to `0.1`.
        saturation: float. Saturation factor in `[1 - s, 1 + s]`.
            Defaults to `0.1`.
    """

    crop_area: tuple[float, float] = (0.7, 1.0)
    crop_aspect: tuple[float, float] = (0.8, 1.25)
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


def _augment(image, seed, aug: Augmentation):
    """Stateless light augmentation of an `(H, W, 3)` float image."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    if aug.crop_area != (1.0, 1.0):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=aug.crop_aspect,
            area_range=aug.crop_area,
            max_attempts=20,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
    if aug.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    if aug.brightness:
        image = tf.image.stateless_random_brightness(
            image, aug.brightness * 255.0, seeds[2]
        )
    if aug.contrast:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - aug.contrast, 1.0 + aug.contrast, seeds[3]
        )
    if aug.saturation:
        image = tf.image.stateless_random_saturation(
            image, 1.0 - aug.saturation, 1.0 + aug.saturation, seeds[4]
        )
    return tf.clip_by_value(image, 0.0, 255.0)


def _resize(image, image_size, resize):
    if image_size is None:
        return image
    if resize == "square":
        out = tf.image.resize(
            image, (image_size, image_size), method="bilinear", antialias=True
        )
        out.set_shape([image_size, image_size, 3])
        return out
    return image_io.resize_longest_side(image, image_size)


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
            image = _crop_to_box(image, tf.gather(boxes, index))
        image = tf.cast(image, tf.float32)
        if aug is not None:
            image = _augment(image, seed, aug)
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
    num_parallel_calls: int = tf.data.AUTOTUNE,
    prefetch: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """The `tf.data` pipeline of training triplets read from a table.

    An epoch is `len(table) // batch_size` batches: positions `0..T-1` of
    the current epoch's permutation of the table (`TripletTable.lookup`,
    read when each element is produced, so mining shows up at once).
    Images are decoded in parallel, optionally cropped to their box,
    augmented (independently per stream, seeded by epoch and position),
    resized, batched and prefetched. The cardinality is known, so Keras
    shows progress and never truncates an epoch.

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
        num_parallel_calls: int. Parallel decoding calls. Defaults to
            `tf.data.AUTOTUNE`.
        prefetch: int. Batches prefetched. Defaults to `tf.data.AUTOTUNE`.

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
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    # Every worker of a multi-worker strategy builds the same positions and
    # keeps its share of each global batch.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options).prefetch(prefetch)


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
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


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
