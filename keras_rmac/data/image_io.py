"""Image decoding with a bad-file policy, and listing image files.

This is the first stage of the retrieval pipeline: image bytes on disk become
upright `(H, W, 3)` `uint8` RGB arrays. `keras_rmac.data.resize` then brings
them to the scale the backbone sees (`resize_longest_side` and `target_size`
are still importable from here). This module needs Pillow and NumPy only, not
TensorFlow.

Which files are images: `IMAGE_EXTENSIONS`, the one extension set of the
package (`list_images`, the folder-per-class listing of
`keras_rmac.data.labelled` and the dataset loaders all use it).

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

Colour policy (what `load_image` returns for each Pillow mode, EXIF
orientation, transparency, 16-bit and float images): see
`keras_rmac.data.colour`.
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
from PIL import Image
from PIL import UnidentifiedImageError

from keras_rmac.checks import check_int
from keras_rmac.data import colour

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
    {
        ".bmp",
        ".gif",
        ".jpeg",
        ".jpg",
        ".pgm",
        ".png",
        ".ppm",
        ".tif",
        ".tiff",
        ".webp",
    }
)
"""Lower-case file extensions that count as images, everywhere in the package.

Every format here is one Pillow decodes. `.pgm` (8- and 16-bit grayscale
netpbm, e.g. some object-recognition sets) is included: `load_image` reads it
as grayscale converted to RGB, 16-bit values scaled by value.
"""

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
    (b"P5", "PGM"),
)


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
        upright = colour.exif_upright(im, path)
        try:
            return colour.to_rgb(upright)
        except colour.UnsupportedMode:
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
    max_pixels = check_int("max_pixels", max_pixels, 1)
    min_side = check_int("min_side", min_side, 1)
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
    num_workers = check_int("num_workers", num_workers, 0)
    max_pixels = check_int("max_pixels", max_pixels, 1)
    min_side = check_int("min_side", min_side, 1)
    if prefetch is None:
        prefetch = max(1, 2 * num_workers)
    prefetch = check_int("prefetch", prefetch, 1)
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


def is_image_file(name: str) -> bool:
    """Whether a file counts as an image, by its name alone.

    A file is an image when its name is not hidden (does not start with
    `.`) and its extension, in any case, is in `IMAGE_EXTENSIONS`; the
    contents are not opened.

    Args:
        name: str or os.PathLike. A file name or path.

    Returns:
        bool.

    Example:

    >>> is_image_file("Cat.JPG"), is_image_file(".cat.jpg")
    (True, False)
    >>> is_image_file("scan.pgm"), is_image_file("notes.txt")
    (True, False)
    """
    return _is_image_name(os.path.basename(os.fspath(name)))


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


_RESIZE_NAMES = ("resize_longest_side", "target_size", "_target_size_tensor")


def __getattr__(name):
    # `resize_longest_side` and `target_size` moved to keras_rmac.data.resize
    # (TensorFlow); importing them from here still works, without making
    # decoding import TensorFlow.
    if name in _RESIZE_NAMES:
        from keras_rmac.data import resize

        return getattr(resize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
