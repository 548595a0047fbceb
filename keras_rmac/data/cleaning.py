"""Automatic cleaning of a noisy labelled image list, with bounding boxes.

The first contribution of Gordo et al. (IJCV 2017): a landmark data set
collected by text queries holds many images that do not show the landmark
(interiors, maps, portraits...). Within each class, image pairs are matched
with local features and verified geometrically; the verified pairs form a
graph whose largest connected component is kept as the clean class, and
each kept image gets a bounding box from its verified inlier keypoints.

Per class:

1. Every image is loaded with `keras_rmac.data.image_io.load_image`; an
   unreadable image is dropped with the reason, never fatal.
2. SIFT keypoints with RootSIFT descriptors (`local_features.extract_sift`;
   small images are upsampled so that their shorter side reaches
   `min_side`).
3. Candidate pairs: all pairs, or, when the caller passes an `embed`
   function, each image's `shortlist_k` nearest neighbours by global
   descriptor within the class (the cost is then linear in the class size
   instead of quadratic).
4. Each pair: Lowe ratio test, then affine RANSAC (see `local_features`
   for why affine). The pair is verified when at least `min_inliers`
   distinct inliers agree.
5. The connected components of the verified-pair graph; the largest is
   kept (ties: the one holding the earliest image of the list). Images
   with no verified pair, or in another component, are dropped.
6. A class whose kept component has fewer than `min_class_size` images is
   dropped whole.
7. Box of a kept image: each verified pair gives the box of its inlier
   keypoints in that image (the paper's per-pair estimate); the inliers
   are accumulated over all the image's verified pairs, in original pixel
   coordinates. `box_method="union"` takes the box of all of them, i.e.
   the union of the per-pair boxes; `box_method="percentile"` takes, per
   axis, the `box_percentile`-th and (100 - `box_percentile`)-th
   percentiles, which ignores a few stray inliers (a keypoint verified in
   several pairs counts once per pair). Both give integer pixel bounds
   clipped to the image, such that `image[y0:y1, x0:x1]` holds the pixels
   of the points. (The paper merges the per-pair boxes by propagating them
   through the pairs' affine maps; that refinement is not implemented.)

`clean_dataset` runs classes in parallel worker processes, writes each
finished class atomically to a work directory (`<output>.work/`) so that a
restarted run skips them, shows a progress bar, and writes the clean list
(`path,label,x0,y0,x1,y1`) plus a report (`<output>.report.json` and
`<output>.report.txt`) of what was dropped and why.

Reference:
    - [Gordo et al., End-to-end Learning of Deep Visual Representations for
      Image Retrieval, IJCV 2017](https://arxiv.org/abs/1610.07940)
"""

import collections
import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_rmac.data import local_features

logger = logging.getLogger(__name__)

UNREADABLE = "unreadable"
NO_VERIFIED_MATCH = "no_verified_match"
NOT_IN_LARGEST_COMPONENT = "not_in_largest_component"
CLASS_TOO_SMALL = "class_too_small"
DROP_REASONS = (
    UNREADABLE,
    NO_VERIFIED_MATCH,
    NOT_IN_LARGEST_COMPONENT,
    CLASS_TOO_SMALL,
)

_WORK_FORMAT = 1
CLEAN_HEADER = ("path", "label", "x0", "y0", "x1", "y1")

Box = tuple[int, int, int, int]
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class CleaningConfig:
    """Parameters of the cleaning.

    Args:
        ratio: float. Lowe's ratio test threshold. Defaults to 0.8.
        min_inliers: int. Distinct RANSAC inliers for a pair to count as
            verified. Defaults to 10.
        inlier_threshold: float. RANSAC reprojection threshold, in pixels
            of the working image (whose shorter side is at least
            `min_side`). Defaults to 4.0.
        max_scale: float. Largest scale change an affine match may imply.
            Defaults to 8.0.
        max_anisotropy: float. Largest ratio of the affine map's singular
            values. Defaults to 4.0.
        ransac_iterations: int. Most RANSAC hypotheses per pair. Defaults
            to 1000.
        min_side: int. Images are upsampled so that their shorter side is
            at least this before SIFT. Defaults to 256.
        max_side: int. Images are downsampled so that their longer side is
            at most this. Defaults to 1024.
        max_keypoints: int. Strongest SIFT keypoints kept per image.
            Defaults to 1000.
        contrast_threshold: float. SIFT contrast threshold; low, so that
            weakly textured objects get keypoints too (the strongest
            `max_keypoints` are kept). Defaults to 0.005 (OpenCV's
            default is 0.04).
        min_class_size: int >= 2. Classes whose largest component is
            smaller are dropped. Defaults to 5.
        box_method: str. "union" or "percentile" (see the module
            docstring). Defaults to "union".
        box_percentile: float in [0, 50). For "percentile". Defaults to
            5.0.
        shortlist_k: int or None. With an `embed` function, verify only
            each image's k nearest neighbours within its class; None
            verifies all pairs even when `embed` is given. Defaults to 20.
        seed: int. RANSAC seed (each pair derives its own from it).
            Defaults to 0.
    """

    ratio: float = 0.8
    min_inliers: int = 10
    inlier_threshold: float = 4.0
    max_scale: float = 8.0
    max_anisotropy: float = 4.0
    ransac_iterations: int = 1000
    min_side: int = 256
    max_side: int = 1024
    max_keypoints: int = 1000
    contrast_threshold: float = 0.005
    min_class_size: int = 5
    box_method: str = "union"
    box_percentile: float = 5.0
    shortlist_k: int | None = 20
    seed: int = 0

    def __post_init__(self):
        def check(name, ok):
            if not ok:
                raise ValueError(
                    f"Invalid CleaningConfig.{name}: {getattr(self, name)!r}"
                )

        check("ratio", 0 < self.ratio <= 1)
        check("min_inliers", self.min_inliers >= 3)
        check("inlier_threshold", self.inlier_threshold > 0)
        check("max_scale", self.max_scale >= 1)
        check("max_anisotropy", self.max_anisotropy >= 1)
        check("ransac_iterations", self.ransac_iterations >= 1)
        check("min_side", self.min_side >= 0)
        check("max_side", self.max_side >= 0)
        check("max_keypoints", self.max_keypoints >= 3)
        check("contrast_threshold", self.contrast_threshold > 0)
        check("min_class_size", self.min_class_size >= 2)
        check("box_method", self.box_method in ("union", "percentile"))
        check("box_percentile", 0 <= self.box_percentile < 50)
        check("shortlist_k", self.shortlist_k is None or self.shortlist_k >= 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    """One row of a labelled list: image path and class label."""

    path: str
    label: str


@dataclasses.dataclass(frozen=True)
class CleanImage:
    """One row of a clean list: path, label and box (x0, y0, x1, y1)."""

    path: str
    label: str
    box: Box


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


# ---------------------------------------------------------------- CSV I/O


def _is_header(row: Sequence[str], names: Sequence[str]) -> bool:
    return [c.strip().lower() for c in row[: len(names)]] == list(names)


def read_labelled_list(path: str | os.PathLike) -> list[LabelledImage]:
    """Reads a `path,label` CSV (an optional `path,label` header row).

    Extra columns are ignored, so a clean list can be read back too.

    Args:
        path: the CSV file.

    Returns:
        The rows, in file order.
    """
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for line_number, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if line_number == 1 and _is_header(row, ("path", "label")):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(
                    f"{path}:{line_number}: expected `path,label`, got "
                    f"{row!r}. Fix or remove that line."
                )
            rows.append(LabelledImage(row[0].strip(), row[1].strip()))
    return rows


def read_clean_list(path: str | os.PathLike) -> list[CleanImage]:
    """Reads a `path,label,x0,y0,x1,y1` CSV written by `write_clean_list`.

    Args:
        path: the CSV file.

    Returns:
        The rows, in file order.
    """
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for line_number, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if line_number == 1 and _is_header(row, CLEAN_HEADER):
                continue
            try:
                box = tuple(int(v) for v in row[2:6])
                if len(row) < 6 or len(box) != 4:
                    raise ValueError("too few columns")
            except ValueError as error:
                raise ValueError(
                    f"{path}:{line_number}: expected "
                    f"`{','.join(CLEAN_HEADER)}` with integer box, got "
                    f"{row!r} ({error})"
                ) from error
            rows.append(CleanImage(row[0], row[1], box))
    return rows


def _atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` via a temporary file and `os.replace`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=".tmp-", suffix=os.path.basename(path)
    )
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_clean_list(
    path: str | os.PathLike, rows: Iterable[CleanImage]
) -> None:
    """Writes a clean list CSV with a `path,label,x0,y0,x1,y1` header.

    The file is written atomically: readers never see a partial file.

    Args:
        path: the CSV file to (over)write.
        rows: the `CleanImage` rows.
    """
    lines = []

    class _Sink:
        def write(self, text):
            lines.append(text)

    writer = csv.writer(_Sink(), lineterminator="\n")
    writer.writerow(CLEAN_HEADER)
    for row in rows:
        writer.writerow([row.path, row.label, *row.box])
    _atomic_write_text(path, "".join(lines))


# ------------------------------------------------------------- graph step


def connected_components(
    num_nodes: int, edges: Iterable[tuple[int, int]]
) -> list[list[int]]:
    """Connected components of an undirected graph.

    Args:
        num_nodes: int. Nodes are 0..num_nodes-1.
        edges: (i, j) pairs.

    Returns:
        Components as sorted node lists, largest first; ties are ordered
        by their smallest node.
    """
    parent = list(range(num_nodes))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in edges:
        if not (0 <= i < num_nodes and 0 <= j < num_nodes):
            raise ValueError(
                f"Edge {(i, j)} is out of range for {num_nodes} nodes"
            )
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    groups = collections.defaultdict(list)
    for node in range(num_nodes):
        groups[find(node)].append(node)
    return sorted(groups.values(), key=lambda c: (-len(c), c[0]))


def select_images(
    num_images: int,
    edges: Sequence[tuple[int, int, int]],
    min_class_size: int,
    unreadable: Iterable[int] = (),
) -> tuple[list[int], dict[int, str]]:
    """The graph step: keeps the largest component of verified pairs.

    Args:
        num_images: int. Images of the class, 0..num_images-1.
        edges: verified pairs (i, j, num_inliers).
        min_class_size: int. Fewer kept images drop the whole class.
        unreadable: indices already dropped as unreadable (they have no
            edges); they keep that reason.

    Returns:
        (kept indices sorted, {dropped index: reason}).
    """
    unreadable = set(unreadable)
    components = connected_components(num_images, [e[:2] for e in edges])
    touched = {i for e in edges for i in e[:2]}
    largest = components[0] if components and len(components[0]) > 1 else []
    reasons = {}
    for i in range(num_images):
        if i in unreadable:
            reasons[i] = UNREADABLE
        elif i not in touched:
            reasons[i] = NO_VERIFIED_MATCH
    in_largest = set(largest)
    for i in touched - in_largest:
        reasons[i] = NOT_IN_LARGEST_COMPONENT
    if len(largest) < min_class_size:
        for i in largest:
            reasons[i] = CLASS_TOO_SMALL
        return [], reasons
    return sorted(largest), reasons


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


# ------------------------------------------------------------- one class


def _load_image(path: str) -> np.ndarray:
    from keras_rmac.data.image_io import load_image

    return load_image(path)


def _image_error() -> type[Exception]:
    from keras_rmac.data.image_io import ImageError

    return ImageError


def all_pairs(num_images: int) -> np.ndarray:
    """Every (i, j) with i < j, shape (P, 2)."""
    i, j = np.triu_indices(num_images, k=1)
    return np.stack([i, j], axis=1).astype(np.int64)


def shortlist_pairs(
    descriptors: np.ndarray, k: int, block_size: int = 1024
) -> np.ndarray:
    """Pairs (i, j), i < j, where j is among i's k nearest or vice versa.

    Similarity is the dot product of L2-normalised global descriptors;
    ties go to the lower index. Rows that are all zeros or not finite
    (images the caller could not describe) are paired with every other
    image, so that they are still verified.

    Args:
        descriptors: array (N, D).
        k: int >= 1. Neighbours per image.
        block_size: int. Rows of the similarity matrix computed at once.

    Returns:
        int64 array (P, 2), sorted, unique.
    """
    x = np.asarray(descriptors, np.float64)
    if x.ndim != 2:
        raise ValueError(f"descriptors must be (N, D), got shape {x.shape}")
    n = len(x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < 2:
        return np.zeros((0, 2), np.int64)
    if k >= n - 1:
        return all_pairs(n)
    bad = ~np.all(np.isfinite(x), axis=1)
    x = np.where(bad[:, None], 0.0, x)
    norms = np.linalg.norm(x, axis=1)
    bad |= norms == 0
    x = x / np.maximum(norms, 1e-12)[:, None]
    pairs = []
    good = np.flatnonzero(~bad)
    for start in range(0, len(good), block_size):
        rows = good[start : start + block_size]
        sims = x[rows] @ x[good].T
        sims[np.arange(len(rows)), start + np.arange(len(rows))] = -np.inf
        kk = min(k, len(good) - 1)
        if kk < 1:
            break
        # Stable order: highest similarity first, then lowest index.
        order = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        for r, row in enumerate(rows):
            for col in order[r]:
                pairs.append((row, good[col]))
    for b in np.flatnonzero(bad):
        pairs.extend((b, other) for other in range(n) if other != b)
    if not pairs:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(np.asarray(pairs, np.int64), axis=1)
    return np.unique(pairs, axis=0)


def _extract(image: np.ndarray, config: CleaningConfig):
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
    result = local_features.ransac_affine(
        src,
        dst,
        threshold=config.inlier_threshold,
        max_iterations=config.ransac_iterations,
        max_scale=config.max_scale,
        max_anisotropy=config.max_anisotropy,
        seed=seed,
    )
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
    image_error = _image_error()  # imports image_io: not timed
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
            image = _load_image(path)
        except image_error as error:
            details[i] = (UNREADABLE, str(error))
            logger.info("Class %r: dropping unreadable %s", label, error)
            continue
        features[i] = _extract(image, config)
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


# ---------------------------------------------------------- whole dataset


def _work_file(work_dir: str, label: str) -> str:
    """A file-system-safe, collision-free file name for a class."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", label)[:60]
    digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:10]
    return os.path.join(work_dir, f"{safe}-{digest}.json")


def _fingerprint(
    label: str, paths: Sequence[str], config: CleaningConfig, shortlist: bool
) -> str:
    payload = json.dumps(
        {
            "format": _WORK_FORMAT,
            "label": label,
            "paths": list(paths),
            "config": config.to_dict(),
            "shortlist": shortlist,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _load_finished(path: str, fingerprint: str) -> ClassResult | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("fingerprint") != fingerprint:
            logger.info("%s is from other inputs or settings; redoing", path)
            return None
        return ClassResult.from_dict(data["result"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("Ignoring unreadable work file %s (%s)", path, error)
        return None


def _run_class_task(task: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point: cleans one class and saves it to its work file."""
    config = CleaningConfig(**task["config"])
    result = clean_class(task["label"], task["paths"], config, task["pairs"])
    payload = {"fingerprint": task["fingerprint"], "result": result.to_dict()}
    _atomic_write_text(task["work_file"], json.dumps(payload))
    return payload["result"]


def _init_worker() -> None:
    """Worker set-up: one OpenCV thread, image decoding imported once."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    _image_error()


@contextlib.contextmanager
def _one_blas_thread():
    """Spawned workers start with one BLAS/OpenMP thread each.

    With several worker processes, multi-threaded BLAS in each only
    oversubscribes the cores (and is much slower when they are busy).
    Variables the user set are left alone.
    """
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    added = [n for n in names if n not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _embed_class(embed: Embed, label: str, paths: Sequence[str]) -> np.ndarray:
    """Global descriptors of a class; rows that failed are NaN."""
    try:
        out = np.asarray(embed(list(paths)), np.float64)
        if out.ndim == 2 and len(out) == len(paths):
            return out
        raise ValueError(
            f"embed returned shape {out.shape} for {len(paths)} paths; "
            "expected (N, D)"
        )
    except Exception as error:  # noqa: BLE001 - retried image by image.
        logger.warning(
            "Class %r: embed failed on the batch (%s); retrying image by image",
            label,
            error,
        )
    rows = []
    for path in paths:
        try:
            rows.append(np.asarray(embed([path]), np.float64).reshape(-1))
        except Exception as error:  # noqa: BLE001 - image is verified anyway.
            logger.warning("embed failed on %s (%s)", path, error)
            rows.append(None)
    dim = next((len(r) for r in rows if r is not None), 1)
    return np.stack([np.full(dim, np.nan) if r is None else r for r in rows])


@dataclasses.dataclass
class CleaningReport:
    """What `clean_dataset` kept and dropped, and why.

    Args:
        output_path: str. The clean list.
        num_images: int. Input images.
        num_kept: int. Images in the clean list.
        num_classes: int. Input classes.
        num_classes_kept: int. Classes in the clean list.
        dropped_counts: dict reason -> number of images.
        dropped: list of dicts (path, label, reason, detail).
        classes: list of per-class dicts (label, num_images, num_kept,
            num_pairs, num_verified_pairs, seconds, resumed).
        seconds: float. Wall time of the run.
        config: dict. The `CleaningConfig` used.
    """

    output_path: str
    num_images: int
    num_kept: int
    num_classes: int
    num_classes_kept: int
    dropped_counts: dict[str, int]
    dropped: list[dict[str, str]]
    classes: list[dict[str, Any]]
    seconds: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self, max_listed: int = 20) -> str:
        """A short human-readable account of the run."""
        computed = [c["seconds"] for c in self.classes if not c["resumed"]]
        lines = [
            f"Clean list: {self.output_path}",
            f"Images: {self.num_images} in, {self.num_kept} kept, "
            f"{self.num_images - self.num_kept} dropped",
            f"Classes: {self.num_classes} in, {self.num_classes_kept} kept",
        ]
        for reason in DROP_REASONS:
            lines.append(
                f"  dropped {reason}: {self.dropped_counts.get(reason, 0)}"
            )
        resumed = sum(1 for c in self.classes if c["resumed"])
        lines.append(
            f"Classes computed: {len(computed)} (resumed from work dir: "
            f"{resumed}); median {_median(computed):.2f} s per class; "
            f"wall time {self.seconds:.1f} s"
        )
        if self.dropped:
            lines.append(f"First dropped images (of {len(self.dropped)}):")
            for d in self.dropped[:max_listed]:
                detail = f" ({d['detail']})" if d["detail"] else ""
                lines.append(
                    f"  {d['path']} [{d['label']}]: {d['reason']}{detail}"
                )
        return "\n".join(lines) + "\n"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _progbar(target: int, verbose: int):
    if not verbose:
        return None
    import keras

    return keras.utils.Progbar(target, verbose=verbose, unit_name="class")


def clean_dataset(
    items: Sequence[LabelledImage] | Sequence[tuple[str, str]],
    output_path: str | os.PathLike,
    *,
    config: CleaningConfig | None = None,
    root: str | os.PathLike | None = None,
    embed: Embed | None = None,
    num_workers: int = 1,
    work_dir: str | os.PathLike | None = None,
    verbose: int = 1,
) -> CleaningReport:
    """Cleans a labelled image list and writes `path,label,x0,y0,x1,y1`.

    Classes are processed independently, in `num_workers` processes. Each
    finished class is written atomically to `work_dir` with a fingerprint
    of its image list and of `config`; a restarted run reuses those and
    only computes the others. The clean list keeps the input's class order
    and image order. Absolute paths are written as given; relative ones
    (resolved against `root`) are written relative to the clean list's
    own folder, which is how `keras_rmac.data.triplets.read_image_list`
    (and so `keras-rmac train --train-list`) resolves them: the output
    feeds training wherever it is written. Next to the input list, the
    path strings are unchanged.

    Args:
        items: (path, label) rows or `LabelledImage`s.
        output_path: the clean list CSV to write. The report goes to
            `<output_path>.report.json` and `<output_path>.report.txt`.
        config: `CleaningConfig`. Defaults to `CleaningConfig()`.
        root: directory that relative paths are relative to. Defaults to
            the current directory.
        embed: optional callable mapping a list of image paths (as
            resolved against `root`) to an (N, D) array of L2-normalised
            global descriptors, e.g. an R-MAC model's extractor. It runs in
            this process, before the workers start. With it, only each
            image's `config.shortlist_k` nearest neighbours are verified.
            It is not part of the resume fingerprint: clear the work
            directory after changing it.
        num_workers: int. Worker processes; 1 runs in this process.
            Defaults to 1.
        work_dir: directory for per-class results. Defaults to
            `<output_path>.work`.
        verbose: int. 0 silent, 1 progress bar. Defaults to 1.

    Returns:
        A `CleaningReport`.

    Example:

    >>> rows = read_labelled_list("noisy.csv")
    >>> report = clean_dataset(rows, "clean.csv", num_workers=4)
    >>> print(report.summary())
    """
    config = config or CleaningConfig()
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    local_features.require_cv2()
    start = time.perf_counter()
    output_path = os.fspath(output_path)
    work_dir = os.fspath(work_dir) if work_dir else output_path + ".work"
    os.makedirs(work_dir, exist_ok=True)
    root = os.fspath(root) if root is not None else None

    classes: dict[str, list[str]] = {}
    for item in items:
        path, label = (
            (item.path, item.label) if isinstance(item, LabelledImage) else item
        )
        classes.setdefault(str(label), []).append(str(path))

    def resolve(path):
        if root is None or os.path.isabs(path):
            return path
        return os.path.join(root, path)

    output_folder = os.path.dirname(os.path.abspath(output_path))

    def written(path):
        # Relative to the clean list's folder, where readers resolve it.
        if os.path.isabs(path):
            return path
        return os.path.relpath(os.path.abspath(resolve(path)), output_folder)

    use_shortlist = embed is not None and config.shortlist_k is not None
    results: dict[str, ClassResult] = {}
    resumed = set()
    tasks = []
    for label, paths in classes.items():
        fingerprint = _fingerprint(label, paths, config, use_shortlist)
        work_file = _work_file(work_dir, label)
        finished = _load_finished(work_file, fingerprint)
        if finished is not None:
            results[label] = finished
            resumed.add(label)
            continue
        tasks.append(
            {
                "label": label,
                "paths": [resolve(p) for p in paths],
                "config": config.to_dict(),
                "pairs": None,
                "fingerprint": fingerprint,
                "work_file": work_file,
            }
        )
    if resumed:
        logger.info(
            "Resuming: %d of %d classes already done in %s",
            len(resumed),
            len(classes),
            work_dir,
        )
    if use_shortlist:
        for task in tasks:
            descriptors = _embed_class(embed, task["label"], task["paths"])
            task["pairs"] = shortlist_pairs(descriptors, config.shortlist_k)
    # Largest classes first: better balance across workers.
    tasks.sort(key=lambda t: -len(t["paths"]))

    progbar = _progbar(len(classes), verbose)
    done = len(resumed)
    if progbar is not None:
        progbar.update(done)
    failures = {}

    def collect(label, result_dict):
        nonlocal done
        results[label] = ClassResult.from_dict(result_dict)
        done += 1
        if progbar is not None:
            progbar.update(done)

    if num_workers == 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                collect(task["label"], _run_class_task(task))
            except Exception as error:  # noqa: BLE001 - reported below.
                logger.exception("Class %r failed", task["label"])
                failures[task["label"]] = repr(error)
    else:
        context = multiprocessing.get_context("spawn")
        with (
            _one_blas_thread(),
            context.Pool(num_workers, initializer=_init_worker) as pool,
        ):
            pending = {
                task["label"]: pool.apply_async(_run_class_task, (task,))
                for task in tasks
            }
            while pending:
                ready = [k for k, v in pending.items() if v.ready()]
                if not ready:
                    time.sleep(0.05)
                    continue
                for label in ready:
                    async_result = pending.pop(label)
                    try:
                        collect(label, async_result.get())
                    except Exception as error:  # noqa: BLE001
                        logger.error("Class %r failed: %r", label, error)
                        failures[label] = repr(error)
    if failures:
        raise RuntimeError(
            f"{len(failures)} class(es) failed: {failures}. The other "
            f"classes are saved in {work_dir}; fix the cause and rerun to "
            "resume."
        )

    kept_rows, dropped, class_stats = [], [], []
    counts = collections.Counter()
    for label, paths in classes.items():
        result = results[label]
        for i, box in sorted(result.kept.items()):
            kept_rows.append(CleanImage(written(paths[i]), label, box))
        for i, reason, detail in result.dropped:
            counts[reason] += 1
            dropped.append(
                {
                    "path": paths[i],
                    "label": label,
                    "reason": reason,
                    "detail": detail,
                }
            )
        class_stats.append(
            {
                "label": label,
                "num_images": result.num_images,
                "num_kept": len(result.kept),
                "num_pairs": result.num_pairs,
                "num_verified_pairs": len(result.edges),
                "seconds": result.seconds,
                "resumed": label in resumed,
            }
        )
    write_clean_list(output_path, kept_rows)
    report = CleaningReport(
        output_path=output_path,
        num_images=sum(len(p) for p in classes.values()),
        num_kept=len(kept_rows),
        num_classes=len(classes),
        num_classes_kept=sum(1 for c in class_stats if c["num_kept"]),
        dropped_counts={r: counts.get(r, 0) for r in DROP_REASONS},
        dropped=dropped,
        classes=class_stats,
        seconds=time.perf_counter() - start,
        config=config.to_dict(),
    )
    _atomic_write_text(
        output_path + ".report.json", json.dumps(report.to_dict(), indent=1)
    )
    _atomic_write_text(output_path + ".report.txt", report.summary())
    logger.info("%s", report.summary(max_listed=0))
    return report


def clean_list(
    list_path: str | os.PathLike,
    output_path: str | os.PathLike,
    **kwargs,
) -> CleaningReport:
    """Reads a `path,label` CSV and runs `clean_dataset` on it.

    Relative image paths are taken relative to the CSV's directory unless
    `root` is given.

    Args:
        list_path: the input CSV.
        output_path: the clean list CSV to write.
        **kwargs: passed to `clean_dataset`.

    Returns:
        A `CleaningReport`.
    """
    items = read_labelled_list(list_path)
    kwargs.setdefault("root", os.path.dirname(os.path.abspath(list_path)))
    return clean_dataset(items, output_path, **kwargs)
