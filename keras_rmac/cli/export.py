"""`keras-rmac export`: a SavedModel that TF Serving serves from image bytes."""

import argparse
import logging
import os

from keras_rmac.backbones import BACKBONES
from keras_rmac.cli import _common
from keras_rmac.data.image_io import DEFAULT_MAX_PIXELS
from keras_rmac.models.rmac_model import POOLINGS

logger = logging.getLogger(__name__)

_EPILOG = """\
Examples:

  keras-rmac export --model rmac.keras --out models/rmac --max-size 512
  keras-rmac export --backbone mobilenet_v2 --weights mobilenet_v2.weights.h5 \\
      --out models/rmac --max-size 512 --scales 1,0.707 --warmup a.jpg b.png

Writes OUT/VERSION/ (VERSION: --version, else the next free integer), the
layout TF Serving's --model_base_path expects. Signature `serving_default`
takes `image_bytes` (encoded JPEG/PNG/GIF/BMP/WebP files) and returns
`descriptor` (float32, L2-normalised); `serving_images` takes float32 RGB
pixels `images` (B, H, W, 3) in [0, 255]. Use the --max-size and --scales
the index was built with, so served descriptors match it.

Serve it:

  docker run -p 8501:8501 -v "$PWD/models/rmac:/models/rmac" \\
      -e MODEL_NAME=rmac tensorflow/serving
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `export` sub-command to an argparse `subparsers` object.

    Args:
        subparsers: the object returned by `parser.add_subparsers()`.

    Returns:
        The sub-command's parser (its `run` default is `run`).
    """
    parser = subparsers.add_parser(
        "export",
        help="Export a SavedModel for TF Serving (image bytes -> descriptor).",
        description=(
            "Export an R-MAC model as a TF Serving SavedModel whose graph "
            "decodes, resizes and describes encoded image files."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        metavar="MODEL.keras",
        help="A saved RMACModel (e.g. with PCA-whitening adapted).",
    )
    source.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        help="Build a plain R-MAC model on this backbone instead.",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        metavar="PATH|imagenet|none",
        help="With --backbone: a local weights file, 'imagenet' (Keras "
        "download) or 'none' (random). Default: imagenet.",
    )
    parser.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="rmac",
        help="With --backbone: global pooling (default: rmac).",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="Model base path; the SavedModel goes to DIR/VERSION.",
    )
    parser.add_argument(
        "--version",
        type=_common.non_negative_int,
        default=None,
        metavar="N",
        help="Version directory (default: the next free integer, 1 for a "
        "new DIR). An existing version is never overwritten.",
    )
    parser.add_argument(
        "--max-size",
        type=_common.positive_int,
        default=None,
        metavar="PIXELS",
        help="Longest image side at scale 1 (default: each image's own "
        "size). Use the value the index was built with.",
    )
    parser.add_argument(
        "--scales",
        type=_common.parse_scales,
        default=(1.0,),
        metavar="S[,S...]",
        help="Multi-resolution scales, e.g. '1,0.707' (default: 1).",
    )
    warmup = parser.add_mutually_exclusive_group()
    warmup.add_argument(
        "--warmup",
        nargs="+",
        metavar="IMG",
        default=None,
        help="Images written as TF Serving warm-up requests (default: one "
        "generated PNG).",
    )
    warmup.add_argument(
        "--no-warmup",
        action="store_true",
        help="Write no warm-up requests.",
    )
    parser.add_argument(
        "--max-pixels",
        type=_common.positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="Largest accepted width x height of a request image "
        f"(default: {DEFAULT_MAX_PIXELS:,}).",
    )
    parser.set_defaults(run=run)
    return parser


def _load_model(args: argparse.Namespace):
    import keras

    from keras_rmac.models.rmac_model import RMACModel

    if args.model is not None:
        if not os.path.isfile(args.model):
            raise FileNotFoundError(
                f"--model file not found: {args.model!r}. Pass a model saved "
                "with RMACModel.save('model.keras')."
            )
        if args.weights != "imagenet" or args.pooling != "rmac":
            logger.warning(
                "--weights/--pooling are ignored with --model: the saved "
                "model has its own."
            )
        model = keras.saving.load_model(args.model)
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"{args.model!r} holds a {type(model).__name__}, not a "
                "Keras model."
            )
        return model
    weights = args.weights
    if weights.lower() == "none":
        weights = None
    elif weights != "imagenet" and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"--weights file not found: {weights!r}. Pass a weights file, "
            "'imagenet' or 'none'."
        )
    logger.info(
        "Building RMACModel(%r, weights=%r, pooling=%r)",
        args.backbone,
        weights,
        args.pooling,
    )
    return RMACModel(args.backbone, weights=weights, pooling=args.pooling)


def run(args: argparse.Namespace) -> int:
    """Runs `keras-rmac export` with parsed arguments.

    Args:
        args: the namespace from the parser built by `add_parser`.

    Returns:
        Exit status: 0 on success, 1 when the inputs or settings are wrong
        (the message is logged).
    """
    from keras_rmac.export import export_saved_model

    try:
        model = _load_model(args)
        out = export_saved_model(
            model,
            args.out,
            scales=args.scales,
            max_size=args.max_size,
            version=args.version,
            warmup_images=() if args.no_warmup else args.warmup,
            max_pixels=args.max_pixels,
        )
    except (OSError, ValueError, TypeError) as error:
        logger.error("keras-rmac export: %s", error)
        return 1
    print(out)  # CLI output: the version directory written.
    return 0
