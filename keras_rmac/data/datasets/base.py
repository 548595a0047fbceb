"""`RetrievalDataset`, what every benchmark loader returns, and `crop_box`."""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

PathLike = str | os.PathLike

Box = tuple[float, float, float, float]


@dataclasses.dataclass
class RetrievalDataset:
    """An instance-retrieval benchmark: database, queries, ground truth.

    Indices in `gnd` refer to positions in `db_paths`. When a query image is
    itself a database image (Holidays, COIL-100, folder layouts), it is
    listed as junk for its own query, as the standard protocols exclude it
    from its own ranking, and `query_db_indices` gives its database index so
    that its descriptor can be reused.

    Args:
        db_paths: list of str. Database image files.
        query_paths: list of str. Query image files (before cropping).
        query_boxes: list of `(x0, y0, x1, y1)` float tuples, one per query,
            in pixel coordinates of the full query image, or None when the
            queries are not cropped. Crop with `crop_box`.
        gnd: list of dicts, one per query, of int64 database-index arrays:
            `"ok"` and `"junk"`, or for revisited Oxford/Paris `"easy"`,
            `"hard"`, `"junk"` (plus the float `"bbx"`).
        name: str. Dataset name, e.g. `"roxford5k"`.
        db_labels: int array of shape `(len(db_paths),)` with the instance
            id of each database image, or None. Defaults to None.
        train_paths: list of str. Training images disjoint from the test
            instances, or None. Defaults to None.
        train_labels: int array with the instance id of each training
            image, or None. Defaults to None.
        query_db_indices: int array, the database index of each query image
            when queries are database images, else None. Defaults to None.
        label_names: list of str, the name of each instance id (index =
            label), or None. Defaults to None.
    """

    db_paths: list[str]
    query_paths: list[str]
    query_boxes: list[Box] | None
    gnd: list[dict]
    name: str
    db_labels: np.ndarray | None = None
    train_paths: list[str] | None = None
    train_labels: np.ndarray | None = None
    query_db_indices: np.ndarray | None = None
    label_names: list[str] | None = None

    def __post_init__(self):
        nq = len(self.query_paths)
        if len(self.gnd) != nq:
            raise ValueError(
                f"{self.name}: {nq} query paths but {len(self.gnd)} "
                "ground-truth entries; they must match one to one."
            )
        if self.query_boxes is not None and len(self.query_boxes) != nq:
            raise ValueError(
                f"{self.name}: {nq} query paths but "
                f"{len(self.query_boxes)} query boxes."
            )
        _check_length(self.db_labels, len(self.db_paths), "db_labels")
        _check_length(self.query_db_indices, nq, "query_db_indices")
        if self.train_paths is not None:
            _check_length(
                self.train_labels, len(self.train_paths), "train_labels"
            )

    @property
    def num_db(self) -> int:
        """Number of database images."""
        return len(self.db_paths)

    @property
    def num_queries(self) -> int:
        """Number of queries."""
        return len(self.query_paths)

    @property
    def is_revisited(self) -> bool:
        """Whether `gnd` uses the revisited easy/hard/junk labels."""
        return bool(self.gnd) and "easy" in self.gnd[0]


def _check_length(values, expected: int, what: str) -> None:
    if values is not None and len(values) != expected:
        raise ValueError(
            f"`{what}` has {len(values)} entries, expected {expected}."
        )


def crop_box(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Crops an `(H, W[, C])` image array to a query box, as PIL does.

    Matches `PIL.Image.crop(box)`, which revisitop and cnnimageretrieval
    apply to the revisited Oxford/Paris queries: each coordinate is rounded
    with Python's `round` (half to even), the crop spans rows `y0:y1` and
    columns `x0:x1`, and parts of the box outside the image are zeros.

    Args:
        image: array of shape `(H, W)` or `(H, W, C)`.
        box: sequence of 4 floats `(x0, y0, x1, y1)` in pixels.

    Returns:
        An array of shape `(y1 - y0, x1 - x0[, C])` and the image's dtype.

    Example:

    >>> import numpy as np
    >>> img = np.arange(20).reshape(4, 5)
    >>> crop_box(img, (0.5, 1.2, 3.5, 3.0)).tolist()  # rounds to (0, 1, 4, 3)
    [[5, 6, 7, 8], [10, 11, 12, 13]]
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(
            f"`image` must be (H, W) or (H, W, C), got shape {image.shape}."
        )
    if len(box) != 4:
        raise ValueError(f"`box` must be (x0, y0, x1, y1), got {box!r}.")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(
            f"Box {tuple(box)} rounds to ({x0}, {y0}, {x1}, {y1}): right "
            "must be >= left and lower >= upper."
        )
    h, w = image.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0) + image.shape[2:], dtype=image.dtype)
    # Part of the box inside the image, in image and in output coordinates.
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x1, w), min(y1, h)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = image[iy0:iy1, ix0:ix1]
    return out
