"""Small images written for the data tests."""

import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

from keras_rmac.data.local_features import require_cv2


def write_image(path, array):
    """Saves a uint8 array as an image file (folders created); the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def solid(colour, size=(12, 16)):
    """An image of one colour, `size` = (height, width)."""
    image = np.zeros(size + (3,), np.uint8)
    image[:] = colour
    return image


# Textured pictures and warps for local features and cleaning.


def textured(seed, size=160):
    """A random picture of many coloured shapes: plenty of SIFT corners."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x0, y0 = rng.integers(0, size - 8, 2)
        w, h = rng.integers(6, size // 3, 2)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        if rng.random() < 0.5:
            draw.rectangle(shape, fill=color)
        else:
            draw.ellipse(shape, fill=color)
    return np.asarray(image)


def warp(image, affine, out_size):
    """Warps with a 2x3 affine (original -> output pixel centres)."""
    cv2 = require_cv2()
    return cv2.warpAffine(
        image,
        np.asarray(affine, np.float64),
        (out_size[1], out_size[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def rotation(degrees, scale, center, shift):
    t = np.deg2rad(degrees)
    linear = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    center = np.asarray(center, np.float64)
    offset = center + np.asarray(shift, np.float64) - linear @ center
    return np.concatenate([linear, offset[:, None]], axis=1)


def save(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def view(base, k, out=200):
    """k-th view of a textured object pasted on black, slightly rotated."""
    rng = np.random.default_rng(1000 + k)
    affine = rotation(
        rng.uniform(-12, 12),
        rng.uniform(0.9, 1.1),
        (80, 80),
        (20 + rng.uniform(-8, 8), 20 + rng.uniform(-8, 8)),
    )
    return warp(base, affine, (out, out))
