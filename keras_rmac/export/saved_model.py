"""SavedModel export for TensorFlow Serving: descriptors from image bytes.

`export_saved_model` writes an `RMACModel` as a SavedModel that TF Serving
(or `tf.saved_model.load` in a process without Keras or keras_rmac) serves
on its own. Decoding, resizing, preprocessing, the network and the
multi-resolution sum are all in the graph, so a client sends encoded image
files and receives the same L2-normalised descriptors that
`RMACModel.extract` computes from the same files. The signatures are
described in `keras_rmac.export.serving`, decoding and bad input in
`keras_rmac.export.decode`, the warm-up requests in
`keras_rmac.export.warmup`.

Layout: `<path>/<version>/` with `saved_model.pb`, `variables/`,
`assets.extra/tf_serving_warmup_requests` (TFRecord of
`tensorflow.serving.PredictionLog` protos that TF Serving replays before it
reports the model ready) and `assets.extra/keras_rmac_export.json` (what was
exported: fingerprint, dimension, sizes, scales, the pixel `value_range` of
`serving_images`). The version directory is written under a temporary name,
flushed to disk and renamed into place, so a server watching `<path>` never
loads a half-written version.
"""

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rmac import fileio
from keras_rmac.checks import check_int
from keras_rmac.data import image_io
from keras_rmac.export.decode import decode_image_bytes
from keras_rmac.export.serving import BYTES_INPUT
from keras_rmac.export.serving import IMAGES_INPUT
from keras_rmac.export.serving import IMAGES_SIGNATURE
from keras_rmac.export.serving import OUTPUT
from keras_rmac.export.serving import SERVING_SIGNATURE
from keras_rmac.export.serving import Serving
from keras_rmac.export.warmup import WARMUP_FILE
from keras_rmac.export.warmup import load_warmup_images
from keras_rmac.export.warmup import write_warmup_file
from keras_rmac.models.multiscale import validate_scales
from keras_rmac.models.value_range import DEFAULT_VALUE_RANGE
from keras_rmac.models.value_range import validate_value_range
from keras_rmac.version import __version__

__all__ = [
    "ASSETS_EXTRA",
    "BYTES_INPUT",
    "IMAGES_INPUT",
    "IMAGES_SIGNATURE",
    "METADATA_FILE",
    "OUTPUT",
    "SERVING_SIGNATURE",
    "WARMUP_FILE",
    "decode_image_bytes",
    "existing_versions",
    "export_saved_model",
]

logger = logging.getLogger(__name__)

ASSETS_EXTRA = "assets.extra"
METADATA_FILE = "keras_rmac_export.json"

_TMP_PREFIX = ".keras_rmac_export-"  # Not an integer: TF Serving skips it.


def existing_versions(path) -> list[int]:
    """Integer version directories under a TF Serving model base path.

    Args:
        path: str or os.PathLike. The model base path.

    Returns:
        Sorted list of ints; empty when `path` does not exist.

    Example:

    >>> import tempfile
    >>> existing_versions(tempfile.mkdtemp())
    []
    """
    if not os.path.isdir(path):
        return []
    return sorted(
        int(name)
        for name in os.listdir(path)
        if name.isdigit() and os.path.isdir(os.path.join(path, name))
    )


def _resolve_version(path, version):
    versions = existing_versions(path)
    next_free = (versions[-1] + 1) if versions else 1
    if version is None:
        return next_free
    version = check_int("version", version, minimum=0)
    if version in versions or os.path.exists(os.path.join(path, str(version))):
        raise FileExistsError(
            f"Version directory {os.path.join(path, str(version))!r} "
            "already exists (a server may be serving it). Pass another "
            f"`version` (next free: {next_free}) or remove it first."
        )
    return version


# Nine arguments: the public entry point of 0.2.0, whose positional and
# keyword arguments callers already use; each one fixes one property of
# the exported graph and maps to one `keras-rmac export` flag.
def export_saved_model(  # noqa: PLR0913 - documented public entry point
    model,
    path,
    scales: Sequence[float] = (1.0,),
    max_size: int | None = None,
    version: int | None = None,
    warmup_images=None,
    *,
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
    min_side: int = image_io.MIN_SIDE,
    value_range: Sequence[float] | None = DEFAULT_VALUE_RANGE,
) -> str:
    """Exports a descriptor model as a SavedModel for TF Serving.

    Writes `<path>/<version>/`, a SavedModel whose `serving_default`
    signature maps encoded image files (`image_bytes`, string `(B,)`) to
    L2-normalised descriptors (`descriptor`, float32 `(B, D)`) and whose
    `serving_images` signature does the same from float32 RGB pixels
    (`images`, `(B, H, W, 3)`, values in `value_range`, `[0, 255]` by
    default). Resizing and multi-resolution follow
    `RMACModel.extract(max_size=..., scales=...)` exactly, so the served
    descriptors match an index built with the same settings. See the module
    docstring for decoding and bad input.

    Args:
        model: `RMACModel` (or any `keras.Model` mapping float32 RGB images
            `(B, H, W, 3)` in `[0, 255]` to descriptors `(B, D)`).
        path: str or os.PathLike. The model base path that TF Serving's
            `--model_base_path` points at; created if missing.
        scales: sequence of float. Multi-resolution scales. Defaults to
            `(1.0,)`.
        max_size: int or None. Longest image side at scale 1; None keeps
            each image's own size. Defaults to `None`.
        version: int or None. Version directory name (an int >= 0); None
            takes the next free one (1 for a new path). Defaults to `None`.
        warmup_images: image file paths (or raw encoded bytes) written as
            warm-up requests, one request per image; None writes one
            generated PNG (of size `max_size`); an empty sequence writes no
            warm-up file. Each image is run through the exported graph first,
            so a bad warm-up image fails here, not at server start.
            Defaults to `None`.
        max_pixels: int. Largest accepted width x height of a request image
            (as decoded: JPEGs declaring more than
            `image_io.DEFAULT_DRAFT_ABOVE` pixels are decoded at reduced
            scale, as `RMACModel.extract` does by default). Defaults to
            `image_io.DEFAULT_MAX_PIXELS` (100 megapixels).
        min_side: int. Smallest accepted width or height. Defaults to
            `image_io.MIN_SIDE` (8).
        value_range: `(low, high)`. Range of the pixels that the
            `serving_images` signature takes, fixed in the graph: they
            are mapped linearly onto [0, 255] before resizing, as
            `RMACModel.extract(..., value_range=...)` does; `(0, 1)` for
            clients that send floats in [0, 1]. The graph cannot warn
            about pixels in another range (they give wrong descriptors),
            so the range is written to the metadata file. Encoded files
            (`serving_default`) are not affected. None means `(0, 255)`.
            Defaults to `(0, 255)`.

    Returns:
        str: the version directory written.

    Raises:
        FileExistsError: `<path>/<version>` already exists.
        FileNotFoundError: a warm-up image cannot be read.
        ValueError: invalid `scales`, `max_size`, `version` or
            `value_range`, or a warm-up image that the exported graph
            cannot decode.

    Example:

    >>> model = RMACModel("mobilenet_v2", weights=None)  # doctest: +SKIP
    >>> export_saved_model(model, "models/rmac", max_size=512)  # doctest: +SKIP
    'models/rmac/1'
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`model` must be a keras.Model (e.g. an RMACModel). Received: "
            f"{type(model).__name__}"
        )
    scales = validate_scales(scales)
    max_size = check_int("max_size", max_size, allow_none=True)
    max_pixels = check_int("max_pixels", max_pixels)
    min_side = check_int("min_side", min_side)
    value_range = validate_value_range(value_range) or DEFAULT_VALUE_RANGE
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(
            f"Export path {path!r} is a file; pass a folder (TF Serving's "
            "model base path)."
        )
    if os.path.basename(os.path.normpath(path)).isdigit():
        logger.warning(
            "Export path %r ends in a number: the SavedModel goes to %r. "
            "Pass the model base path (without the version) if that is not "
            "what you want.",
            path,
            os.path.join(path, "<version>"),
        )
    version = _resolve_version(path, version)
    warmup = load_warmup_images(warmup_images, max_size, max_pixels, min_side)
    if not model.built:
        model(np.zeros((1, 64, 64, 3), np.float32))
    serving = Serving(
        model, scales, max_size, max_pixels, min_side, value_range
    )
    final = _write_version(path, version, model, serving, warmup)
    logger.info(
        "Exported SavedModel version %d to %s (signatures %s, %s; %d warm-up "
        "request(s))",
        version,
        final,
        SERVING_SIGNATURE,
        IMAGES_SIGNATURE,
        len(warmup),
    )
    return final


def _write_version(path, version, model, serving, warmup):
    """Writes `<path>/<version>` atomically; returns its path.

    Everything is written to a temporary folder next to it (a name TF
    Serving ignores), flushed to disk, then renamed into place.
    """
    signatures = serving.signatures()
    # Only the variables are saved, not the Keras object graph: saving a
    # Keras model also traces its own default signature and walks every
    # layer, which costs more than the export itself.
    root = tf.Module()
    root.model_variables = list(model.variables)
    os.makedirs(path, exist_ok=True)
    final = os.path.join(path, str(version))
    # A fresh folder that honours the umask (mkdtemp's would be private,
    # unreadable by a server running as another user).
    tmp = os.path.join(path, f"{_TMP_PREFIX}{version}-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        tf.saved_model.save(root, tmp, signatures=signatures)
        extra = os.path.join(tmp, ASSETS_EXTRA)
        os.makedirs(extra, exist_ok=True)
        if warmup:
            write_warmup_file(os.path.join(extra, WARMUP_FILE), warmup)
        _write_metadata(extra, model, serving, len(warmup))
        fileio.fsync_tree(tmp)
        os.rename(tmp, final)
        fileio.fsync_path(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_metadata(folder, model, serving, warmup_count):
    fingerprint = getattr(model, "fingerprint", None)
    metadata = {
        "keras_rmac_version": __version__,
        "fingerprint": fingerprint() if callable(fingerprint) else None,
        "dimension": serving.dimension,
        # The 0.2.0 name of "dimension", kept for clients that read it.
        "descriptor_dim": serving.dimension,
        "max_size": serving.max_size,
        "scales": list(serving.scales),
        "scale_sizes": serving.sizes,
        "max_pixels": serving.max_pixels,
        "min_side": serving.min_side,
        # The pixel range `serving_images` takes (the graph cannot warn).
        "value_range": list(serving.value_range),
        "draft_above": serving.draft_above,
        "signatures": {
            SERVING_SIGNATURE: {"inputs": {BYTES_INPUT: "string (B,)"}},
            IMAGES_SIGNATURE: {
                "inputs": {
                    IMAGES_INPUT: "float32 (B, H, W, 3), RGB {:g}-{:g}".format(
                        *serving.value_range
                    )
                }
            },
        },
        "outputs": {OUTPUT: f"float32 (B, {serving.dimension}), L2-normalised"},
        "warmup_requests": warmup_count,
    }
    text = json.dumps(metadata, indent=2) + "\n"
    fileio.atomic_write_text(os.path.join(folder, METADATA_FILE), text)
