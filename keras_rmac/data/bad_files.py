"""Image files that cannot be decoded: found up front, recorded on the way.

A bad image never stops training. `validate_images` decodes every image of
a list once, in a thread pool, and drops (and lists) the ones that fail;
`BadFiles` records the files that go bad later, while the `tf.data`
pipeline reads them (`keras_rmac.data.triplets`).
"""

import logging
import os
import threading

from keras_rmac import fileio
from keras_rmac import progress
from keras_rmac.data import image_io
from keras_rmac.data.labelled import LabelledImages

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


class BadFiles:
    """Thread-safe record of image files that could not be decoded.

    Each file is logged once (at WARNING) when first seen.

    Args:
        report_path: path-like or None. When given, every new bad file is
            appended to it as a `path<TAB>reason` line. Defaults to None.
        known: iterable of `ImageError` already reported (e.g. by
            `validate_images`): recorded, not logged or written again.
            Defaults to `()`.
    """

    def __init__(self, report_path: PathLike | None = None, known=()):
        self.report_path = None if report_path is None else str(report_path)
        self._errors = {e.path: e.reason for e in known}
        self._lock = threading.Lock()

    def add(self, error: image_io.ImageError) -> None:
        """Records an `ImageError` (ignored if the file is known)."""
        with self._lock:
            if error.path in self._errors:
                return
            self._errors[error.path] = error.reason
            logger.warning("Skipping unreadable image %s", error)
            if self.report_path:
                with open(self.report_path, "a", encoding="utf-8") as f:
                    f.write(f"{error.path}\t{error.reason}\n")

    @property
    def errors(self) -> dict[str, str]:
        """`{path: reason}` of every bad file seen so far."""
        with self._lock:
            return dict(self._errors)

    def __len__(self) -> int:
        with self._lock:
            return len(self._errors)


def validate_images(
    images: LabelledImages,
    num_workers: int = 4,
    report_path: PathLike | None = None,
    verbose="auto",
) -> tuple[LabelledImages, list[image_io.ImageError]]:
    """Decodes every image once and drops the ones that fail.

    Runs `image_io.load_images` in a thread pool. Bad files are logged
    (a summary at WARNING, each file at DEBUG) and, with `report_path`,
    written as `path<TAB>reason` lines (the file is written even when
    empty, so a run's report always exists).

    Args:
        images: `LabelledImages`.
        num_workers: int. Decoding threads. Defaults to `4`.
        report_path: path-like or None. Where to write the bad-file list.
            Defaults to None.
        verbose: `"auto"`, 0 or 1. Progress bar. Defaults to `"auto"`
            (shown for more than 1000 images).

    Returns:
        `(good_images, errors)`: the readable images and the `ImageError`
        of each bad one.
    """
    if verbose == "auto":
        verbose = 1 if len(images) > 1000 else 0
    progbar = progress.progress_bar(
        len(images), verbose, unit_name="image", label="validating images"
    )
    keep, errors = [], []
    for i, result in image_io.load_images(images.paths, num_workers):
        if isinstance(result, image_io.ImageError):
            errors.append(result)
            logger.debug("bad image: %s", result)
        else:
            keep.append(i)
        if progbar is not None:
            progbar.update(i + 1)
    if errors:
        logger.warning(
            "%d of %d images cannot be read and are skipped (first: %s)%s",
            len(errors),
            len(images),
            errors[0],
            f"; list written to {os.fspath(report_path)}"
            if report_path
            else "",
        )
    if report_path is not None:
        fileio.atomic_write_text(
            report_path, "".join(f"{e.path}\t{e.reason}\n" for e in errors)
        )
    return images.subset(keep), errors
