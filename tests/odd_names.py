"""Odd but legal Linux file names, and a folder of tiny photos named so.

Linux allows any byte but `/` and NUL in a name, up to 255 bytes. Each
name here broke, or could break, a line of output, a terminal, a UTF-8
writer or Pillow's text drawing.
"""

import os

import numpy as np
from PIL import Image

# (name as bytes, its display form written by hand).
ODD_NAMES = [
    (b"new\nline.jpg", r"new\nline.jpg"),
    (b"cr\rtab\t.jpg", r"cr\rtab\t.jpg"),
    (b"esc\x1b[31mred.jpg", r"esc\x1b[31mred.jpg"),
    (b"del\x7fbell\x07.png", r"del\x7fbell\x07.png"),
    ("c1\x85\x9b.jpg".encode(), r"c1\u0085\u009b.jpg"),
    (b"bad\xff\xfe.jpg", r"bad\xff\xfe.jpg"),
    (b"back\\slash.jpg", r"back\\slash.jpg"),
    (b"back\\nslash.jpg", r"back\\nslash.jpg"),
    ("rtl\u202eexe.jpg".encode(), r"rtl\u202eexe.jpg"),
    ("zero\u200bwidth\u200d.jpg".encode(), r"zero\u200bwidth\u200d.jpg"),
    ("\u05e9\u05dc\u05d5\u05dd.jpg".encode(), "\u05e9\u05dc\u05d5\u05dd.jpg"),
    (b"<img src=x onerror=alert(1)>.jpg", "<img src=x onerror=alert(1)>.jpg"),
    (b'"quote & amp.jpg', '"quote & amp.jpg'),
    (b" lead space .jpg", r"\x20lead space .jpg"),
    (b"long" * 61 + b"_end.jpg", "long" * 61 + "_end.jpg"),  # 252 bytes
]


def make_odd_folder(root: str, size: int = 48) -> list[str]:
    """Writes one small, distinct PNG-or-JPEG photo per odd name.

    Args:
        root: str. The folder (created).
        size: int. Side of each photo in pixels.

    Returns:
        The paths, as `os.fsdecode` gives them (undecodable bytes as
        surrogate escapes), in `ODD_NAMES` order.
    """
    os.makedirs(root, exist_ok=True)
    paths = []
    for i, (name, _) in enumerate(ODD_NAMES):
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        path = os.path.join(os.fsencode(root), name)
        kind = "PNG" if name.endswith(b".png") else "JPEG"
        with open(path, "wb") as f:  # bytes path: no decoding on the way
            image.save(f, format=kind)
        paths.append(os.fsdecode(path))
    return paths
