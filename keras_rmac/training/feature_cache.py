"""Cached features of the frozen backbone prefix (`cache_features=True`).

When the backbone is frozen up to `trainable_from` (BatchNorm too), the
prefix's output is a fixed function of each training image: it is computed
once, kept in memory and in `<output_dir>/features-<key>.npy`, and training
runs only the tail on it (`FeatureEmbedding`). Shift + PCA-whitening and
hard-negative mining then work from the same cached features.
"""

import hashlib
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from keras_rmac.backbones import graph_signature
from keras_rmac.backbones import update_with_weights
from keras_rmac.data import triplets as triplet_data
from keras_rmac.fileio import atomic_save_npy
from keras_rmac.models.triplet_model import FeatureEmbedding
from keras_rmac.progress import progress_bar
from keras_rmac.training.config import TrainConfig

logger = logging.getLogger(__name__)


def _batches(features, batch_size=64):
    for start in range(0, len(features), batch_size):
        yield features[start : start + batch_size]


def _inference(function):
    """`function` traced once per input shape, without autograph."""
    return tf.function(function, reduce_retracing=True, autograph=False)


def features_key(network, settings) -> str:
    """What decides a network's features of an image, hashed (16 hex).

    The network's weights and arithmetic (`update_with_weights` and
    `graph_signature`: padding, strides, ...) and `settings`, a JSON-able
    list of what else changes them (preprocessing, image size, ...). The
    descriptor trainer's cache (`cache_key`) and the RPN trainer's
    (`keras_rmac.training.rpn_features`) are both keyed by it.

    Args:
        network: `keras.Model` computing the features.
        settings: JSON-serialisable list.

    Returns:
        str, 16 hex digits.
    """
    digest = update_with_weights(hashlib.sha256(), network.weights)
    digest.update(graph_signature(network).encode())
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()[:16]


def cache_key(head: FeatureEmbedding, images, config: TrainConfig) -> str:
    """What decides the cached features, hashed (16 hex digits).

    The prefix weights and arithmetic (padding, ...), the preprocessing,
    the cut layer, the image size and resizing, the image list and, when
    images are cropped, their boxes (`features_key` of all that).
    """
    key = [
        head.rmac.preprocessing,
        head.feature_layer,
        config.image_size,
        config.resize,
        images.paths,
    ]
    if images.boxes is not None:  # Cropped images are other features.
        key.append(images.boxes.tolist())
    return features_key(head.prefix, key)


def _compute_features(head, images, config):
    """Runs the prefix over every image, in list order."""
    prefix = _inference(lambda x: head.prefix(x, training=False))
    ds = triplet_data.image_dataset(
        images, None, config.image_size, config.resize
    ).batch(32 if config.resize == "square" else 1)
    blocks, kept = [], []
    progress = progress_bar(
        len(images), config.verbose, unit_name="image", label="features"
    )
    for batch, index in ds:
        blocks.append(np.asarray(prefix(batch)))
        kept.append(index.numpy())
        if progress is not None:
            progress.add(len(index))
    kept = np.concatenate(kept)
    if len(kept) != len(images):
        raise ValueError(
            f"{len(images) - len(kept)} images could not be read while "
            "caching features; run validate_images first."
        )
    return np.concatenate(blocks).astype(np.float32)


def cached_features(
    head: FeatureEmbedding, images, config: TrainConfig, work_dir: str
) -> np.ndarray:
    """Backbone-prefix features of every training image, computed once.

    Images are resized as in training (`image_dataset`, no augmentation).
    The array is stored in `<work_dir>/features-<key>.npy` (see
    `cache_key`), so a later run (or a resumed one) reuses it only when
    the prefix, the images and their size all match.

    Returns:
        float32 array `(N, h, w, c)`, row i for image i.
    """
    path = os.path.join(
        work_dir, f"features-{cache_key(head, images, config)}.npy"
    )
    if os.path.exists(path):
        features = np.load(path, mmap_mode="r")
        if len(features) == len(images):
            logger.info("using cached features %s", path)
            return np.asarray(features)
    start = time.perf_counter()
    features = _compute_features(head, images, config)
    logger.info(
        "cached %s features of %d images in %.1f s (%.0f MB)",
        features.shape[1:],
        len(features),
        time.perf_counter() - start,
        features.nbytes / 2**20,
    )
    atomic_save_npy(path, features)
    return features


def adapt_pca_from_features(head, features, config: TrainConfig) -> int:
    """`adapt_pca` on cached features (same seeded image subset)."""
    if not config.pca_images:
        return 0
    rng = np.random.default_rng([config.seed, 3])
    count = min(config.pca_images, len(features))
    chosen = np.sort(rng.choice(len(features), count, replace=False))
    regions = _inference(lambda x: head.region_vectors(x, training=False))
    used = [0]

    def blocks():
        for block in _batches(features[chosen]):
            out = np.asarray(regions(block))
            out = out.reshape(-1, out.shape[-1])
            used[0] += len(out)
            yield out

    head.rmac.shift_pca.adapt(blocks(), power=head.rmac.whiten_power)
    return used[0]


def feature_extract_fn(head, features):
    """Descriptors from cached features, for `HardNegativeMiner`.

    Args:
        head: `FeatureEmbedding`: cached features -> descriptors.
        features: array `(N, h, w, c)` from `cached_features`.

    Returns:
        A callable `indices -> (descriptors (M, D), indices (M,))`, the
        `extract_fn` of `keras_rmac.data.mining.HardNegativeMiner`.
    """
    extract = _inference(lambda x: head(x, training=False))

    def extract_fn(indices):
        indices = np.asarray(indices, np.int64)
        out = [np.asarray(extract(b)) for b in _batches(features[indices])]
        return np.concatenate(out), indices

    return extract_fn
