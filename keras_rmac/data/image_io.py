"""Image decoding with a bad-file policy, and listing image files.

This is the first stage of the retrieval pipeline: image bytes on disk become
upright `(H, W, 3)` `uint8` RGB arrays. `keras_rmac.data.resize` then brings
them to the scale the backbone sees (`resize_longest_side` and `target_size`
are still importable from here). This module needs Pillow and NumPy only, not
TensorFlow.

Which files are images: `IMAGE_EXTENSIONS`, the one extension set of the
package (`list_images`, the folder-per-class listing of
`keras_rmac.data.labelled` and the dataset loaders all use it).

Memory guard: `max_pixels` limits the pixels an image is decoded to, checked
on the header before any pixel is decoded; JPEGs declaring more than
`draft_above` pixels are decoded at reduced scale (1/2, 1/4 or 1/8) when the
caller says which size it needs (`draft_size`). The rules and their
defaults, `DEFAULT_MAX_PIXELS` and `DEFAULT_DRAFT_ABOVE` (both importable
from here), are in `keras_rmac.data.pixel_limits`.

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
from PIL import JpegImagePlugin
from PIL import UnidentifiedImageError

from keras_rmac.checks import check_int
from keras_rmac.data import colour
from keras_rmac.data import pixel_limits
from keras_rmac.data.pixel_limits import DEFAULT_DRAFT_ABOVE
from keras_rmac.data.pixel_limits import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

MIN_SIDE = 8
"""Smallest accepted image side, in pixels (after decoding, before resizing).

Anything thinner is a spacer, tracking pixel, separator line or broken
thumbnail, not a photo: at the backbone's stride of 32 it does not even fill
one feature-map cell, and upscaling it to the network input size only
produces blur. 1x1 and 7x500 images are rejected; 8x8 icons still load.
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
    """Image.open (header only), with Pillow's bomb warning captured.

    A JPEG that Pillow refuses as a possible decompression bomb (declared
    size above twice `PIL.Image.MAX_IMAGE_PIXELS`, about 179 MP) is opened
    all the same: it may decode at reduced scale, and `max_pixels` decides.
    """
    with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:
            if _header_format(path) != "JPEG header":
                raise
            # The JPEG plugin itself: Image.open's size check is skipped,
            # and the first (main) image of a multi-picture file is read.
            im = JpegImagePlugin.JpegImageFile(path)
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
            f"bomb ({exc}); if it is genuine, raise PIL.Image.MAX_IMAGE_PIXELS "
            "and the limit (`max_pixels=` in Python, `--max-pixels` on the "
            "command line)"
        )
    if isinstance(exc, MemoryError):
        return f"out of memory while decoding this {what}"
    if isinstance(exc, (OSError, SyntaxError, EOFError)):
        return f"corrupt or truncated {what} ({exc})"
    return f"could not decode {what} ({type(exc).__name__}: {exc})"


def _check_file(path: str) -> None:
    """Raises ImageError unless `path` is a non-empty regular file."""
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


def _load(path: str, max_pixels: int, min_side: int, draft) -> np.ndarray:
    _check_file(path)
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
        # Declared size from the header, and the size it will be decoded
        # to: checked before any pixel memory is allocated, which is what
        # stops decompression bombs.
        width, height = im.size
        scale = 1
        if isinstance(im, JpegImagePlugin.JpegImageFile):
            scale = pixel_limits.jpeg_scale(width, height, *draft)
        decoded = pixel_limits.reduced_size(width, height, scale)
        progressive = bool(im.info.get("progressive"))
        reason = pixel_limits.too_large(
            width, height, decoded, max_pixels, progressive
        )
        if reason is not None:
            raise ImageError(path, reason)
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
        if scale > 1:
            # Reduced (DCT-scaled) decoding, requested as the size libjpeg
            # makes at 1/scale; Pillow picks exactly that scale.
            im.draft(im.mode, (width // scale, height // scale))
            if im.size != decoded:  # Not scalable (never seen): refuse.
                raise ImageError(
                    path,
                    f"cannot decode this {what} at reduced scale 1/{scale}",
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
    draft_size: int | None = None,
    draft_above: int | None = DEFAULT_DRAFT_ABOVE,
) -> np.ndarray:
    """Decodes an image file to an upright RGB `uint8` array.

    Applies the EXIF orientation, converts every colour mode to RGB
    (transparency composited on white, 16-bit scaled by value; see the
    module docstring for the exact rules) and takes the first frame of
    animated files. The file header is checked against `max_pixels` and
    `min_side` before any pixel data is decoded. A JPEG declaring more than
    `draft_above` pixels is decoded at reduced scale (1/2, 1/4 or 1/8, the
    largest that keeps its longest side at least twice `draft_size`), so that
    only this reduced size has to fit in `max_pixels` (see
    `keras_rmac.data.pixel_limits`).

    Args:
        path: str or os.PathLike. The image file.
        max_pixels: int. Largest accepted width x height the image is
            decoded to (the declared size, or the reduced size of a JPEG
            decoded at reduced scale). Defaults to `DEFAULT_MAX_PIXELS`
            (100 megapixels).
        min_side: int. Smallest accepted width or height. Defaults to
            `MIN_SIDE` (8).
        draft_size: int or None. The longest side the caller will resize
            the image to (the largest, with several scales); None decodes
            every image at full size. Defaults to `None`.
        draft_above: int or None. Declared width x height above which a
            JPEG is decoded at reduced scale; None never reduces. Defaults
            to `DEFAULT_DRAFT_ABOVE` (100 megapixels).

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
    draft = pixel_limits.check_draft_options(draft_size, draft_above)
    try:
        return _load(path, max_pixels, min_side, draft)
    except ImageError:
        raise
    except Exception as exc:  # Policy: no raw exception escapes.
        raise ImageError(path, _describe(exc, "image")) from exc


def _load_or_error(
    path: PathLike, max_pixels: int, **options
) -> np.ndarray | ImageError:
    try:
        return load_image(path, max_pixels, **options)
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
    draft_size: int | None = None,
    draft_above: int | None = DEFAULT_DRAFT_ABOVE,
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
        draft_size: int or None. As in `load_image`. Defaults to `None`.
        draft_above: int or None. As in `load_image`. Defaults to
            `DEFAULT_DRAFT_ABOVE`.

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
    draft_size, draft_above = pixel_limits.check_draft_options(
        draft_size, draft_above
    )
    load = functools.partial(
        _load_or_error,
        max_pixels=max_pixels,
        min_side=min_side,
        draft_size=draft_size,
        draft_above=draft_above,
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
