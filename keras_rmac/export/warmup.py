"""TF Serving warm-up requests, written without tensorflow-serving-api.

TF Serving replays `assets.extra/tf_serving_warmup_requests`, a TFRecord of
`tensorflow.serving.PredictionLog` protos, before it reports a model
ready. The protos are written here in the protobuf wire format by hand.
Field numbers from tensorflow_serving/apis/{prediction_log,predict,
model}.proto: PredictionLog.predict_log = 6, PredictLog.request = 1,
PredictRequest.model_spec = 1, PredictRequest.inputs = 2 (map entries:
key = 1, value = 2), ModelSpec.signature_name = 3.
"""

import os

import numpy as np
import tensorflow as tf

from keras_rmac.data import image_io
from keras_rmac.export.decode import decode_image_bytes
from keras_rmac.export.serving import BYTES_INPUT
from keras_rmac.export.serving import SERVING_SIGNATURE

WARMUP_FILE = "tf_serving_warmup_requests"


def varint(value: int) -> bytes:
    """`value` (an int >= 0) as a protobuf base-128 varint."""
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
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def prediction_log(
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


def default_image(max_size: int | None) -> bytes:
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


def _read(warmup_images, max_size):
    """[(label, bytes)] of the warm-up images."""
    if warmup_images is None:
        return [("generated PNG", default_image(max_size))]
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


def load_warmup_images(warmup_images, max_size, max_pixels, min_side):
    """The encoded warm-up images, each checked by the serving decoder.

    Args:
        warmup_images: paths or raw encoded bytes; None for one generated
            PNG of longest side `max_size`; an empty sequence for none.
        max_size: int or None. Longest side of the generated PNG.
        max_pixels: int. As in `decode_image_bytes`.
        min_side: int. As in `decode_image_bytes`.

    Returns:
        list of bytes.

    Raises:
        FileNotFoundError: a warm-up image cannot be read.
        ValueError: the exported graph cannot decode a warm-up image (so
            it fails now, with its name, rather than at server start).
    """
    items = _read(warmup_images, max_size)
    for label, data in items:
        try:
            decode_image_bytes(data, max_pixels, min_side)
        except tf.errors.InvalidArgumentError as exc:
            raise ValueError(
                f"Warm-up image {label} cannot be served: {exc.message}"
            ) from None
    return [data for _, data in items]


def write_warmup_file(path, images) -> None:
    """Writes one `serving_default` predict request per image to `path`.

    Args:
        path: str. The TFRecord file to write.
        images: list of bytes. Encoded image files.
    """
    with tf.io.TFRecordWriter(path) as writer:
        for data in images:
            tensor = tf.make_tensor_proto(np.array([data], object))
            writer.write(
                prediction_log({BYTES_INPUT: tensor.SerializeToString()})
            )
