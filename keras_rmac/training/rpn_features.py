"""The RPN trainer's backbone feature maps, one file per image on disk.

`train_rpn` keeps the backbone frozen, so each training image's feature map
is a fixed function of the image: it is computed once and stored under the
run's output folder, then read back one image per training step, so memory
does not grow with the list:

    <output_dir>/rpn_features/<key>/<ab>/<name>.npz

- `<key>`: `feature_cache.features_key` of the backbone (its weights and
  arithmetic) with the preprocessing, the image size and the resizing:
  another backbone, other weights or another `image_size` write to another
  folder and never read a stale file. A model with `proposal_from` (the
  RPN reads a frozen copy of the backbone tail) caches the copy's maps,
  which the RPN reads at inference, keyed by the copy's weights too.
- `<name>`: a hash of the image's absolute path, byte size and modification
  time (`<ab>` its first two digits, so that no folder holds millions of
  files): an image replaced on disk is computed anew. The boxes are not in
  the file: they are read from the list and scaled with the original image
  size stored next to the map, so a list cleaned again (new boxes) reuses
  the same files.

Each file is written atomically (`keras_rmac.fileio.atomic_write`), so a
caching pass interrupted at any point resumes with the first image whose
file is missing, and a second run with the same settings computes nothing.

Disk: float32 `(h, w, C)` per image, `(image_size / stride)**2 * C * 4`
bytes: 1.3 MB for MobileNetV2 (stride 32, C = 1280) at 512 px, about 2 TB
for the 1.6M images of Google Landmarks v2 clean; 0.33 MB at 256 px. The
folder is kept after training (a later run reuses it): delete it to free
the disk.
"""

import hashlib
import json
import logging
import os

import numpy as np
import tensorflow as tf

from keras_rmac.data import image_io
from keras_rmac.fileio import atomic_write
from keras_rmac.progress import progress_bar
from keras_rmac.training.feature_cache import features_key

logger = logging.getLogger(__name__)

FOLDER = "rpn_features"


def backbone_key(model, image_size) -> str:
    """`features_key` of `model`'s backbone, preprocessing and image size.

    Args:
        model: `RMACModel`.
        image_size: int. Longest side the images are resized to.

    Returns:
        str, 16 hex digits: the folder of the cached maps.
    """
    settings = ["rpn", model.preprocessing, int(image_size), "longest_side"]
    if getattr(model, "proposal_tail", None) is not None:
        # The RPN reads the frozen copy's maps: its weights decide them.
        tail = features_key(model.proposal_tail, [])
        settings += ["proposal_from", model.proposal_from, tail]
    return features_key(model.backbone, settings)


def image_name(path) -> str:
    """24 hex digits naming the cached map of the image file at `path`.

    A hash of the absolute path, the byte size and the modification time
    (a file that cannot be stat-ed is named by its path alone: it will be
    reported as a bad file when decoded).
    """
    path = os.path.abspath(os.fspath(path))
    try:
        stat = os.stat(path)
        key = [path, stat.st_size, stat.st_mtime_ns]
    except OSError:
        key = [path]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


class BoxedFeatures:
    """Cached feature maps with their boxes, read from disk one at a time.

    A sequence: `items[i]` is `(features (1, h, w, C), boxes (1, 4))`,
    float32 tensors, the boxes in feature cells (the list's pixel box
    scaled by the ratio of map to original size, per axis). Only the file
    names and the boxes are held in memory.

    Args:
        folder: str. The key folder of the maps.
        names: sequence of `image_name`s, one per item.
        boxes: float array `(N, 4)`, the items' boxes in pixels.
    """

    def __init__(self, folder, names, boxes):
        self.folder = folder
        self.names = np.asarray(names, dtype="S24")
        self.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if len(self.names) != len(self.boxes):
            raise ValueError(
                f"{len(self.names)} names but {len(self.boxes)} boxes."
            )

    def __len__(self):
        return len(self.names)

    def path(self, i) -> str:
        """The file of item `i`."""
        return feature_path(self.folder, self.names[i].decode())

    def __getitem__(self, i):
        features, (height, width) = load_map(self.path(i))
        scale = np.array(
            [features.shape[1] / width, features.shape[0] / height] * 2
        )
        box = self.boxes[i][None] * scale
        return (
            tf.convert_to_tensor(features[None]),
            tf.constant(box, tf.float32),
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def feature_path(folder, name) -> str:
    """`<folder>/<first two digits of name>/<name>.npz`."""
    return os.path.join(folder, name[:2], f"{name}.npz")


def save_map(path, features, size) -> None:
    """Writes `features (h, w, C)` and the original `size (height, width)`
    atomically to the `.npz` file `path`."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                features=np.asarray(features, np.float32),
                size=np.asarray(size, np.int64),
            )


def load_map(path):
    """`(features (h, w, C) float32, (height, width))` of a `save_map` file.

    Example:

    >>> import tempfile
    >>> path = feature_path(tempfile.mkdtemp(), "ab12" + "0" * 20)
    >>> os.path.basename(os.path.dirname(path))
    'ab'
    >>> save_map(path, np.ones((2, 3, 4)), (64, 96))
    >>> features, size = load_map(path)
    >>> features.shape, features.dtype, size
    ((2, 3, 4), dtype('float32'), (64, 96))
    """
    try:
        with np.load(path) as data:
            return data["features"], tuple(int(s) for s in data["size"])
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"Cached feature map {path} cannot be read ({error}); delete it "
            "and run train-rpn again to compute it anew."
        ) from error


def _backbone_function(model):
    """The maps the RPN reads, of one image, traced once: the frozen
    backbone's output, or with `proposal_from` its frozen copy's."""

    def maps(x):
        features, proposal_maps = model.backbone_maps(
            model.preprocess(x), training=False
        )
        return features if proposal_maps is None else proposal_maps

    return tf.function(
        maps, input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)]
    )


def _warn_stale(root, key):
    """Logs the other key folders of `root`: maps no run here will read."""
    stale = [
        name
        for name in sorted(os.listdir(root))
        if name != key and os.path.isdir(os.path.join(root, name))
    ]
    if stale:
        logger.warning(
            "%s holds feature maps of other backbones/weights/image sizes "
            "(%s), not used by this run; delete them to free the disk.",
            root,
            ", ".join(stale),
        )


def cache_boxed_features(model, images, config):
    """`(BoxedFeatures, bad files)`: the boxed images' maps, on disk.

    Every image of `images` with a box gets the feature map its RPN reads
    (the backbone's, or its frozen copy's with `proposal_from`) in
    `<config.output_dir>/rpn_features/<key>/` (see the module docstring);
    images whose file is already there are not decoded again. Unreadable
    images are skipped and listed, as everywhere in keras_rmac.

    Args:
        model: `RMACModel` whose frozen backbone (and proposal copy, if
            any) computes the maps.
        images: `LabelledImages` with boxes (NaN: no box, skipped).
        config: `RPNConfig` (`output_dir`, `image_size`, `num_workers`,
            `verbose`, `train_list` for messages).

    Returns:
        `(items, bad)`: `BoxedFeatures` in list order, and the bad files'
        messages.
    """
    keep = ~np.isnan(images.boxes).any(axis=1)
    index = np.flatnonzero(keep)
    if not len(index):
        raise ValueError(
            f"{config.train_list}: no image has a box; train the RPN on a "
            "list with x0,y0,x1,y1 columns (keras-rmac clean writes them)."
        )
    root = os.path.join(config.output_dir, FOLDER)
    key = backbone_key(model, config.image_size)
    folder = os.path.join(root, key)
    os.makedirs(folder, exist_ok=True)
    _warn_stale(root, key)
    paths = [images.paths[i] for i in index]
    names = [image_name(p) for p in paths]
    todo = [
        j
        for j, name in enumerate(names)
        if not os.path.isfile(feature_path(folder, name))
    ]
    if len(todo) < len(names):
        logger.info(
            "reusing %d cached feature maps in %s",
            len(names) - len(todo),
            folder,
        )
    run = _backbone_function(model)
    progress = progress_bar(len(todo), config.verbose, label="features")
    bad, unreadable = [], set()
    loaded = image_io.load_images(
        [paths[j] for j in todo],
        num_workers=config.num_workers,
        draft_above=None,
    )
    for done, (k, image) in enumerate(loaded, 1):
        j = todo[k]
        if isinstance(image, image_io.ImageError):
            bad.append(str(image))
            unreadable.add(j)
            continue
        resized = image_io.resize_longest_side(
            np.asarray(image, np.float32), config.image_size
        )
        features = run(tf.convert_to_tensor(resized)[None])
        save_map(
            feature_path(folder, names[j]),
            features[0].numpy(),
            image.shape[:2],
        )
        if progress is not None:
            progress.update(done)
    if bad:
        logger.warning("skipped %d bad image file(s)", len(bad))
    kept = [j for j in range(len(names)) if j not in unreadable]
    if not kept:
        raise ValueError(
            f"{config.train_list}: none of the {len(names)} images with a "
            f"box could be read (first: {bad[0]}); check the paths and "
            "--image-root."
        )
    return (
        BoxedFeatures(
            folder, [names[j] for j in kept], images.boxes[index[kept]]
        ),
        bad,
    )
