"""keras_rmac: end-to-end R-MAC image retrieval for Keras 3 / TensorFlow.

Gordo, Almazan, Revaud, Larlus. "End-to-end Learning of Deep Visual
Representations for Image Retrieval". IJCV 2017. arXiv:1610.07940.

`import keras_rmac` imports the layers and models, so that their classes
are registered with Keras and `keras.saving.load_model` opens `.keras`
files of keras_rmac after it, as with keras-hub. In the `keras-rmac`
command's own process (and `python -m keras_rmac.cli.main`) the names are
imported on first use instead (PEP 562): the command sets TensorFlow's log
level before TensorFlow is imported, and `keras-rmac --help` stays fast.
"""

import importlib
import os
import sys

from keras_rmac.version import __version__

_EXPORTS = {
    "AnchorGenerator": "keras_rmac.layers",
    "BoxMaxPooling": "keras_rmac.layers",
    "GeMPooling": "keras_rmac.layers",
    "L2Normalize": "keras_rmac.layers",
    "LearnedRegionPooling": "keras_rmac.layers",
    "MACPooling": "keras_rmac.layers",
    "PhotoIndex": "keras_rmac.indexing",
    "RegionProposal": "keras_rmac.layers",
    "RMACPooling": "keras_rmac.layers",
    "RPNHead": "keras_rmac.layers",
    "ShiftPCA": "keras_rmac.layers",
    "SPoCPooling": "keras_rmac.layers",
    "RMACModel": "keras_rmac.models",
    "TripletModel": "keras_rmac.models",
    "index_folder": "keras_rmac.indexing",
}
"""Public name -> the module it is imported from."""

__all__ = [
    "AnchorGenerator",
    "BoxMaxPooling",
    "GeMPooling",
    "L2Normalize",
    "LearnedRegionPooling",
    "MACPooling",
    "PhotoIndex",
    "RMACModel",
    "RMACPooling",
    "RPNHead",
    "RegionProposal",
    "SPoCPooling",
    "ShiftPCA",
    "TripletModel",
    "__version__",
    "index_folder",
]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        try:  # A sub-package used as an attribute: keras_rmac.layers.
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _in_the_command_line_process() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    return (
        os.path.basename(sys.argv[0]) == "keras-rmac"
        or "keras_rmac.cli.main" in argv
    )


if not _in_the_command_line_process():
    for _module in sorted(set(_EXPORTS.values())):
        importlib.import_module(_module)
