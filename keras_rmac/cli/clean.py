"""`keras-rmac clean`: automatic cleaning of a noisy labelled image list."""

import argparse
import logging

from keras_rmac.cli import _common
from keras_rmac.data import cleaning

logger = logging.getLogger(__name__)

_EPILOG = """\
Example:

  keras-rmac clean landmarks.csv --out landmarks-clean.csv --workers 8

  # Large classes: verify only each image's 20 nearest neighbours (R-MAC).
  keras-rmac clean landmarks.csv --out landmarks-clean.csv --workers 8 \\
      --shortlist-k 20 --backbone mobilenet_v2

LIST.csv has one `path,label` row per image (a first row naming a path
and a label column, e.g. `path,label`, is a header; Google Landmarks v2
train.csv and train_clean.csv are read as they are; relative paths are
relative to the CSV's folder unless --root is given). The output has one
`path,label,x0,y0,x1,y1` row per kept image, the box in pixels of the
original image (crop: image[y0:y1, x0:x1]).
Alongside it: OUT.report.json and OUT.report.txt (what was dropped and
why) and OUT.work/ (finished classes: rerunning the same command resumes).

Needs OpenCV: pip install keras-rmac[clean]
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `clean` sub-command to an argparse `subparsers` object.

    Args:
        subparsers: the object returned by `parser.add_subparsers()`.

    Returns:
        The sub-command's parser (its `run` default is `run`).
    """
    defaults = cleaning.CleaningConfig()
    parser = subparsers.add_parser(
        "clean",
        help="Clean a noisy labelled image list (local features + RANSAC).",
        description=(
            "Within each class, match image pairs with SIFT and affine "
            "RANSAC, keep the largest connected component of verified "
            "pairs, and estimate a bounding box per kept image "
            "(Gordo et al., IJCV 2017)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "list", metavar="LIST.csv", help="Labelled list: `path,label` CSV."
    )
    parser.add_argument(
        "--out", required=True, metavar="CLEAN.csv", help="Output CSV."
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Worker processes, one class at a time each (default: 1).",
    )
    parser.add_argument(
        "--root",
        default=None,
        help="Folder relative image paths are relative to "
        "(default: the CSV's folder).",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="Per-class results for resuming (default: OUT.work).",
    )
    parser.add_argument(
        "--min-inliers",
        type=int,
        default=defaults.min_inliers,
        help="Distinct RANSAC inliers to verify a pair "
        f"(default: {defaults.min_inliers}).",
    )
    parser.add_argument(
        "--ratio",
        type=float,
        default=defaults.ratio,
        help=f"Lowe ratio test threshold (default: {defaults.ratio}).",
    )
    parser.add_argument(
        "--inlier-threshold",
        type=float,
        default=defaults.inlier_threshold,
        help="RANSAC reprojection threshold in working-image pixels "
        f"(default: {defaults.inlier_threshold}).",
    )
    parser.add_argument(
        "--min-class-size",
        type=int,
        default=defaults.min_class_size,
        help="Drop classes whose kept component is smaller "
        f"(default: {defaults.min_class_size}).",
    )
    parser.add_argument(
        "--min-side",
        type=int,
        default=defaults.min_side,
        help="Upsample images whose shorter side is below this before "
        f"SIFT (default: {defaults.min_side}).",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=defaults.max_side,
        help="Downsample images whose longer side is above this "
        f"(default: {defaults.max_side}).",
    )
    parser.add_argument(
        "--max-keypoints",
        type=int,
        default=defaults.max_keypoints,
        help=f"SIFT keypoints per image (default: {defaults.max_keypoints}).",
    )
    parser.add_argument(
        "--contrast-threshold",
        type=float,
        default=defaults.contrast_threshold,
        help="SIFT contrast threshold "
        f"(default: {defaults.contrast_threshold}).",
    )
    parser.add_argument(
        "--box",
        choices=("union", "percentile"),
        default=defaults.box_method,
        help="Box of all accumulated inliers, or a robust percentile box "
        f"(default: {defaults.box_method}).",
    )
    parser.add_argument(
        "--box-percentile",
        type=float,
        default=defaults.box_percentile,
        help=f"For --box percentile (default: {defaults.box_percentile}).",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="RANSAC seed."
    )
    parser.add_argument(
        "--shortlist-k",
        type=int,
        default=0,
        metavar="K",
        help="Verify only each image's K nearest neighbours within its "
        "class by R-MAC descriptor (see the descriptor network options), "
        "instead of all pairs: linear instead of quadratic cost on large "
        "classes (default: 0, all pairs).",
    )
    _common.add_model_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    parser.set_defaults(run=run)
    return parser


def _embedder(args: argparse.Namespace):
    """`paths -> (N, D)` descriptors from the chosen R-MAC network."""
    spec = _common.model_spec(args)
    model = _common.build_model(spec)
    max_size = args.max_size or _common.DEFAULT_MAX_SIZE
    scales = args.scales or (1.0,)
    logger.info("Shortlisting pairs with %s", spec)

    def embed(paths):
        return model.extract(
            list(paths), max_size=max_size, scales=scales, verbose=0
        )

    return embed


def run(args: argparse.Namespace) -> int:
    """Runs `keras-rmac clean` with parsed arguments.

    Args:
        args: the namespace from the parser built by `add_parser`.

    Returns:
        Exit status: 0 on success, 1 when the inputs or settings are
        wrong (the message is logged).
    """
    try:
        config = cleaning.CleaningConfig(
            ratio=args.ratio,
            min_inliers=args.min_inliers,
            inlier_threshold=args.inlier_threshold,
            min_side=args.min_side,
            max_side=args.max_side,
            max_keypoints=args.max_keypoints,
            contrast_threshold=args.contrast_threshold,
            min_class_size=args.min_class_size,
            box_method=args.box,
            box_percentile=args.box_percentile,
            seed=args.seed,
            shortlist_k=args.shortlist_k or None,
        )
        kwargs = {}
        if args.root is not None:
            kwargs["root"] = args.root
        if args.shortlist_k:
            kwargs["embed"] = _embedder(args)
        report = cleaning.clean_list(
            args.list,
            args.out,
            config=config,
            num_workers=args.workers,
            work_dir=args.work_dir,
            verbose=0 if args.quiet else 1,
            **kwargs,
        )
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        logger.error("keras-rmac clean: %s", error)
        return 1
    if not args.quiet:
        print(report.summary(), end="")  # CLI output, not library logging.
    return 0
