"""Cleaning one class: local features, verified pairs, kept images, boxes."""

import collections
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_rmac.data import image_io
from keras_rmac.data import local_features
from keras_rmac.data.cleaning.config import CLASS_TOO_SMALL
from keras_rmac.data.cleaning.config import NO_VERIFIED_MATCH
from keras_rmac.data.cleaning.config import NOT_IN_LARGEST_COMPONENT
from keras_rmac.data.cleaning.config import UNREADABLE
from keras_rmac.data.cleaning.config import Box
from keras_rmac.data.cleaning.config import CleaningConfig
from keras_rmac.data.cleaning.graph import all_pairs
from keras_rmac.data.cleaning.graph import select_images

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ClassResult:
    """Outcome of cleaning one class; images are referred to by index.

    Args:
        label: str. The class.
        num_images: int. Images in the class.
        kept: dict index -> box (x0, y0, x1, y1) of the kept images.
        dropped: list of (index, reason, detail); reason is one of
            `DROP_REASONS`.
        edges: list of (i, j, num_inliers) verified pairs, i < j.
        num_pairs: int. Pairs that went through verification.
        seconds: float. Wall time spent on the class.
    """

    label: str
    num_images: int
    kept: dict[int, Box]
    dropped: list[tuple[int, str, str]]
    edges: list[tuple[int, int, int]]
    num_pairs: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "num_images": self.num_images,
            "kept": [[i, *box] for i, box in sorted(self.kept.items())],
            "dropped": [list(d) for d in self.dropped],
            "edges": [list(e) for e in self.edges],
            "num_pairs": self.num_pairs,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassResult":
        return cls(
            label=data["label"],
            num_images=int(data["num_images"]),
            kept={
                int(r[0]): tuple(int(v) for v in r[1:5]) for r in data["kept"]
            },
            dropped=[(int(i), str(r), str(d)) for i, r, d in data["dropped"]],
            edges=[(int(i), int(j), int(n)) for i, j, n in data["edges"]],
            num_pairs=int(data["num_pairs"]),
            seconds=float(data["seconds"]),
        )


def estimate_box(
    points: np.ndarray,
    image_size: tuple[int, int],
    method: str = "union",
    percentile: float = 5.0,
) -> Box:
    """Box of the inlier keypoints accumulated over an image's pairs.

    Args:
        points: array (N, 2) of (x, y) in original pixel-centre
            coordinates (pixel (r, c) has its centre at x=c, y=r).
        image_size: (height, width).
        method: "union" (all points) or "percentile" (per-axis
            `percentile` and 100 - `percentile` percentiles, with linear
            interpolation). Defaults to "union".
        percentile: float. Defaults to 5.0.

    Returns:
        (x0, y0, x1, y1): integer bounds, clipped to the image, such that
        `image[y0:y1, x0:x1]` holds the pixels of the points (or of the
        percentile corners).
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if method == "union":
        return local_features.inlier_box(points, image_size)
    if method == "percentile":
        low = np.percentile(points, percentile, axis=0)
        high = np.percentile(points, 100.0 - percentile, axis=0)
        return local_features.inlier_box(np.stack([low, high]), image_size)
    raise ValueError(
        f"box method must be 'union' or 'percentile', got {method!r}"
    )


def extract_features(
    image: np.ndarray, config: CleaningConfig
) -> local_features.LocalFeatures:
    """SIFT keypoints and RootSIFT descriptors with `config`'s settings."""
    return local_features.extract_sift(
        image,
        min_side=config.min_side,
        max_side=config.max_side,
        max_keypoints=config.max_keypoints,
        contrast_threshold=config.contrast_threshold,
    )


def verify_pair(
    features_a: local_features.LocalFeatures,
    features_b: local_features.LocalFeatures,
    config: CleaningConfig,
    seed: Any = 0,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Matches two images and verifies the matches with affine RANSAC.

    Args:
        features_a: `LocalFeatures` of the first image.
        features_b: `LocalFeatures` of the second image.
        config: `CleaningConfig`.
        seed: RANSAC seed (anything `np.random.default_rng` accepts).

    Returns:
        (num_inliers, inliers in a, inliers in b): the inlier keypoints as
        (M, 2) arrays in each image's original pixel-centre coordinates.
    """
    empty = np.zeros((0, 2))
    matches = local_features.match_descriptors(
        features_a.descriptors, features_b.descriptors, config.ratio
    )
    if len(matches) < max(3, config.min_inliers):
        return 0, empty, empty  # Too few matches to ever verify.
    src = features_a.keypoints[matches[:, 0]]
    dst = features_b.keypoints[matches[:, 1]]
    settings = local_features.RansacSettings(
        threshold=config.inlier_threshold,
        max_iterations=config.ransac_iterations,
        max_scale=config.max_scale,
        max_anisotropy=config.max_anisotropy,
    )
    result = local_features.ransac_affine(src, dst, settings, seed=seed)
    if result.affine is None:
        return 0, empty, empty
    return (
        result.num_inliers,
        features_a.to_original(src[result.inliers]),
        features_b.to_original(dst[result.inliers]),
    )


def clean_class(
    label: str,
    paths: Sequence[str],
    config: CleaningConfig | None = None,
    pairs: np.ndarray | None = None,
) -> ClassResult:
    """Cleans one class: verifies pairs, keeps the largest component.

    Args:
        label: str. The class label (for messages).
        paths: image files of the class, readable as they are.
        config: `CleaningConfig`. Defaults to `CleaningConfig()`.
        pairs: int array (P, 2) of index pairs to verify, or None for all
            pairs.

    Returns:
        A `ClassResult`.
    """
    config = config or CleaningConfig()
    start = time.perf_counter()
    n = len(paths)
    if pairs is None:
        pairs = all_pairs(n)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(
            f"Class {label!r}: pairs must index its {n} images, got values "
            f"in [{pairs.min()}, {pairs.max()}]"
        )
    features = [None] * n
    details = {}
    for i, path in enumerate(paths):
        try:
            image = image_io.load_image(path)
        except image_io.ImageError as error:
            details[i] = (UNREADABLE, str(error))
            logger.info("Class %r: dropping unreadable %s", label, error)
            continue
        features[i] = extract_features(image, config)
    edges = []
    inliers = collections.defaultdict(list)
    num_pairs = 0
    for i, j in pairs.tolist():
        if i == j or features[i] is None or features[j] is None:
            continue
        i, j = min(i, j), max(i, j)
        num_pairs += 1
        count, points_i, points_j = verify_pair(
            features[i], features[j], config, seed=[config.seed, i, j]
        )
        if count >= config.min_inliers:
            edges.append((i, j, count))
            inliers[i].append(points_i)
            inliers[j].append(points_j)
    kept, reasons = select_images(
        n, edges, config.min_class_size, unreadable=list(details)
    )
    boxes = {}
    for i in kept:
        boxes[i] = estimate_box(
            np.concatenate(inliers[i]),
            features[i].image_size,
            config.box_method,
            config.box_percentile,
        )
    too_small = sum(1 for r in reasons.values() if r == CLASS_TOO_SMALL)
    dropped = []
    for i in sorted(reasons):
        reason = reasons[i]
        detail = details[i][1] if reason == UNREADABLE else ""
        if reason == NOT_IN_LARGEST_COMPONENT:
            detail = "verified only with images outside the largest component"
        elif reason == NO_VERIFIED_MATCH:
            detail = (
                f"{len(features[i])} keypoints, no pair with "
                f">= {config.min_inliers} inliers"
            )
        elif reason == CLASS_TOO_SMALL:
            detail = (
                f"largest component has {too_small} images < "
                f"min_class_size={config.min_class_size}"
            )
        dropped.append((i, reason, detail))
    return ClassResult(
        label=label,
        num_images=n,
        kept=boxes,
        dropped=dropped,
        edges=sorted(edges),
        num_pairs=num_pairs,
        seconds=time.perf_counter() - start,
    )
