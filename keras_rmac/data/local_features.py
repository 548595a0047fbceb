"""Local features and geometric verification for dataset cleaning.

SIFT keypoints (OpenCV, an optional dependency), Lowe's ratio-test matching
and an affine RANSAC written in NumPy. Used by `keras_rmac.data.cleaning`
to decide whether two images show the same object or place, and where.

Why affine and not a homography: the cleaning step of Gordo et al. verifies
matches "with an affine transformation model". An affine map has 6 degrees
of freedom and a 3-point minimal sample, so RANSAC needs far fewer draws
than the 4-point, 8-degree-of-freedom homography and stays well-posed with
the few dozen tentative matches that small or weakly textured images give;
the perspective terms a homography adds only pay off on large planar
surfaces seen at a slant, and they make it easier for unrelated matches to
agree on a wildly distorted model. The model is further constrained to be
plausible (no mirror image, bounded scale change and anisotropy), which
rejects the degenerate fits that random matches produce.

Reference:
    - [Gordo et al., End-to-end Learning of Deep Visual Representations for
      Image Retrieval, IJCV 2017](https://arxiv.org/abs/1610.07940)
    - [Lowe, Distinctive Image Features from Scale-Invariant Keypoints,
      IJCV 2004](https://doi.org/10.1023/B:VISI.0000029664.99615.94)
    - [Arandjelovic & Zisserman, Three things everyone should know to
      improve object retrieval, CVPR 2012](https://doi.org/10.1109/CVPR.2012.6248018)
"""

import dataclasses
import math
from types import ModuleType

import numpy as np

_INSTALL_HINT = (
    "Dataset cleaning needs OpenCV for SIFT keypoints. Install it with "
    "`pip install keras-rmac[clean]` (or `pip install "
    "opencv-python-headless`)."
)


def require_cv2() -> ModuleType:
    """Imports OpenCV, or raises an `ImportError` saying how to install it.

    Returns:
        The `cv2` module.
    """
    try:
        import cv2
    except ImportError as error:
        raise ImportError(f"{_INSTALL_HINT} ({error})") from error
    if not hasattr(cv2, "SIFT_create"):
        raise ImportError(
            f"OpenCV {getattr(cv2, '__version__', '?')} has no SIFT_create "
            f"(OpenCV >= 4.4 is needed). {_INSTALL_HINT}"
        )
    return cv2


@dataclasses.dataclass(frozen=True)
class LocalFeatures:
    """Keypoints and descriptors of one image.

    Keypoints are detected on a resized working copy of the image (see
    `extract_sift`); their coordinates are in that working copy, in the
    OpenCV convention where the centre of pixel (row r, column c) is at
    (x=c, y=r). `scale` converts them back to the original image.

    Args:
        keypoints: float32 array (K, 2). (x, y) positions in the working
            image.
        descriptors: float32 array (K, 128). RootSIFT descriptors, unit
            L2 norm.
        image_size: (height, width) of the original image.
        scale: (sx, sy), working size divided by original size per axis.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]
    scale: tuple[float, float]

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Maps (x, y) working-image positions to the original image.

        Inverts `cv2.resize`'s mapping x_work = (x + 0.5) * s - 0.5.

        Args:
            points: array (N, 2) of (x, y) in the working image.

        Returns:
            float64 array (N, 2) of (x, y) in original pixel-centre
            coordinates.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        scale = np.asarray(self.scale, dtype=np.float64)
        return (points + 0.5) / scale - 0.5


def working_size(
    height: int, width: int, min_side: int, max_side: int
) -> tuple[int, int]:
    """Size at which keypoints are detected.

    Images whose shorter side is below `min_side` are upsampled to it
    (SIFT finds few keypoints on thumbnails such as 128x128 COIL views);
    images whose longer side exceeds `max_side` are downsampled to it
    (bounding the cost on multi-megapixel photos). The aspect ratio is
    kept; `max_side` wins when both apply.

    Args:
        height: int. Original height.
        width: int. Original width.
        min_side: int. Target for the shorter side, or 0 for no upsampling.
        max_side: int. Limit for the longer side, or 0 for no limit.

    Returns:
        (height, width) of the working image.
    """
    if height < 1 or width < 1:
        raise ValueError(f"Image size must be positive, got {(height, width)}")
    factor = 1.0
    if min_side and min(height, width) < min_side:
        factor = min_side / min(height, width)
    if max_side and max(height, width) * factor > max_side:
        factor = max_side / max(height, width)
    return (
        max(1, int(round(height * factor))),
        max(1, int(round(width * factor))),
    )


def extract_sift(
    image: np.ndarray,
    *,
    min_side: int = 256,
    max_side: int = 1024,
    max_keypoints: int = 1000,
    contrast_threshold: float = 0.005,
) -> LocalFeatures:
    """Detects SIFT keypoints and RootSIFT descriptors on one image.

    Args:
        image: uint8 array (H, W, 3) RGB or (H, W) gray.
        min_side: int. Upsample so that the shorter side is at least this.
            Defaults to 256.
        max_side: int. Downsample so that the longer side is at most this.
            Defaults to 1024.
        max_keypoints: int. Keep at most this many (strongest) keypoints.
            Defaults to 1000.
        contrast_threshold: float. SIFT's contrast threshold; lower finds
            more keypoints on weakly textured objects. Defaults to 0.005
            (OpenCV's default is 0.04).

    Returns:
        A `LocalFeatures`.
    """
    cv2 = require_cv2()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    elif image.ndim == 2:
        gray = np.ascontiguousarray(image)
    else:
        raise ValueError(
            f"Expected an (H, W, 3) RGB or (H, W) gray image, got shape "
            f"{image.shape}"
        )
    if gray.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 image, got dtype {gray.dtype}")
    height, width = gray.shape
    work_h, work_w = working_size(height, width, min_side, max_side)
    if (work_h, work_w) != (height, width):
        shrink = work_h < height
        gray = cv2.resize(
            gray,
            (work_w, work_h),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC,
        )
    sift = cv2.SIFT_create(
        nfeatures=max_keypoints, contrastThreshold=contrast_threshold
    )
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None or len(keypoints) == 0:
        points = np.zeros((0, 2), np.float32)
        descriptors = np.zeros((0, 128), np.float32)
    else:
        points = np.array([kp.pt for kp in keypoints], dtype=np.float32)
        descriptors = root_sift(descriptors)
        if len(points) > max_keypoints:  # OpenCV may keep ties.
            points = points[:max_keypoints]
            descriptors = descriptors[:max_keypoints]
    return LocalFeatures(
        keypoints=points,
        descriptors=descriptors,
        image_size=(height, width),
        scale=(work_w / width, work_h / height),
    )


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise, then element-wise square root.

    Comparing RootSIFT vectors with the Euclidean distance is comparing
    the original SIFT histograms with the Hellinger kernel. The result has
    unit L2 norm (zero rows stay zero).

    Args:
        descriptors: array (K, D) of non-negative SIFT descriptors.

    Returns:
        float32 array (K, D).
    """
    descriptors = np.maximum(np.asarray(descriptors, np.float32), 0.0)
    l1 = descriptors.sum(axis=1, keepdims=True)
    return np.sqrt(descriptors / np.maximum(l1, 1e-12)).astype(np.float32)


def match_descriptors(
    descriptors_a: np.ndarray,
    descriptors_b: np.ndarray,
    ratio: float = 0.8,
) -> np.ndarray:
    """Tentative matches with Lowe's first-to-second nearest neighbour test.

    For each descriptor of `a`, its nearest neighbour in `b` is a match if
    its Euclidean distance is below `ratio` times the distance to the
    second nearest. Matches are then made one-to-one: when several `a`
    descriptors pick the same `b` descriptor, only the closest is kept.

    Args:
        descriptors_a: float array (Ka, D), unit L2 rows.
        descriptors_b: float array (Kb, D), unit L2 rows.
        ratio: float in (0, 1]. Lowe's ratio. Defaults to 0.8.

    Returns:
        int64 array (M, 2) of (index in a, index in b), sorted by index
        in a.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    a = np.asarray(descriptors_a, np.float32)
    b = np.asarray(descriptors_b, np.float32)
    if len(a) == 0 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    # Unit vectors: |a - b|^2 = 2 - 2 a.b, so the nearest neighbours are
    # the largest dot products.
    sims = a @ b.T
    rows = np.arange(len(a))
    nearest = np.argmax(sims, axis=1)
    s_first = sims[rows, nearest]
    sims[rows, nearest] = -np.inf
    s_second = sims.max(axis=1)
    d1 = np.sqrt(np.maximum(2.0 - 2.0 * s_first, 0.0))
    d2 = np.sqrt(np.maximum(2.0 - 2.0 * s_second, 0.0))
    keep = d1 < ratio * d2
    index_a = rows[keep]
    index_b = nearest[keep]
    dist = d1[keep]
    # One-to-one: the closest a wins each b.
    order = np.lexsort((dist, index_b))
    index_a, index_b = index_a[order], index_b[order]
    first = np.ones(len(index_b), bool)
    first[1:] = index_b[1:] != index_b[:-1]
    pairs = np.stack([index_a[first], index_b[first]], axis=1)
    return pairs[np.argsort(pairs[:, 0], kind="stable")].astype(np.int64)


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares affine map from `src` to `dst` points.

    Args:
        src: array (N, 2), N >= 3.
        dst: array (N, 2).

    Returns:
        float64 array (2, 3) `A` with dst ~ src @ A[:, :2].T + A[:, 2],
        or None when the points are (near) collinear.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if len(src) < 3:
        return None
    design = np.concatenate([src, np.ones((len(src), 1))], axis=1)
    solution, _, rank, _ = np.linalg.lstsq(design, dst, rcond=None)
    if rank < 3:
        return None
    return solution.T


def affine_is_plausible(
    affine: np.ndarray, max_scale: float, max_anisotropy: float
) -> bool:
    """Whether an affine map could relate two photos of one scene.

    Rejects mirror images (negative determinant), isotropic scale changes
    beyond `max_scale` either way, and anisotropy (ratio of the singular
    values of the linear part) beyond `max_anisotropy`.

    Args:
        affine: array (2, 3).
        max_scale: float >= 1.
        max_anisotropy: float >= 1.

    Returns:
        bool.
    """
    linear = np.asarray(affine, np.float64)[:, :2]
    if not np.all(np.isfinite(linear)) or np.linalg.det(linear) <= 0:
        return False
    s = np.linalg.svd(linear, compute_uv=False)
    if s[1] <= 0:
        return False
    scale = math.sqrt(s[0] * s[1])
    return bool(
        1.0 / max_scale <= scale <= max_scale and s[0] / s[1] <= max_anisotropy
    )


def _plausible_batch(
    linear: np.ndarray, max_scale: float, max_anisotropy: float
) -> np.ndarray:
    """Vectorised `affine_is_plausible` on linear parts (B, 2, 2)."""
    a, b = linear[:, 0, 0], linear[:, 0, 1]
    c, d = linear[:, 1, 0], linear[:, 1, 1]
    det = a * d - b * c
    # Singular values of a 2x2 matrix from its Frobenius norm and det.
    frob = a * a + b * b + c * c + d * d
    disc = np.sqrt(np.maximum(frob * frob - 4.0 * det * det, 0.0))
    s1 = np.sqrt(np.maximum((frob + disc) / 2.0, 0.0))
    s2 = np.sqrt(np.maximum((frob - disc) / 2.0, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(np.abs(det))
        ok = (det > 0) & (s2 > 0)
        ok &= (scale >= 1.0 / max_scale) & (scale <= max_scale)
        ok &= s1 <= max_anisotropy * s2
    return ok & np.isfinite(det)


def _unique_count(points: np.ndarray) -> int:
    """Number of distinct positions, to the nearest pixel."""
    if len(points) == 0:
        return 0
    cells = np.round(points).astype(np.int64)
    cells -= cells.min(axis=0)
    return len(
        np.unique(cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1])
    )


@dataclasses.dataclass(frozen=True)
class Verification:
    """Result of `ransac_affine`.

    Args:
        affine: float64 array (2, 3) mapping `src` to `dst`, or None.
        inliers: bool array (N,) over the input correspondences.
        num_inliers: int. Inliers at distinct `src` and `dst` positions
            (SIFT can put several keypoints, with different orientations,
            at one position; they count once).
    """

    affine: np.ndarray | None
    inliers: np.ndarray
    num_inliers: int


@dataclasses.dataclass(frozen=True)
class RansacSettings:
    """Settings of `ransac_affine`.

    Args:
        threshold: float. Inlier if the reprojection error is at most this
            (same unit as the points). Defaults to 4.0.
        max_iterations: int. Most hypotheses to draw. Defaults to 1000.
        confidence: float. Stop when the probability of having drawn an
            all-inlier sample reaches this. Defaults to 0.999.
        max_scale: float. See `affine_is_plausible`. Defaults to 8.0.
        max_anisotropy: float. See `affine_is_plausible`. Defaults to 4.0.
        refine_steps: int. Least-squares refits. Defaults to 3.
        batch_size: int. Hypotheses scored at once. Defaults to 128.
    """

    threshold: float = 4.0
    max_iterations: int = 1000
    confidence: float = 0.999
    max_scale: float = 8.0
    max_anisotropy: float = 4.0
    refine_steps: int = 3
    batch_size: int = 128

    def __post_init__(self):
        if self.threshold <= 0:
            raise ValueError(
                f"threshold must be positive, got {self.threshold}"
            )


def ransac_affine(
    src: np.ndarray,
    dst: np.ndarray,
    settings: RansacSettings | None = None,
    *,
    seed: int | np.random.Generator | None = 0,
) -> Verification:
    """Robustly fits an affine map to point correspondences with RANSAC.

    Hypotheses come from random 3-point samples, drawn in batches and
    scored together; implausible maps (see `affine_is_plausible`) are
    discarded before scoring. The best hypothesis (most inliers, then
    lowest truncated squared error) is refined by least squares on its
    inliers, a few times, keeping each refit only if it does not lose
    inliers. Sampling stops early once `settings.confidence` is reached
    for the current inlier ratio.

    Args:
        src: array (N, 2) of (x, y) points in the first image.
        dst: array (N, 2) of the corresponding points in the second.
        settings: `RansacSettings`. Defaults to `RansacSettings()`.
        seed: int, Generator or None. Random source. Defaults to 0.

    Returns:
        A `Verification`; `affine` is None and no point is an inlier when
        no plausible model was found (including N < 3).

    Example:

    >>> import numpy as np
    >>> src = np.random.default_rng(0).uniform(0, 100, (20, 2))
    >>> result = ransac_affine(src, src + 5.0, RansacSettings(threshold=1.0))
    >>> # (+ 0.0 turns a rounded -0.0 into 0.0, whatever the BLAS.)
    >>> result.num_inliers, (np.round(result.affine, 6) + 0.0).tolist()
    (20, [[1.0, 0.0, 5.0], [0.0, 1.0, 5.0]])
    """
    settings = settings or RansacSettings()
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if len(src) != len(dst):
        raise ValueError(
            f"src and dst must have the same length, got {len(src)} and "
            f"{len(dst)}"
        )
    n = len(src)
    none = Verification(None, np.zeros(n, bool), 0)
    if n < 3:
        return none
    src_h = np.concatenate([src, np.ones((n, 1))], axis=1)  # (N, 3)
    rng = np.random.default_rng(seed)
    best_affine = _best_hypothesis(src_h, dst, settings, rng)
    if best_affine is None:
        return none
    best_affine, inliers = _refine(src_h, dst, best_affine, settings)
    count = min(_unique_count(src[inliers]), _unique_count(dst[inliers]))
    return Verification(best_affine, inliers, count)


def _best_hypothesis(src_h, dst, settings, rng) -> np.ndarray | None:
    """The sampling loop: the best plausible affine map of 3-point samples."""
    n = len(src_h)
    thr2 = float(settings.threshold) ** 2
    best_affine, best_count, best_cost = None, 0, np.inf
    needed = max_iterations = settings.max_iterations
    drawn = 0
    while drawn < min(needed, max_iterations):
        batch = min(settings.batch_size, max_iterations - drawn)
        drawn += batch
        # Three distinct indices per hypothesis.
        affine = _hypotheses(src_h, dst, _three_distinct(rng, n, batch))
        if affine is None:
            continue
        ok = _plausible_batch(
            affine[:, :, :2], settings.max_scale, settings.max_anisotropy
        )
        if not ok.any():
            continue
        affine = affine[ok]
        predicted = affine @ src_h.T  # (B, 2, N)
        err2 = (predicted[:, 0] - dst[:, 0]) ** 2 + (
            predicted[:, 1] - dst[:, 1]
        ) ** 2  # (B, N)
        inlier = err2 <= thr2
        counts = inlier.sum(axis=1)
        cost = np.where(inlier, err2, thr2).sum(axis=1)
        top = np.lexsort((cost, -counts))[0]
        if counts[top] > best_count or (
            counts[top] == best_count and cost[top] < best_cost
        ):
            best_affine = affine[top]
            best_count, best_cost = int(counts[top]), float(cost[top])
            needed = _needed_iterations(best_count / n, settings.confidence)
    return best_affine


def _hypotheses(src_h, dst, sample) -> np.ndarray | None:
    """Affine maps (B, 2, 3) through each non-degenerate 3-point sample."""
    design = src_h[sample]  # (B, 3, 3)
    target = dst[sample]  # (B, 3, 2)
    ok = np.abs(np.linalg.det(design)) > 1e-6
    if not ok.any():
        return None
    return np.swapaxes(np.linalg.solve(design[ok], target[ok]), 1, 2)


def _needed_iterations(ratio: float, confidence: float) -> float:
    """Samples for `confidence` of one all-inlier draw at this ratio."""
    if ratio >= 1.0:
        return 0
    return math.log(1.0 - confidence) / math.log(1.0 - ratio**3)


def _refine(src_h, dst, affine, settings):
    """Least-squares refits on the inliers while they do not lose any."""
    thr2 = float(settings.threshold) ** 2
    src = src_h[:, :2]
    inliers = _residual2(src_h, dst, affine) <= thr2
    for _ in range(settings.refine_steps):
        refit = fit_affine(src[inliers], dst[inliers])
        if refit is None or not affine_is_plausible(
            refit, settings.max_scale, settings.max_anisotropy
        ):
            break
        refit_inliers = _residual2(src_h, dst, refit) <= thr2
        if refit_inliers.sum() < inliers.sum():
            break
        same = np.array_equal(refit_inliers, inliers)
        affine, inliers = refit, refit_inliers
        if same:
            break
    return affine, inliers


def _three_distinct(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Uniform random triples of distinct indices in [0, n), shape (size, 3)."""
    first = rng.integers(0, n, size)
    second = rng.integers(0, n - 1, size)
    second = second + (second >= first)
    low, high = np.minimum(first, second), np.maximum(first, second)
    third = rng.integers(0, n - 2, size)
    third = third + (third >= low)
    third = third + (third >= high)
    return np.stack([first, second, third], axis=1)


def _residual2(
    src_h: np.ndarray, dst: np.ndarray, affine: np.ndarray
) -> np.ndarray:
    return np.sum((src_h @ affine.T - dst) ** 2, axis=1)


def inlier_box(
    points: np.ndarray, image_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Integer pixel box covering (x, y) pixel-centre points, clipped.

    A point at (x, y) lies in pixel column floor(x + 0.5) and row
    floor(y + 0.5); the box is the smallest `image[y0:y1, x0:x1]` that
    contains those pixels for every point, clipped to the image.

    Args:
        points: array (N, 2), N >= 1, of (x, y) in original pixel-centre
            coordinates.
        image_size: (height, width) of the image.

    Returns:
        (x0, y0, x1, y1) with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <=
        height.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if len(points) == 0:
        raise ValueError("inlier_box needs at least one point")
    height, width = image_size
    cols = np.floor(points[:, 0] + 0.5)
    rows = np.floor(points[:, 1] + 0.5)
    x0 = int(np.clip(cols.min(), 0, width - 1))
    y0 = int(np.clip(rows.min(), 0, height - 1))
    x1 = int(np.clip(cols.max() + 1, x0 + 1, width))
    y1 = int(np.clip(rows.max() + 1, y0 + 1, height))
    return x0, y0, x1, y1
