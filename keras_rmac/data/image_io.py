"""Image decoding with a bad-file policy, folder listing and resizing.

This is the first stage of the retrieval pipeline: image bytes on disk become
upright `(H, W, 3)` `uint8` RGB arrays, and `resize_longest_side` brings them
to the scale the backbone sees.

Bad-file policy: `load_image` never lets a raw Pillow or OS exception escape.
Anything that prevents a usable RGB image (missing file, directory, empty
file, text or HTML saved with an image extension, corrupt or truncated data,
images too small to describe or so large they could be a decompression bomb)
raises `ImageError`, whose message names the file and says what is wrong.
`load_images` yields the `ImageError` in place of the array, so a long job
can skip, count and list bad files instead of dying on the first one.
One limit: damage inside JPEG scan data that libjpeg can resynchronise over
only produces a libjpeg warning that Pillow does not report, so such a file
decodes (with visible artefacts) instead of raising.

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

import collections
import concurrent.futures
import functools
import logging
import os
import stat
import threading
import warnings
from collections.abc import Iterable
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

MIN_SIDE = 8
"""Smallest accepted image side, in pixels (after decoding, before resizing).

Anything thinner is a spacer, tracking pixel, separator line or broken
thumbnail, not a photo: at the backbone's stride of 32 it does not even fill
one feature-map cell, and upscaling it to the network input size only
produces blur. 1x1 and 7x500 images are rejected; 8x8 icons still load.
"""

DEFAULT_MAX_PIXELS = 100_000_000
"""Default limit on declared width x height (100 megapixels, 10000x10000).

The declared size is read from the file header before any pixel memory is
allocated, so a small file that claims to be 50000x50000 is rejected without
decoding. 100 MP covers panoramas and 108 MP phone photos' smaller modes while
keeping a decoded RGBA buffer under about 400 MB. Pillow's own limit
(`PIL.Image.MAX_IMAGE_PIXELS`, about 89.5 MP) only warns below twice its
value; `load_image` applies `max_pixels` instead and turns Pillow's hard
refusal above twice its limit into `ImageError` as well. To accept images
larger than `2 * PIL.Image.MAX_IMAGE_PIXELS`, raise both limits. (Pillow
warnings raised later, while decoding pixels, e.g. for GIF frames larger than
the declared screen, are not captured; the decoded size is re-checked
against `max_pixels` instead.)
"""

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
)
"""Lower-case file extensions that `list_images` treats as images."""

# Image.open parses only the header; holding this lock while it runs lets us
# capture Pillow's DecompressionBombWarning with warnings.catch_warnings,
# which mutates process-global state and is not safe to enter from several
# threads at once. Pixel decoding happens outside the lock.
_OPEN_LOCK = threading.Lock()

# Leading bytes of the formats in IMAGE_EXTENSIONS, to tell a damaged header
# apart from a file that is not an image at all.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"P6", "PPM"),
)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageError(ValueError):
    """An image file that cannot be turned into a usable RGB array.

    Args:
        path: str. The offending file, as the caller named it.
        reason: str. Short human-readable explanation, e.g.
            `"empty file (0 bytes)"`.

    Example:

    >>> err = ImageError("photos/cat.jpg", "empty file (0 bytes)")
    >>> str(err)
    'photos/cat.jpg: empty file (0 bytes)'
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):
        # Picklable across processes despite the two-argument constructor.
        return (type(self), (self.path, self.reason))


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be an int >= {minimum}. Received: "
            f"{name}={value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(
            f"`{name}` must be an int >= {minimum}. Received: {name}={value}"
        )
    return int(value)


def _path_str(path: PathLike) -> str:
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(
            "`path` must be a str or os.PathLike (e.g. pathlib.Path). "
            f"Received: {path!r} of type {type(path).__name__}"
        ) from None
    return os.fsdecode(path) if isinstance(path, bytes) else path


def _magic_format(head: bytes) -> str | None:
    """Format name from the leading bytes, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _header_format(path: str) -> str:
    try:
        with open(path, "rb") as f:
            name = _magic_format(f.read(16))
    except OSError:
        name = None
    return f"{name} header" if name else "image header"


def _sniff(path: str) -> str:
    """Describes what a file that Pillow cannot identify looks like."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image file (looks like HTML, e.g. a saved error page)"
    if not head.strip(b"\x00"):
        return "not an image file (only zero bytes)"
    text = head.decode("utf-8", errors="replace")
    readable = sum(
        (c.isprintable() and c != "\ufffd") or c in "\t\r\n" for c in text
    )
    if readable >= 0.95 * len(text):
        return "not an image file (looks like text)"
    name = _magic_format(head)
    if name is not None:
        return f"corrupt {name} header (Pillow cannot parse it)"
    return (
        f"not a recognised image format (starts with bytes {head[:8].hex(' ')})"
    )


def _open_header(path: str) -> Image.Image:
    """Image.open (header only), with Pillow's bomb warning captured."""
    with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        im = Image.open(path)
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            # Our own declared-size check against `max_pixels` decides; the
            # caller may have allowed more than Pillow's default.
            logger.debug("%s: Pillow warned: %s", path, w.message)
            continue
        warnings.warn_explicit(
            w.message, w.category, w.filename, w.lineno, source=w.source
        )
    return im


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """round((rgb * a + 255 * (255 - a)) / 255) in integer arithmetic."""
    a = alpha.astype(np.uint32)[..., None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class _UnsupportedMode(Exception):
    """Pillow cannot convert this colour mode to RGB."""


def _to_rgb(im: Image.Image) -> np.ndarray:
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
        raise _UnsupportedMode(mode) from exc


def _exif_upright(im: Image.Image, path: str) -> Image.Image:
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


def _describe(exc: BaseException, what: str) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return (
            "image too large: Pillow refused it as a possible decompression "
            f"bomb ({exc}); to accept it, raise PIL.Image.MAX_IMAGE_PIXELS "
            "and `max_pixels`"
        )
    if isinstance(exc, MemoryError):
        return f"out of memory while decoding this {what}"
    if isinstance(exc, (OSError, SyntaxError, EOFError)):
        return f"corrupt or truncated {what} ({exc})"
    return f"could not decode {what} ({type(exc).__name__}: {exc})"


def _load(path: str, max_pixels: int, min_side: int) -> np.ndarray:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as exc:
        raise ImageError(
            path, f"cannot access file ({exc.strerror or exc})"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")

    try:
        im = _open_header(path)
    except UnidentifiedImageError:
        raise ImageError(path, _sniff(path)) from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except Exception as exc:
        raise ImageError(path, _describe(exc, _header_format(path))) from exc

    with im:
        what = im.format or "image"
        # Declared size from the header: checked before any pixel memory is
        # allocated, which is what stops decompression bombs.
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                path,
                f"image too large: declared {width}x{height} pixels exceeds "
                f"max_pixels={max_pixels:,} (possible decompression bomb); "
                "pass a larger `max_pixels` if the image is genuine",
            )
        if min(width, height) < min_side:
            raise ImageError(
                path,
                f"image too small ({width}x{height}); need at least "
                f"{min_side}x{min_side} pixels",
            )
        if what == "EPS":
            raise ImageError(
                path,
                "PostScript (EPS) is not supported: decoding it runs "
                "Ghostscript; convert it to PNG first",
            )
        try:
            im.load()
        except Exception as exc:
            raise ImageError(path, _describe(exc, what)) from exc
        if im.size[0] * im.size[1] > max_pixels:  # e.g. GIF frames > screen
            raise ImageError(
                path,
                f"image too large: decoded size {im.size[0]}x{im.size[1]} "
                f"exceeds max_pixels={max_pixels:,}",
            )
        upright = _exif_upright(im, path)
        try:
            return _to_rgb(upright)
        except _UnsupportedMode:
            raise ImageError(
                path,
                f"unsupported colour mode {im.mode!r} ({what}); convert the "
                "file to RGB",
            ) from None


def load_image(
    path: PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """Decodes an image file to an upright RGB `uint8` array.

    Applies the EXIF orientation, converts every colour mode to RGB
    (transparency composited on white, 16-bit scaled by value; see the
    module docstring for the exact rules) and takes the first frame of
    animated files. The file header is checked against `max_pixels` and
    `min_side` before any pixel data is decoded.

    Args:
        path: str or os.PathLike. The image file.
        max_pixels: int. Largest accepted declared width x height. Defaults
            to `DEFAULT_MAX_PIXELS` (100 megapixels).
        min_side: int. Smallest accepted width or height. Defaults to
            `MIN_SIDE` (8).

    Returns:
        `np.ndarray` of shape `(H, W, 3)` and dtype `uint8`, RGB, upright.

    Raises:
        ImageError: the file is missing, a directory, empty, not an image,
            corrupt or truncated, too small or too large. `err.path` is the
            file and `err.reason` says why.
        TypeError: `path` is not a str or path-like object.

    Example:

    >>> import tempfile, os
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "red.png")
    >>> Image.new("RGB", (20, 10), (255, 0, 0)).save(path)
    >>> load_image(path).shape
    (10, 20, 3)
    """
    path = _path_str(path)
    max_pixels = _check_int("max_pixels", max_pixels, 1)
    min_side = _check_int("min_side", min_side, 1)
    try:
        return _load(path, max_pixels, min_side)
    except ImageError:
        raise
    except Exception as exc:  # Policy: no raw exception escapes.
        raise ImageError(path, _describe(exc, "image")) from exc


def _load_or_error(
    path: PathLike, max_pixels: int, min_side: int
) -> np.ndarray | ImageError:
    try:
        return load_image(path, max_pixels, min_side=min_side)
    except ImageError as err:
        logger.debug("%s", err)
        return err


def load_images(
    paths: Iterable[PathLike],
    num_workers: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    min_side: int = MIN_SIDE,
    prefetch: int | None = None,
) -> Iterator[tuple[int, np.ndarray | ImageError]]:
    """Decodes many images in a thread pool, yielding them in input order.

    Pillow releases the GIL while decoding, so `num_workers` threads decode
    ahead while the caller consumes. At most `prefetch` images are decoded
    ahead of the one being yielded; `paths` is consumed lazily, so it can be
    a generator over millions of files. Bad files do not stop the stream:
    their `ImageError` is yielded in place of the array.

    Args:
        paths: iterable of str or os.PathLike. Image files.
        num_workers: int. Decoding threads; 0 decodes in the calling thread.
            Defaults to 4.
        max_pixels: int. As in `load_image`. Defaults to
            `DEFAULT_MAX_PIXELS`.
        min_side: int. As in `load_image`. Defaults to `MIN_SIDE`.
        prefetch: int or None. Maximum number of images in flight (submitted
            but not yet yielded). Defaults to `2 * num_workers`.

    Returns:
        An iterator of `(index, result)` where `index` is the position in
        `paths` and `result` is the `(H, W, 3)` `uint8` array or the
        `ImageError`. Closing the iterator early cancels pending work.

    Example:

    >>> errors = []
    >>> for i, image in load_images([]):
    ...     if isinstance(image, ImageError):
    ...         errors.append(image)
    """
    num_workers = _check_int("num_workers", num_workers, 0)
    max_pixels = _check_int("max_pixels", max_pixels, 1)
    min_side = _check_int("min_side", min_side, 1)
    if prefetch is None:
        prefetch = max(1, 2 * num_workers)
    prefetch = _check_int("prefetch", prefetch, 1)
    load = functools.partial(
        _load_or_error, max_pixels=max_pixels, min_side=min_side
    )
    if num_workers == 0:
        return ((i, load(p)) for i, p in enumerate(paths))
    return _threaded(paths, load, num_workers, prefetch)


def _threaded(paths, load, num_workers, prefetch):
    pending = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=num_workers, thread_name_prefix="keras_rmac_decode"
    ) as pool:
        try:
            for index, path in enumerate(paths):
                pending.append((index, pool.submit(load, path)))
                if len(pending) >= prefetch:
                    index, future = pending.popleft()
                    yield index, future.result()
            while pending:
                index, future = pending.popleft()
                yield index, future.result()
        finally:
            # Early close (break in the consumer): drop queued work; the
            # executor's exit then waits only for the running decodes.
            for _, future in pending:
                future.cancel()


def _is_image_name(name: str) -> bool:
    return (
        not name.startswith(".")
        and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    )


def list_images(root: PathLike, recursive: bool = True) -> list[str]:
    """Lists the image files under a folder, sorted.

    A file counts as an image by its extension (case-insensitive, see
    `IMAGE_EXTENSIONS`); contents are not opened. Hidden files and folders
    (names starting with `.`) are skipped, symbolic links to files are kept,
    symbolic links to folders are not followed, and folders that cannot be
    read are skipped with a warning.

    Args:
        root: str or os.PathLike. The folder to search.
        recursive: bool. Whether to descend into sub-folders. Defaults to
            True.

    Returns:
        Sorted list of paths, each `os.path.join(root, ...)` as a str.

    Raises:
        FileNotFoundError: `root` does not exist.
        NotADirectoryError: `root` is not a folder.

    Example:

    >>> import tempfile
    >>> list_images(tempfile.mkdtemp())
    []
    """
    root = _path_str(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"Image folder not found: {root!r}")
    if not os.path.isdir(root):
        raise NotADirectoryError(
            f"Expected a folder of images, got a file: {root!r}"
        )
    found = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if recursive:
                            folders.append(entry.path)
                    elif entry.is_file() and _is_image_name(entry.name):
                        found.append(entry.path)
        except OSError as exc:
            logger.warning("Skipping unreadable folder %s: %s", folder, exc)
    return sorted(found)


def target_size(
    height: int, width: int, max_size: int | None
) -> tuple[int, int]:
    """Output size of `resize_longest_side`, as Python ints.

    The longest side becomes exactly `max_size`; the other side becomes
    `max(1, round_half_up(side * max_size / longest))`, computed exactly in
    integers as `(2 * side * max_size + longest) // (2 * longest)`. Images
    are scaled up as well as down. Useful to bucket images by output shape.

    Args:
        height: int. Input height, >= 1.
        width: int. Input width, >= 1.
        max_size: int or None. Target longest side, >= 1; None keeps the
            input size.

    Returns:
        `(new_height, new_width)`.

    Example:

    >>> target_size(768, 1024, 512)
    (384, 512)
    >>> target_size(4, 2, 5)  # 2 * 5 / 4 = 2.5 rounds up
    (5, 3)
    """
    height = _check_int("height", height, 1)
    width = _check_int("width", width, 1)
    if max_size is None:
        return height, width
    max_size = _check_int("max_size", max_size, 1)
    longest = max(height, width)

    def side(s):
        return max(1, (2 * s * max_size + longest) // (2 * longest))

    return side(height), side(width)


def _target_size_tensor(height, width, max_size):
    """`target_size` on int64 tensors (any matching shapes)."""
    height = tf.cast(height, tf.int64)
    width = tf.cast(width, tf.int64)
    max_size = tf.cast(max_size, tf.int64)
    longest = tf.maximum(height, width)

    def side(s):
        return tf.maximum((2 * s * max_size + longest) // (2 * longest), 1)

    return side(height), side(width)


def resize_longest_side(image, max_size: int | None):
    """Resizes so the longest side is `max_size`, keeping the aspect ratio.

    TensorFlow ops only, so it runs inside `tf.function`, `tf.data` and
    exported SavedModels with unknown height and width. Sizes follow
    `target_size` exactly (longest side `max_size`, other side rounded half
    up, at least 1). Bilinear interpolation with `antialias=True`, so
    downscaling averages over the whole footprint instead of aliasing;
    images smaller than `max_size` are scaled up.

    Args:
        image: float tensor (or array) of shape `(H, W, 3)` or
            `(B, H, W, 3)`, values in `[0, 255]`. Other numeric dtypes are
            cast to float32.
        max_size: int, scalar integer tensor or None. Target longest side;
            None returns the image unchanged (as float32).

    Returns:
        float32 tensor of shape `(H', W', 3)` or `(B, H', W', 3)`.

    Example:

    >>> import numpy as np
    >>> resize_longest_side(np.zeros((600, 800, 3), "float32"), 400).shape
    TensorShape([300, 400, 3])
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.float32:
        image = tf.cast(image, tf.float32)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            "`image` must have shape (H, W, C) or (B, H, W, C). Received: "
            f"shape={image.shape}"
        )
    if max_size is None:
        return image
    if not tf.is_tensor(max_size):
        max_size = _check_int("max_size", max_size, 1)
    height, width = image.shape[-3], image.shape[-2]
    if height is not None and width is not None and isinstance(max_size, int):
        # Static shape known: compute in Python so the output shape is static.
        if height < 1 or width < 1:
            raise ValueError(
                f"Cannot resize an empty image of shape {image.shape}"
            )
        size = target_size(height, width, max_size)
    else:
        shape = tf.shape(image, out_type=tf.int64)
        height, width = shape[-3], shape[-2]
        with tf.control_dependencies(
            [
                tf.debugging.assert_positive(
                    tf.minimum(height, width),
                    message="resize_longest_side: image has an empty side",
                )
            ]
        ):
            new_h, new_w = _target_size_tensor(height, width, max_size)
        size = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    return tf.image.resize(image, size, method="bilinear", antialias=True)
