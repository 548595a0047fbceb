"""`keras-rmac train-rpn`: train the region proposal network on boxes."""

import argparse
import logging

from keras_rmac.cli import _common
from keras_rmac.training.config import RPNConfig

logger = logging.getLogger(__name__)

_EPILOG = """\
Examples:

  # The boxes the cleaning estimated, then the descriptor on the learned
  # regions (the paper's order):
  keras-rmac clean landmarks.csv --out landmarks-clean.csv
  keras-rmac train-rpn landmarks-clean.csv --out runs/rpn --image-size 512
  keras-rmac train --train-list landmarks-clean.csv \\
      --rpn-model runs/rpn/model.keras --out runs/rmac-rpn

Outputs in OUT: model.keras (an RMACModel(regions="rpn") with the trained,
frozen RPN; usable as is with `keras-rmac index --model`, or as
`train --rpn-model`), rpn_log.csv (loss per epoch) and, while training,
rpn_backup.npz, and rpn_features/: the backbone's feature map of every
image, computed once (float32, (image_size/32)^2 * channels * 4 bytes an
image: 1.3 MB for MobileNetV2 at 512 px), kept for later runs; delete it to
free the disk. Interrupted? Run the same command again: it computes only
the missing feature maps and resumes from the last checkpoint with the
same order and anchor sampling.
"""

# (flag, RPNConfig field, type, help)
_OPTIONS = (
    ("--image-root", "image_root", str, "Folder CSV paths are relative to."),
    ("--image-size", "image_size", int, "Longest side of the images."),
    ("--top-n", "top_n", int, "Proposals pooled by the saved model."),
    ("--hidden", "hidden", int, "Filters of the RPN head."),
    ("--epochs", "epochs", int, "Passes over the images."),
    ("--learning-rate", "learning_rate", float, "Adam's learning rate."),
    ("--anchors-per-image", "anchors_per_image", int, "Anchors per step."),
    ("--checkpoint-every", "checkpoint_every", int, "Steps between backups."),
    ("--seed", "seed", int, "Seed of the order and the anchor samples."),
    ("--workers", "num_workers", int, "Image decoding threads."),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `train-rpn` sub-command to an argparse `subparsers` object.

    Args:
        subparsers: the object returned by `parser.add_subparsers()`.

    Returns:
        The sub-command's parser (its `run` default is `run`).
    """
    defaults = RPNConfig("", "")
    parser = subparsers.add_parser(
        "train-rpn",
        help="Train the region proposal network on a cleaned list's boxes.",
        description=(
            "Train the region proposal network of Gordo et al. (Faster "
            "R-CNN's RPN: objectness + smooth-L1 box losses) on the boxes of "
            "a cleaned list, with the backbone frozen."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "train_list", metavar="CSV", help="`path,label,x0,y0,x1,y1` list."
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="Run folder."
    )
    for flag, field, kind, text in _OPTIONS:
        parser.add_argument(
            flag,
            dest=field,
            type=kind,
            default=None,
            metavar={int: "N", float: "X"}.get(kind, "DIR"),
            help=f"{text} (default: {getattr(defaults, field)}).",
        )
    parser.add_argument(
        "--sizes",
        type=_floats,
        default=None,
        metavar="S,S,...",
        help=f"Anchor sides in feature cells (default: {defaults.sizes}).",
    )
    parser.add_argument(
        "--ratios",
        type=_floats,
        default=None,
        metavar="R,R,...",
        help=f"Anchor height/width ratios (default: {defaults.ratios}).",
    )
    _common.add_network_arguments(parser, saved_model=False)
    parser.set_defaults(run=run)
    return parser


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected positive numbers, got {text!r}"
        )
    return values


def config_from_args(args: argparse.Namespace) -> RPNConfig:
    """The `RPNConfig` of parsed `keras-rmac train-rpn` arguments."""
    network = _common.network_settings(args)
    if network["pooling"] != "rmac" or network["pca_dim"] is not None:
        raise ValueError(
            "train-rpn trains region proposals for R-MAC pooling and learns "
            "no PCA: leave out --pooling and --pca-dim (give --pca-dim to "
            "`keras-rmac train --rpn-model`)."
        )
    config = RPNConfig(
        args.train_list,
        args.out,
        backbone=network["backbone"],
        weights=network["weights"],
        verbose=1,
    )
    for field in [f for _, f, _, _ in _OPTIONS] + ["sizes", "ratios"]:
        value = getattr(args, field)
        if value is not None:
            setattr(config, field, value)
    return config


def run(args: argparse.Namespace) -> int:
    """Runs `keras-rmac train-rpn` with parsed arguments.

    Returns:
        Exit status: 0 on success, 1 when the inputs or settings are wrong
        (the message is logged).
    """
    from keras_rmac.training.rpn import train_rpn

    try:
        config = config_from_args(args)
        result = train_rpn(config)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 1
    logger.info(
        "RPN trained on %d image(s)%s; final loss %s; model: %s; %d "
        "unreadable image(s)",
        result.images,
        f" (resumed at step {result.resumed_from})"
        if result.resumed_from
        else "",
        f"{result.losses[-1]:.4f}" if result.losses else "n/a",
        result.model_path,
        len(result.bad_files),
    )
    return 0
