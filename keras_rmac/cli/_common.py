"""Helpers shared by the `keras-rmac` sub-commands: model options.

`add_model_arguments` registers the options that choose the descriptor
network (`--model`, `--backbone`, `--weights`, `--pooling`, `--pca-dim`,
see `add_network_arguments`) and how images are described (`--max-size`,
`--scales`, see `add_image_arguments`), with the same defaults for every
sub-command; `model_spec` turns parsed arguments into a plain dict that
`build_model` builds and that an index records, so a later run can tell
whether it was asked for the same network.

Importing this module does not import TensorFlow: the backbone and pooling
names come from `keras_rmac.defaults`, so `--help` lists them without it.
"""

import argparse
import logging
import os
import pathlib
import urllib.error

from keras_rmac.defaults import BACKBONE_NAMES
from keras_rmac.defaults import POOLINGS
from keras_rmac.indexing.settings import DEFAULT_MAX_SIZE

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "mobilenet_v2"
DEFAULT_POOLING = "rmac"
DEFAULT_SCALES = (1.0,)

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


BACKBONE_CHOICES = tuple(sorted(BACKBONE_NAMES))
POOLING_CHOICES = tuple(sorted(POOLINGS))

NETWORK_OPTIONS = ("backbone", "weights", "pooling", "pca_dim")
"""Destinations of the options that a `--model` file already fixes."""


class _NetworkOption(argparse.Action):
    """Stores the value; `--model` and `NETWORK_OPTIONS` exclude each other."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        others = NETWORK_OPTIONS if self.dest == "model" else ("model",)
        given = [n for n in others if getattr(namespace, n, None) is not None]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            parser.error(
                f"{option_string} cannot be combined with {flags}: a --model "
                "file holds its own backbone, weights, pooling and whitening."
            )


def add_network_arguments(
    parser: argparse.ArgumentParser, saved_model: bool = True
) -> None:
    """Adds the descriptor-network options to `parser`, in one group.

    `--model` (unless `saved_model` is False), `--backbone`, `--weights`,
    `--pooling`, `--pca-dim`; `--model` cannot be combined with the others.
    Every option defaults to None so that `model_spec` can tell an option
    the user gave from one left out (left-out options take the value an
    existing index recorded, else the package default).

    Args:
        parser: an `argparse.ArgumentParser` (or sub-command parser).
        saved_model: bool. Whether to offer `--model MODEL.keras`.
            Defaults to True.
    """
    group = parser.add_argument_group("descriptor network")
    if saved_model:
        group.add_argument(
            "--model",
            metavar="MODEL.keras",
            default=None,
            action=_NetworkOption,
            help="A saved RMACModel (e.g. with shift + PCA-whitening already "
            "adapted), instead of --backbone/--weights/--pooling/--pca-dim.",
        )
    group.add_argument(
        "--backbone",
        choices=BACKBONE_CHOICES,
        default=None,
        action=_NetworkOption,
        help=f"Backbone CNN (default: {DEFAULT_BACKBONE}).",
    )
    group.add_argument(
        "--weights",
        default=None,
        action=_NetworkOption,
        metavar="PATH|imagenet|none",
        help="Backbone weights: a local file, 'imagenet' (Keras download) "
        "or 'none' (random, for tests). Default: the offline file in "
        "$KERAS_RMAC_DATA/weights or ../shared/data/weights when present, "
        "else 'imagenet'.",
    )
    group.add_argument(
        "--pooling",
        choices=POOLING_CHOICES,
        default=None,
        action=_NetworkOption,
        help=f"Global pooling (default: {DEFAULT_POOLING}).",
    )
    group.add_argument(
        "--pca-dim",
        type=positive_int,
        default=None,
        action=_NetworkOption,
        metavar="D",
        help="Learn shift + PCA-whitening to D dimensions on the photos "
        "before using the model (default: none, plain R-MAC).",
    )


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `--max-size` and `--scales` (how images are described).

    Both default to None: `image_settings` gives the package defaults, and
    `index` the values an existing index was built with.
    """
    group = parser.add_argument_group("image size")
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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options every sub-command that describes images shares.

    `add_network_arguments` then `add_image_arguments`: the same options
    with the same defaults in `index`, `export` and `clean`.
    """
    add_network_arguments(parser)
    add_image_arguments(parser)


def image_settings(args: argparse.Namespace) -> tuple[int, tuple]:
    """`(max_size, scales)` given on the command line, else the defaults."""
    return args.max_size or DEFAULT_MAX_SIZE, args.scales or DEFAULT_SCALES


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
    names = ("model",) + NETWORK_OPTIONS
    if recorded and all(getattr(args, n, None) is None for n in names):
        return dict(recorded)
    if getattr(args, "model", None) is not None:
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


def network_settings(args: argparse.Namespace) -> dict:
    """`backbone`, `weights`, `pooling`, `pca_dim` with defaults applied.

    For sub-commands whose options come from `add_network_arguments(parser,
    saved_model=False)` (no `--model`), e.g. `train`: the same values as
    `model_spec`, under the same names as `RMACModel`'s arguments.
    """
    spec = model_spec(args)
    return {name: spec[name] for name in NETWORK_OPTIONS}


def build_model(spec: dict):
    """Builds (or loads) the `RMACModel` described by `model_spec`.

    Shift + PCA is not adapted here even when `spec["pca_dim"]` is set;
    the caller adapts it on its own images.

    Raises:
        FileNotFoundError: a `--model` or `--weights` file does not exist.
        TypeError: the `--model` file holds something other than an
            RMACModel.
        Exception: `weights="imagenet"` could not be downloaded (see
            `is_download_failure`).
    """
    from keras_rmac.indexing import load_rmac_model
    from keras_rmac.models.rmac_model import RMACModel

    if spec.get("model"):
        return load_rmac_model(spec["model"])
    weights = spec["weights"]
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"--weights file not found: {weights}. Pass a weights file, "
            "'imagenet' (download) or 'none' (random)."
        )
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


DOWNLOAD_HINT = (
    "could not download the backbone weights (no internet connection?): "
    "pass --weights FILE with a local weights file, or --weights none for "
    "random weights"
)
"""The one line printed when `is_download_failure`."""


def is_download_failure(error: BaseException) -> bool:
    """Whether `error` comes from a download that could not be made.

    Keras's `get_file` turns `urllib` errors into a plain `Exception`
    whose message starts with "URL fetch failure"; the `urllib` error is
    kept as its context.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, urllib.error.URLError):
            return True
        if str(error).startswith("URL fetch failure"):
            return True
        error = error.__cause__ or error.__context__
    return False
