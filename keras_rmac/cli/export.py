"""`keras-rmac export`: a SavedModel that TF Serving serves from image bytes."""

import argparse
import json
import logging
import os

from keras_rmac.cli import _common
from keras_rmac.data.image_io import DEFAULT_MAX_PIXELS

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
pixels `images` (B, H, W, 3) in [0, 255] (or --value-range). Use the
--max-size and --scales the index was built with, so served descriptors
match it.

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
    _common.add_model_arguments(parser)
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
        help="Largest width x height of a request image as decoded (JPEGs "
        "declaring more than 100 megapixels are decoded at reduced scale, "
        f"and only that size counts) (default: {DEFAULT_MAX_PIXELS:,}).",
    )
    parser.add_argument(
        "--value-range",
        type=_value_range,
        default=None,
        metavar="LOW,HIGH",
        help="Pixel range of the serving_images signature's float input, "
        "e.g. 0,1 (default: 0,255). serving_default (encoded images) is "
        "not affected.",
    )
    parser.set_defaults(run=run)
    return parser


def _value_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LOW,HIGH such as 0,1; received {text!r}"
        ) from None
    return low, high


def _load_model(args: argparse.Namespace):
    """The model of the shared model options (`_common.build_model`)."""
    spec = _common.model_spec(args)
    if spec["pca_dim"]:
        raise ValueError(
            "--pca-dim needs photos to learn the whitening from, which "
            "export has not: learn it with `keras-rmac index --pca-dim D` "
            "(then pass --model INDEX_DIR/model.keras) or "
            "RMACModel.adapt_pca, and pass the saved model with --model."
        )
    return _common.build_model(spec)


def _size_text(size: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if size < 1000:
            break
        size /= 1000
    else:
        unit = "GB"
    return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"


def summary(version_dir: str) -> str:
    """A few lines on the SavedModel in `version_dir`: what it serves.

    Read from the metadata file `export_saved_model` writes in its
    `assets.extra` folder.
    """
    from keras_rmac.export import saved_model

    extra = os.path.join(version_dir, saved_model.ASSETS_EXTRA)
    with open(os.path.join(extra, saved_model.METADATA_FILE)) as f:
        metadata = json.load(f)
    size = sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(version_dir)
        for name in names
    )
    dimension = metadata.get("dimension", metadata.get("descriptor_dim"))
    signatures = "; ".join(
        f"{name} ({', '.join(spec['inputs'])} -> {saved_model.OUTPUT})"
        for name, spec in metadata["signatures"].items()
    )
    max_size = metadata["max_size"]
    scales = ", ".join(f"{s:g}" for s in metadata["scales"])
    lines = [
        f"Exported SavedModel: {version_dir} ({_size_text(size)})",
        f"  signatures: {signatures}",
        f"  descriptor: {dimension} float32 values, L2-normalised",
        f"  images: longest side {max_size} px at scale 1, scales {scales}",
        f"  warm-up requests: {metadata['warmup_requests']}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Runs `keras-rmac export` with parsed arguments.

    Prints a summary: the version directory written, its signatures, the
    descriptor dimension and size, and the image sizes it describes at.

    Args:
        args: the namespace from the parser built by `add_parser`.

    Returns:
        Exit status: 0 on success, 1 when the inputs or settings are wrong
        (the message is logged).
    """
    from keras_rmac.export import export_saved_model

    max_size, scales = _common.image_settings(args)
    try:
        model = _load_model(args)
        out = export_saved_model(
            model,
            args.out,
            scales=scales,
            max_size=max_size,
            version=args.version,
            warmup_images=() if args.no_warmup else args.warmup,
            max_pixels=args.max_pixels,
            value_range=args.value_range,
        )
    except (OSError, ValueError, TypeError) as error:
        logger.error("keras-rmac export: %s", error)
        return 1
    print(summary(out))  # CLI output: what was written where.
    return 0
