"""Test helpers for the export tests: a tiny R-MAC model and image files."""

import struct
import zlib

import keras
import numpy as np
from PIL import Image

from keras_rmac.models import RMACModel


def tiny_rmac_model(seed=0):
    """RMACModel on a two-convolution backbone: builds and traces fast."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    backbone = keras.Model(inputs, x)
    model = RMACModel(backbone=backbone, weights=None, preprocessing="tf")
    model(np.zeros((1, 32, 32, 3), np.float32))  # Build.
    return model


def png_bytes(width, height, bit_depth, color_type, rows, extra_chunks=()):
    """A PNG written by hand: any bit depth / colour type, or a fake header.

    `rows` is the raw scanline data without filter bytes (None writes no
    IDAT at all, for header-only files).
    """

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        size = struct.pack(">I", len(data))
        return size + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(
        ">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0
    )
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    for kind, data in extra_chunks:
        out += chunk(kind, data)
    if rows is not None:
        raw = b"".join(b"\x00" + row for row in rows)
        out += chunk(b"IDAT", zlib.compress(raw))
    return out + chunk(b"IEND", b"")


def write_images(folder):
    """Image files of several formats, colour modes and sizes.

    Sizes hit the resize edge cases used by the tests: longest side 48
    (equal to max_size=48: no resize), 65 (65 * 0.5 = 32.5 rounds half to
    even), smaller than 48 (upscaled) and larger (downscaled).
    """
    rng = np.random.default_rng(0)

    def noise(h, w, c=3):
        smooth = np.add.outer(np.arange(h), 2 * np.arange(w))
        base = (smooth[..., None] * (np.arange(c) + 1)) % 256
        jitter = rng.integers(-40, 40, (h, w, c))
        return np.clip(base + jitter, 0, 255).astype(np.uint8)

    specs = [
        ("rgb_40x60.png", Image.fromarray(noise(40, 60)), {}),
        ("rgba_48x31.png", Image.fromarray(noise(48, 31, 4), "RGBA"), {}),
        ("gray_65x30.png", Image.fromarray(noise(65, 30, 1)[..., 0]), {}),
        (
            "palette_20x25.png",
            Image.fromarray(noise(20, 25)).quantize(12),
            {},
        ),
        ("q75_50x37.jpg", Image.fromarray(noise(50, 37)), {"quality": 75}),
        ("gray_33x47.jpg", Image.fromarray(noise(33, 47, 1)[..., 0]), {}),
        ("rgb_30x30.bmp", Image.fromarray(noise(30, 30)), {}),
        ("rgb_24x36.gif", Image.fromarray(noise(24, 36)), {}),
    ]
    paths = []
    for name, image, kwargs in specs:
        path = folder / name
        image.save(path, **kwargs)
        paths.append(str(path))
    return paths


def serving_proto_classes():
    """`PredictionLog` & co. built from a descriptor, as a parsing oracle.

    The messages of tensorflow_serving/apis/{prediction_log,predict,
    model}.proto that a predict warm-up record uses, with their field
    numbers, declared here so that tests parse warm-up files with the
    protobuf library itself (no tensorflow-serving-api dependency). The
    package name differs from TF Serving's so the two never clash; it does
    not appear on the wire.

    Returns:
        dict name -> message class: `ModelSpec`, `PredictRequest`,
        `PredictLog`, `PredictionLog`.
    """
    from google.protobuf import descriptor_pb2
    from google.protobuf import descriptor_pool
    from google.protobuf import message_factory
    from tensorflow.core.framework import tensor_pb2

    package = "keras_rmac_tests.serving"
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(f"{package}.PredictionLog")
    except KeyError:
        f = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(
            name="keras_rmac_tests/serving_apis.proto",
            package=package,
            syntax="proto3",
            dependency=[tensor_pb2.DESCRIPTOR.name],
        )

        def message(name, fields):
            msg = proto.message_type.add(name=name)
            for number, field_name, kind, type_name, label in fields:
                field = msg.field.add(
                    name=field_name, number=number, type=kind, label=label
                )
                if type_name:
                    field.type_name = type_name
            return msg

        optional = f.LABEL_OPTIONAL
        message(
            "ModelSpec",
            [
                (1, "name", f.TYPE_STRING, None, optional),
                (3, "signature_name", f.TYPE_STRING, None, optional),
            ],
        )
        request = message(
            "PredictRequest",
            [
                (
                    1,
                    "model_spec",
                    f.TYPE_MESSAGE,
                    f".{package}.ModelSpec",
                    optional,
                ),
                (
                    2,
                    "inputs",
                    f.TYPE_MESSAGE,
                    f".{package}.PredictRequest.InputsEntry",
                    f.LABEL_REPEATED,
                ),
                (3, "output_filter", f.TYPE_STRING, None, f.LABEL_REPEATED),
            ],
        )
        entry = request.nested_type.add(name="InputsEntry")
        entry.options.map_entry = True
        entry.field.add(
            name="key", number=1, type=f.TYPE_STRING, label=optional
        )
        entry.field.add(
            name="value",
            number=2,
            type=f.TYPE_MESSAGE,
            type_name=".tensorflow.TensorProto",
            label=optional,
        )
        message(
            "PredictLog",
            [
                (
                    1,
                    "request",
                    f.TYPE_MESSAGE,
                    f".{package}.PredictRequest",
                    optional,
                )
            ],
        )
        message(
            "PredictionLog",
            [
                (
                    6,
                    "predict_log",
                    f.TYPE_MESSAGE,
                    f".{package}.PredictLog",
                    optional,
                )
            ],
        )
        pool.AddSerializedFile(proto.SerializeToString())
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{package}.{name}")
        )
        for name in (
            "ModelSpec",
            "PredictRequest",
            "PredictLog",
            "PredictionLog",
        )
    }
