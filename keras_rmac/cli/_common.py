"""Helpers shared by the `keras-rmac` sub-commands: model options.

`add_model_arguments` registers the options that choose the descriptor
network (`--model`, `--backbone`, `--weights`, `--pooling`, `--pca-dim`)
and how images are described (`--max-size`, `--scales`); `model_spec`
turns parsed arguments into a plain dict that `build_model` builds and that
an index records, so a later run can tell whether it was asked for the same
network.
"""

import argparse
import logging
import os
import pathlib

from keras_rmac.backbones import BACKBONES
from keras_rmac.models.rmac_model import POOLINGS

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "mobilenet_v2"
DEFAULT_POOLING = "rmac"
DEFAULT_MAX_SIZE = 512

SHARED_WEIGHTS = {
    "mobilenet_v1": "mobilenet_v1_1.0_224_imagenet.weights.h5",
    "mobilenet_v2": "mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5",
    "efficientnet_lite0": "efficientnet_lite0_imagenet.keras",
}
"""Offline ImageNet weight files looked for in the shared data folder."""

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def shared_data_candidates() -> list[pathlib.Path]:
    """Folders searched for shared data, in order of preference.

    `$KERAS_RMAC_DATA` when set, then `../shared/data` relative to the
    current directory, then `../shared/data` relative to the repository
    this package was installed from (editable installs).
    """
    candidates = []
    env = os.environ.get("KERAS_RMAC_DATA")
    if env:
        candidates.append(pathlib.Path(env))
    candidates.append(pathlib.Path.cwd().parent / "shared" / "data")
    candidates.append(_REPO_ROOT.parent / "shared" / "data")
    return candidates


def default_weights(backbone: str) -> str:
    """Weights to use for `backbone` when `--weights` is not given.

    The shared offline weights file of that backbone when one is found (see
    `shared_data_candidates`), else `"imagenet"` (Keras downloads it).

    Args:
        backbone: str. A name from `keras_rmac.backbones.BACKBONES`.

    Returns:
        An absolute file path, or `"imagenet"`.

    Example:

    >>> default_weights("resnet50")
    'imagenet'
    """
    name = SHARED_WEIGHTS.get(backbone)
    if name is not None:
        for folder in shared_data_candidates():
            path = folder / "weights" / name
            if path.is_file():
                return str(path.resolve())
    return "imagenet"


def parse_scales(text: str) -> tuple[float, ...]:
    """Parses `--scales` ("1", "1,0.707", "1 0.5") into positive floats."""
    parts = text.replace(",", " ").split()
    try:
        scales = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales must be numbers separated by commas, e.g. "
            f"'1,0.707,0.5'. Received: {text!r}"
        ) from None
    if not scales or any(not s > 0 for s in scales):
        raise argparse.ArgumentTypeError(
            f"--scales must be positive numbers. Received: {text!r}"
        )
    return scales


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, received {text!r}"
        )
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 0, received {text!r}"
        )
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the descriptor-network and image-size options to `parser`.

    Every option defaults to None so that `model_spec` can tell an option
    the user gave from one left out (left-out options take the value an
    existing index recorded, else the package default).
    """
    group = parser.add_argument_group("descriptor network")
    group.add_argument(
        "--model",
        metavar="MODEL.keras",
        default=None,
        help="A saved RMACModel (e.g. with shift + PCA-whitening already "
        "adapted). Overrides --backbone/--weights/--pooling/--pca-dim.",
    )
    group.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        default=None,
        help=f"Backbone CNN (default: {DEFAULT_BACKBONE}).",
    )
    group.add_argument(
        "--weights",
        default=None,
        metavar="PATH|imagenet|none",
        help="Backbone weights: a local file, 'imagenet' (Keras download) "
        "or 'none' (random, for tests). Default: the offline file in "
        "$KERAS_RMAC_DATA/weights or ../shared/data/weights when present, "
        "else 'imagenet'.",
    )
    group.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=None,
        help=f"Global pooling (default: {DEFAULT_POOLING}).",
    )
    group.add_argument(
        "--pca-dim",
        type=positive_int,
        default=None,
        metavar="D",
        help="Learn shift + PCA-whitening to D dimensions on the indexed "
        "photos before indexing (default: none, plain R-MAC).",
    )
    group.add_argument(
        "--max-size",
        type=positive_int,
        default=None,
        metavar="PIXELS",
        help=f"Longest image side at scale 1 (default: {DEFAULT_MAX_SIZE}, "
        "or what an existing index was built with).",
    )
    group.add_argument(
        "--scales",
        type=parse_scales,
        default=None,
        metavar="S[,S...]",
        help="Multi-resolution scales, e.g. '1,0.707' (default: 1, or what "
        "an existing index was built with).",
    )


def model_spec(args: argparse.Namespace, recorded: dict | None = None) -> dict:
    """The network the user asked for, as a JSON-serialisable dict.

    With none of `--model/--backbone/--weights/--pooling/--pca-dim` given,
    this is `recorded` (the spec an existing index was built with) when
    there is one, so re-running `index` on a folder reuses its network.
    Otherwise options left out take the package defaults. Paths are made
    absolute so the spec does not depend on the working directory.

    Args:
        args: parsed arguments with the options of `add_model_arguments`.
        recorded: dict or None. The spec stored by an earlier run.

    Returns:
        dict with keys `model`, `backbone`, `weights`, `pooling`, `pca_dim`.
    """
    names = ("model", "backbone", "weights", "pooling", "pca_dim")
    if recorded and all(getattr(args, n) is None for n in names):
        return dict(recorded)
    if args.model is not None:
        return {
            "model": str(pathlib.Path(args.model).resolve()),
            "backbone": None,
            "weights": None,
            "pooling": None,
            "pca_dim": None,
        }
    backbone = args.backbone or DEFAULT_BACKBONE
    weights = args.weights
    if weights is None:
        weights = default_weights(backbone)
    elif weights.lower() == "none":
        weights = None
    elif weights != "imagenet":
        weights = str(pathlib.Path(weights).resolve())
    return {
        "model": None,
        "backbone": backbone,
        "weights": weights,
        "pooling": args.pooling or DEFAULT_POOLING,
        "pca_dim": args.pca_dim,
    }


def build_model(spec: dict):
    """Builds (or loads) the `RMACModel` described by `model_spec`.

    Shift + PCA is not adapted here even when `spec["pca_dim"]` is set;
    the caller adapts it on its own images.

    Raises:
        FileNotFoundError: a `--model` or `--weights` file does not exist.
        TypeError: the `--model` file holds something other than an
            RMACModel.
    """
    from keras_rmac.indexing import load_rmac_model
    from keras_rmac.models.rmac_model import RMACModel

    if spec.get("model"):
        return load_rmac_model(spec["model"])
    logger.info(
        "Building RMACModel(backbone=%r, weights=%r, pooling=%r)",
        spec["backbone"],
        spec["weights"],
        spec["pooling"],
    )
    return RMACModel(
        spec["backbone"],
        weights=spec["weights"],
        pooling=spec["pooling"],
        pca_dim=spec["pca_dim"],
    )
