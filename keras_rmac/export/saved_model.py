"""SavedModel export for TensorFlow Serving: descriptors from image bytes.

`export_saved_model` writes an `RMACModel` as a SavedModel that TF Serving
(or `tf.saved_model.load` in a process without Keras or keras_rmac) serves
on its own. Decoding, resizing, preprocessing, the network and the
multi-resolution sum are all in the graph, so a client sends encoded image
files and receives the same L2-normalised descriptors that
`RMACModel.extract` computes from the same files.

Signatures:

- `serving_default`: input `image_bytes`, a 1-D string tensor `(B,)` of
  encoded JPEG, PNG, GIF, BMP or WebP files (TF Serving's REST API takes
  them as `{"b64": "..."}`); output `descriptor`, float32 `(B, D)`.
  Images of one request may have different sizes: each image runs through
  the network on its own (`tf.map_fn`).
- `serving_images`: input `images`, float32 `(B, H, W, 3)` RGB pixels in
  `[0, 255]` (one size per request); output `descriptor`, float32 `(B, D)`.

Layout: `<path>/<version>/` with `saved_model.pb`, `variables/`,
`assets.extra/tf_serving_warmup_requests` (TFRecord of
`tensorflow.serving.PredictionLog` protos that TF Serving replays before it
reports the model ready) and `assets.extra/keras_rmac_export.json` (what was
exported: fingerprint, sizes, scales). The version directory is written
under a temporary name and renamed into place, so a server watching `<path>`
never loads a half-written version.

Bad input: an image that cannot be decoded (empty string, not an image,
truncated or corrupt file), one smaller than `min_side`, or one whose
header declares more than `max_pixels` pixels makes the request fail with
`InvalidArgumentError` (HTTP 400 from TF Serving's REST API) naming the
problem; the server keeps running. The whole batch is rejected when any of
its images is bad: send images one per request, or retry without the
offending one, when partial results are wanted. The pixel limit is checked
on the JPEG, PNG and GIF headers before any pixel is decoded (the
decompression-bomb guard of `image_io.load_image`); BMP and WebP are
checked after decoding.

Decoding follows `keras_rmac.data.image_io.load_image`, pixel for pixel,
for JPEG (grayscale, RGB and CMYK: accurate integer DCT with fancy
upsampling, as Pillow), PNG of every colour type (8-bit, palette, gray,
alpha composited on white, 16-bit gray `round(v / 257)` and 16-bit colour
high byte), BMP, WebP without alpha and GIF without transparency. Known
differences, which the client should take care of where they matter:
EXIF orientation is not applied (send upright pixels), GIF transparency and
WebP alpha are not composited on white, 16-bit PNG with a `tRNS` entry may
differ by 1 level, and for animated files both use the first frame.
"""

import json
import logging
import os
import pathlib
import shutil
import uuid
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rmac.data import image_io
from keras_rmac.models.rmac_model import _validate_scales
from keras_rmac.models.rmac_model import scale_sizes
from keras_rmac.version import __version__

logger = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
"""Signature on encoded image files (TF Serving's default)."""

IMAGES_SIGNATURE = "serving_images"
"""Signature on float32 RGB pixel arrays."""

BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT = "descriptor"

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "keras_rmac_export.json"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_HEAD = 32  # Header bytes read to find the declared size.
_TMP_PREFIX = ".keras_rmac_export-"  # Not an integer: TF Serving skips it.


# --------------------------------------------------------------------------
# In-graph decoding.


def _decode_png(data):
    # Native channels (1 gray, 2 gray + alpha, 3 RGB, 4 RGBA; palettes are
    # expanded) at 16 bits, so 16-bit files keep their precision; 8-bit
    # values v come out as 257 * v.
    x = tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.int32)
    channels = tf.shape(x)[-1]

    def gray():
        # round(v / 257), half up: 16-bit gray as image_io, 8-bit exact.
        return tf.tile((2 * x[..., :1] + 257) // 514, [1, 1, 3])

    def color():
        return x[..., :3] // 256  # High byte, as Pillow reduces 16-bit RGB.

    def alpha():
        return x[..., -1:] // 256

    def opaque():
        return tf.fill(tf.concat([tf.shape(x)[:2], [1]], 0), 255)

    rgb = tf.cond(channels < 3, gray, color)
    a = tf.cond(tf.equal(channels % 2, 0), alpha, opaque)
    # Alpha composited on white, rounded, as image_io does.
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return tf.cast(out, tf.uint8)


def _decode_jpeg(data):
    # Accurate integer DCT and fancy upsampling: Pillow's libjpeg defaults.
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")


def _decode_other(data):
    # GIF (first frame), BMP, WebP; raises on empty or unknown data.
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _declared_size(data):
    """`(height, width)` int64 from the file header, `(0, 0)` if unknown."""
    head = tf.strings.substr(data, 0, _HEAD)
    head = tf.strings.substr(tf.strings.join([head, b"\0" * _HEAD]), 0, _HEAD)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def big_endian(i):
        return b[i] * 16777216 + b[i + 1] * 65536 + b[i + 2] * 256 + b[i + 3]

    def png():
        return big_endian(20), big_endian(16)

    def gif():
        return b[9] * 256 + b[8], b[7] * 256 + b[6]

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1]

    def unknown():
        return tf.constant(0, tf.int64), tf.constant(0, tf.int64)

    is_png = tf.logical_and(
        tf.equal(tf.strings.substr(head, 0, 8), _PNG_MAGIC),
        tf.equal(tf.strings.substr(head, 12, 4), b"IHDR"),
    )
    magic6 = tf.strings.substr(head, 0, 6)
    is_gif = tf.logical_or(
        tf.equal(magic6, b"GIF87a"), tf.equal(magic6, b"GIF89a")
    )
    return tf.cond(
        tf.io.is_jpeg(data),
        jpeg,
        lambda: tf.cond(is_png, png, lambda: tf.cond(is_gif, gif, unknown)),
    )


def _check(condition, message, tensor):
    """`tensor`, after asserting `condition` (InvalidArgumentError)."""
    check = tf.debugging.Assert(condition, [message], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def decode_image_bytes(
    data,
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
    min_side: int = image_io.MIN_SIDE,
):
    """Decodes one encoded image file to RGB `uint8`, with TensorFlow ops.

    The in-graph counterpart of `keras_rmac.data.image_io.load_image` used
    by the exported `serving_default` signature; it runs in `tf.function`
    and in a SavedModel without Python. JPEG, PNG, GIF, BMP and WebP are
    decoded as `load_image` decodes them (see the module docstring for the
    exact rules and the few differences).

    Args:
        data: scalar string tensor. The bytes of an image file.
        max_pixels: int. Largest accepted width x height; JPEG, PNG and GIF
            are checked on the header, before decoding. Defaults to
            `image_io.DEFAULT_MAX_PIXELS`.
        min_side: int. Smallest accepted width or height. Defaults to
            `image_io.MIN_SIDE`.

    Returns:
        `uint8` tensor `(H, W, 3)`.

    Raises:
        tf.errors.InvalidArgumentError: the bytes are empty, not an image,
            corrupt or truncated, or the image is too small or too large
            (when run eagerly; in a graph the error comes from the run).

    Example:

    >>> png = tf.io.encode_png(tf.zeros((10, 20, 3), tf.uint8))
    >>> decode_image_bytes(png).shape
    TensorShape([10, 20, 3])
    """
    data = tf.convert_to_tensor(data, tf.string)
    declared_h, declared_w = _declared_size(data)
    data = _check(
        declared_h * declared_w <= max_pixels,
        tf.strings.format(
            "image too large: header declares {}x{} pixels, more than "
            "max_pixels=" + str(max_pixels) + " (possible decompression "
            "bomb); export with a larger max_pixels if it is genuine",
            (declared_w, declared_h),
        ),
        data,
    )
    is_png = tf.equal(tf.strings.substr(data, 0, 8), _PNG_MAGIC)
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: _decode_jpeg(data),
        lambda: tf.cond(
            is_png, lambda: _decode_png(data), lambda: _decode_other(data)
        ),
    )
    image.set_shape([None, None, 3])
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[0], shape[1]
    image = _check(
        tf.minimum(height, width) >= min_side,
        tf.strings.format(
            "image too small ({}x{}); need at least "
            f"{min_side}x{min_side} pixels",
            (width, height),
        ),
        image,
    )
    return _check(
        height * width <= max_pixels,
        tf.strings.format(
            "image too large: decoded size {}x{} exceeds max_pixels="
            + str(max_pixels),
            (width, height),
        ),
        image,
    )


# --------------------------------------------------------------------------
# Serving functions.


class _Serving:
    """The serving computations around one model, as plain TF functions."""

    def __init__(self, model, scales, max_size, max_pixels, min_side):
        self.model = model
        self.scales = scales
        self.max_size = max_size
        self.sizes = scale_sizes(max_size, scales)
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.dim = getattr(model, "descriptor_dim", None)
        # The network as one function, traced once and called from every
        # scale of both signatures (instead of one trace per call site).
        self.network = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
            autograph=False,
        )

    def _size(self, longest, scale, size):
        """Longest side at one scale: `scale_sizes` in the graph."""
        if size is not None:
            return tf.constant(size, tf.int32)
        # max(1, round(longest * s)), round half to even like Python's.
        scaled = tf.round(tf.cast(longest, tf.float64) * scale)
        return tf.maximum(tf.cast(scaled, tf.int32), 1)

    def _describe(self, images):
        """Descriptors `(B, D)` of same-size float32 images `(B, H, W, 3)`."""
        shape = tf.shape(images)
        longest = tf.maximum(shape[1], shape[2])
        outputs = []
        for scale, size in zip(self.scales, self.sizes):
            size = self._size(longest, scale, size)
            # As RMACModel.extract: resize only when the longest side is
            # not already the target.
            resized = tf.cond(
                tf.equal(longest, size),
                lambda: images,
                lambda size=size: image_io.resize_longest_side(images, size),
            )
            outputs.append(self.network(resized))
        if len(outputs) == 1:
            return outputs[0]
        # Multi-resolution: sum of per-scale descriptors, L2-normalised
        # (in float64, as extract).
        total = tf.add_n([tf.cast(d, tf.float64) for d in outputs])
        norm = tf.norm(total, axis=-1, keepdims=True)
        return tf.cast(total / tf.maximum(norm, 1e-6), tf.float32)

    @tf.autograph.experimental.do_not_convert
    def _describe_one(self, data):
        image = decode_image_bytes(data, self.max_pixels, self.min_side)
        image = tf.cast(image, tf.float32)
        return self._describe(image[None])[0]

    def from_bytes(self, image_bytes):
        descriptors = tf.map_fn(
            self._describe_one,
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.dim], tf.float32),
        )
        return {OUTPUT: descriptors}

    def from_images(self, images):
        return {OUTPUT: self._describe(tf.cast(images, tf.float32))}


# --------------------------------------------------------------------------
# Warm-up requests: protobuf wire format written by hand, so that
# tensorflow-serving-api is not needed. Field numbers from
# tensorflow_serving/apis/{prediction_log,predict,model}.proto:
# PredictionLog.predict_log = 6, PredictLog.request = 1,
# PredictRequest.model_spec = 1, PredictRequest.inputs = 2 (map entries:
# key = 1, value = 2), ModelSpec.signature_name = 3.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _prediction_log(
    inputs: dict[str, bytes], signature_name: str = SERVING_SIGNATURE
) -> bytes:
    """A serialized `PredictionLog` holding one `PredictRequest`.

    Args:
        inputs: input name -> serialized `tensorflow.TensorProto`.
        signature_name: the signature the request calls.
    """
    model_spec = _field(3, signature_name.encode())
    request = _field(1, model_spec)
    for name in sorted(inputs):
        entry = _field(1, name.encode()) + _field(2, inputs[name])
        request += _field(2, entry)
    return _field(6, _field(1, request))


def _default_warmup_image(max_size: int | None) -> bytes:
    """A small gradient PNG, 4:3, longest side `max_size` (or 224)."""
    width = max_size or 224
    height = max(image_io.MIN_SIDE, (3 * width + 2) // 4)
    width = max(image_io.MIN_SIDE, width)
    y = np.linspace(0, 255, height)[:, None]
    x = np.linspace(0, 255, width)[None, :]
    rgb = np.stack(
        [
            np.broadcast_to(x, (height, width)),
            np.broadcast_to(y, (height, width)),
            (x + y) / 2,
        ],
        axis=-1,
    )
    return tf.io.encode_png(np.round(rgb).astype(np.uint8)).numpy()


def _warmup_bytes(warmup_images, max_size):
    """[(label, bytes)] of the warm-up images."""
    if warmup_images is None:
        return [("generated PNG", _default_warmup_image(max_size))]
    if isinstance(warmup_images, (str, bytes, os.PathLike)):
        warmup_images = [warmup_images]
    items = []
    for item in warmup_images:
        if isinstance(item, bytes):
            items.append((f"bytes #{len(items)}", item))
            continue
        path = os.fspath(item)
        try:
            with open(path, "rb") as f:
                items.append((path, f.read()))
        except OSError as exc:
            raise FileNotFoundError(
                f"Cannot read warm-up image {path!r}: {exc.strerror or exc}. "
                "Pass readable image files (or warmup_images=() for none)."
            ) from None
    return items


# --------------------------------------------------------------------------
# Export.


def _check_positive_int(name, value, allow_none=True, minimum=1):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be an int >= {minimum}"
            + (" or None" if allow_none else "")
            + f". Received: {name}={value!r}"
        )
    if value < minimum:
        raise ValueError(
            f"`{name}` must be an int >= {minimum}. Received: {name}={value}"
        )
    return int(value)


def existing_versions(path) -> list[int]:
    """Integer version directories under a TF Serving model base path.

    Args:
        path: str or os.PathLike. The model base path.

    Returns:
        Sorted list of ints; empty when `path` does not exist.

    Example:

    >>> import uuid
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
    version = _check_positive_int("version", version, False, minimum=0)
    if version in versions or os.path.exists(os.path.join(path, str(version))):
        raise FileExistsError(
            f"Version directory {os.path.join(path, str(version))!r} "
            "already exists (a server may be serving it). Pass another "
            f"`version` (next free: {next_free}) or remove it first."
        )
    return version


def export_saved_model(
    model,
    path,
    scales: Sequence[float] = (1.0,),
    max_size: int | None = None,
    version: int | None = None,
    warmup_images=None,
    *,
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
    min_side: int = image_io.MIN_SIDE,
) -> str:
    """Exports a descriptor model as a SavedModel for TF Serving.

    Writes `<path>/<version>/`, a SavedModel whose `serving_default`
    signature maps encoded image files (`image_bytes`, string `(B,)`) to
    L2-normalised descriptors (`descriptor`, float32 `(B, D)`) and whose
    `serving_images` signature does the same from float32 RGB pixels
    (`images`, `(B, H, W, 3)`, values in `[0, 255]`). Resizing and
    multi-resolution follow `RMACModel.extract(max_size=..., scales=...)`
    exactly, so the served descriptors match an index built with the same
    settings. See the module docstring for decoding and bad input.

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
        max_pixels: int. Largest accepted width x height of a request image.
            Defaults to `image_io.DEFAULT_MAX_PIXELS` (100 megapixels).
        min_side: int. Smallest accepted width or height. Defaults to
            `image_io.MIN_SIDE` (8).

    Returns:
        str: the version directory written.

    Raises:
        FileExistsError: `<path>/<version>` already exists.
        FileNotFoundError: a warm-up image cannot be read.
        ValueError: invalid `scales`, `max_size` or `version`, or a warm-up
            image that the exported graph cannot decode.

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
    scales = _validate_scales(scales)
    max_size = _check_positive_int("max_size", max_size)
    max_pixels = _check_positive_int("max_pixels", max_pixels, False)
    min_side = _check_positive_int("min_side", min_side, False)
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
    warmup = _warmup_bytes(warmup_images, max_size)
    # Decode each warm-up image with the ops of the exported graph: a bad
    # one fails now, with its name, rather than at server start.
    for label, data in warmup:
        try:
            decode_image_bytes(data, max_pixels, min_side)
        except tf.errors.InvalidArgumentError as exc:
            raise ValueError(
                f"Warm-up image {label} cannot be served: {exc.message}"
            ) from None

    if not model.built:
        model(np.zeros((1, 64, 64, 3), np.float32))
    serving = _Serving(model, scales, max_size, max_pixels, min_side)
    # Signatures from functions traced once, here. The tf.functions are
    # not attributes of the saved object: saving would trace them again.
    signatures = {
        SERVING_SIGNATURE: tf.function(
            serving.from_bytes,
            input_signature=[
                tf.TensorSpec([None], tf.string, name=BYTES_INPUT)
            ],
            autograph=False,
        ).get_concrete_function(),
        IMAGES_SIGNATURE: tf.function(
            serving.from_images,
            input_signature=[
                tf.TensorSpec(
                    [None, None, None, 3], tf.float32, name=IMAGES_INPUT
                )
            ],
            autograph=False,
        ).get_concrete_function(),
    }
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
            with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as w:
                for _, data in warmup:
                    tensor = tf.make_tensor_proto(np.array([data], object))
                    w.write(
                        _prediction_log(
                            {BYTES_INPUT: tensor.SerializeToString()}
                        )
                    )
        _write_metadata(extra, model, serving, len(warmup))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def _write_metadata(folder, model, serving, warmup_count):
    fingerprint = getattr(model, "fingerprint", None)
    metadata = {
        "keras_rmac_version": __version__,
        "fingerprint": fingerprint() if callable(fingerprint) else None,
        "descriptor_dim": serving.dim,
        "max_size": serving.max_size,
        "scales": list(serving.scales),
        "scale_sizes": serving.sizes,
        "max_pixels": serving.max_pixels,
        "min_side": serving.min_side,
        "signatures": {
            SERVING_SIGNATURE: {"inputs": {BYTES_INPUT: "string (B,)"}},
            IMAGES_SIGNATURE: {
                "inputs": {IMAGES_INPUT: "float32 (B, H, W, 3), RGB 0-255"}
            },
        },
        "outputs": {OUTPUT: f"float32 (B, {serving.dim}), L2-normalised"},
        "warmup_requests": warmup_count,
    }
    text = json.dumps(metadata, indent=2) + "\n"
    pathlib.Path(folder, METADATA_FILE).write_text(text)
