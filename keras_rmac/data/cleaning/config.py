"""What the cleaning may decide and the settings it decides with."""

import dataclasses
from typing import Any

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
"""Why an image is dropped, in the order the report lists them."""

Box = tuple[int, int, int, int]


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
