"""Test photos and a tiny R-MAC model for the index / search tests."""

import argparse
import io
import pathlib
import struct
import zlib

import keras
import numpy as np
from PIL import Image

from keras_rmac.cli import index as index_command
from keras_rmac.cli import search as search_command
from keras_rmac.models.rmac_model import RMACModel


def cli(argv) -> int:
    """`keras-rmac index|search ...` (only these sub-commands registered,
    so the tests do not depend on the other sub-command modules)."""
    parser = argparse.ArgumentParser(prog="keras-rmac")
    subparsers = parser.add_subparsers(dest="command")
    index_command.add_parser(subparsers)
    search_command.add_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.run(args))


def tiny_backbone(seed: int = 0) -> keras.Model:
    """Two random 3x3 convolutions, stride 4 in all, 16 channels."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(x)
    return keras.Model(inputs, x)


def tiny_model(seed: int = 0) -> RMACModel:
    """An RMACModel over a two-layer random conv net (16-D descriptors),
    with shift + PCA-whitening learned on other generated photos."""
    model = RMACModel(
        backbone=tiny_backbone(seed), weights=None, preprocessing="tf"
    )
    # Whitening spreads the descriptors of random features apart, so that
    # even a coarse compact code tells the test photos apart.
    model.adapt_pca([photo(1000 + i) for i in range(40)], verbose=0)
    # A call builds the model: saved unbuilt, it would lose the PCA.
    model(np.zeros((1, 32, 32, 3), np.float32))
    return model


def photo(seed: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A smooth random colour photo, different for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    return np.asarray(image)


def quadrants(height: int = 48, width: int = 64) -> np.ndarray:
    """An asymmetric photo: four colours and a white top-left marker."""
    image = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    image[:h2, :w2] = (220, 30, 30)
    image[:h2, w2:] = (30, 220, 30)
    image[h2:, :w2] = (30, 30, 220)
    image[h2:, w2:] = (220, 220, 30)
    image[:10, :10] = 255
    return image


def save(path: pathlib.Path, array: np.ndarray, **kwargs) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(width: int = 50000, height: int = 50000) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = b"\x00" * 17 * 16  # 16 rows of 16 gray pixels, filter 0
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


EXIF_ORIENTATION = 0x0112


def exif_rotated_jpeg(path: pathlib.Path, upright: np.ndarray) -> None:
    """A JPEG storing `upright` turned 90 degrees CCW, with orientation 6."""
    stored = np.ascontiguousarray(np.rot90(upright, 1))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    save(path, stored, quality=95, exif=exif.tobytes())


def make_mixed_folder(root: pathlib.Path):
    """Good photos of many formats mixed with every kind of bad file.

    Returns:
        `(good, bad)`: relative paths of the readable photos, and a dict
        mapping each bad file's relative path to a substring of the reason
        `image_io` gives for it.
    """
    good = []
    for i in range(5):
        name = f"good{i}.png" if i % 2 else f"sub/good{i}.jpg"
        save(root / name, photo(i), **({} if i % 2 else {"quality": 95}))
        good.append(name)
    # Readable, but each needs a colour conversion or a transform.
    cmyk = Image.fromarray(photo(10)).convert("CMYK")
    cmyk.save(root / "cmyk.jpg", quality=95)
    gray16 = (photo(11)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    Image.fromarray(photo(12)).convert("P").save(root / "palette.png")
    frames = [Image.fromarray(photo(13)), Image.fromarray(photo(14))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    exif_rotated_jpeg(root / "deep/er/exif.jpg", quadrants())
    good += ["cmyk.jpg", "gray16.png", "palette.png", "anim.gif"]
    good.append("deep/er/exif.jpg")

    buffer = io.BytesIO()
    Image.fromarray(photo(20)).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    (root / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.jpg").write_text("shopping list: milk, eggs\n" * 20)
    (root / "empty.jpg").write_bytes(b"")
    save(root / "dot.png", np.full((1, 1, 3), 128, np.uint8))
    (root / "bomb.png").write_bytes(bomb_png())
    bad = {
        "corrupt.jpg": "truncated",
        "notes.jpg": "looks like text",
        "empty.jpg": "empty file",
        "dot.png": "too small",
        "bomb.png": "too large",
    }
    return sorted(good), bad
