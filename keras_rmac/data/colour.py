"""The colour policy: a decoded Pillow image of any mode -> upright RGB.

`keras_rmac.data.image_io.load_image` opens and checks a file, then hands the
loaded Pillow image to `exif_upright` and `to_rgb`. The export's in-graph
decoder (`keras_rmac.export`) follows the same rules.

Colour policy (what `load_image` returns for each Pillow mode):

- EXIF (and XMP) orientation is applied first, so the array is upright.
- Transparency (RGBA, LA, PA, palette or grayscale with a `tRNS` entry, GIF
  transparency) is alpha-composited on white: product photos with a
  transparent background are meant to be seen on white, and dropping alpha
  would expose whatever colour happens to be stored under transparent pixels.
- 16-bit grayscale (`I;16*`) and 32-bit integer (`I`) images are read as
  intensities in `[0, 65535]` and scaled to 8 bits by value,
  `round(v / 257)` (half up), so 65535 -> 255 and 32896 -> 128. `I` values
  outside `[0, 65535]` are clipped. 16-bit RGB(A) PNGs are reduced by Pillow
  itself to their high byte, `floor(v / 256)`, which is within 1 of the same
  rule.
- 32-bit float (`F`) images are taken to be on the 8-bit scale, clipped to
  `[0, 255]` and rounded (Pillow's own `F` -> `L` convention).
- CMYK, YCbCr, 1-bit, grayscale and palette images go through Pillow's
  conversion to RGB. CMYK uses Pillow's naive formula (no ICC colour
  management), so colours of print-oriented CMYK JPEGs are approximate.
- Multi-frame files (GIF, APNG, MPO, multi-page TIFF): the first frame only.
"""

import logging

import numpy as np
from PIL import Image
from PIL import ImageOps

logger = logging.getLogger(__name__)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """round((rgb * a + 255 * (255 - a)) / 255) in integer arithmetic."""
    a = alpha.astype(np.uint32)[..., None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class UnsupportedMode(Exception):
    """Pillow cannot convert this colour mode to RGB."""


def to_rgb(im: Image.Image) -> np.ndarray:
    """Converts a loaded Pillow image of any mode to (H, W, 3) uint8."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(im).astype(np.int64)
        gray = (2 * np.clip(values, 0, 65535) + 257) // 514  # round(v / 257)
        rgb = np.repeat(gray.astype(np.uint8)[..., None], 3, axis=-1)
        transparent = im.info.get("transparency")
        if isinstance(transparent, int):
            alpha = np.where(values == transparent, 0, 255)
            rgb = _composite_on_white(rgb, alpha)
        return rgb
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64))
        gray = np.floor(np.clip(values, 0.0, 255.0) + 0.5).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    try:
        if im.has_transparency_data:
            rgba = np.asarray(im.convert("RGBA"))
            return _composite_on_white(rgba[..., :3], rgba[..., 3])
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:
        raise UnsupportedMode(mode) from exc


def exif_upright(im: Image.Image, path: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # Broken metadata must not lose the pixels.
        logger.warning(
            "%s: ignoring unreadable EXIF orientation (%s: %s); the image "
            "is used as stored",
            path,
            type(exc).__name__,
            exc,
        )
        return im
