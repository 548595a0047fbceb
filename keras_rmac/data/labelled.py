"""Labelled image lists: one type, one CSV format, one folder layout.

Training (`keras-rmac train`) and cleaning (`keras-rmac clean`) both read
lists of images with a class label each. They share:

- `LabelledImages`: paths, a class index per image, the class names and
  optional `(x0, y0, x1, y1)` boxes.
- `read_image_list` / `write_image_list`: the CSV format
  `path,label[,x0,y0,x1,y1]` (what `keras-rmac clean` writes and training
  reads), plus Google Landmarks v2's `train.csv` and `train_clean.csv`.
- `folder_per_class` / `class_folders`: `root/<class>/<image files>`, with
  images recognised by `keras_rmac.data.image_io.IMAGE_EXTENSIONS`.

The header rule, the same for every list: a first row that names a path
column (`path`, `image`, `filename` or `file`) and a label column (`label`,
`landmark_id`, `class` or `instance`) is a header, and columns are then
found by name (box columns when `x0`, `y0`, `x1` and `y1` are all named;
other columns are ignored). Any other first row is data, and the columns
are `path,label[,x0,y0,x1,y1]` by position (boxes when a row has six or
more columns). A first row `id,url,landmark_id` or `landmark_id,images`
selects the Google Landmarks v2 layouts.

Relative paths are relative to the CSV file's folder (or to `root`), so a
list can be moved together with its images; `write_image_list` writes them
that way.
"""

import csv
import dataclasses
import io
import os
from collections.abc import Sequence

import numpy as np

from keras_rmac import fileio
from keras_rmac.data import image_io

PathLike = str | os.PathLike

PATH_COLUMNS = ("path", "image", "filename", "file")
"""Header names of the path column (case-insensitive)."""

LABEL_COLUMNS = ("label", "landmark_id", "class", "instance")
"""Header names of the label column (case-insensitive)."""

BOX_COLUMNS = ("x0", "y0", "x1", "y1")
"""Header names of the box columns, in pixels of the original image."""

_GLD_TRAIN = ("id", "url", "landmark_id")
_GLD_TRAIN_CLEAN = ("landmark_id", "images")
_LAYOUT = "path,label[,x0,y0,x1,y1]"


@dataclasses.dataclass
class LabelledImages:
    """Image files with a class index each, and optional boxes.

    Args:
        paths: list of str. Image files.
        labels: int64 array `(N,)`. Class index of each image, in
            `[0, len(class_names))`.
        class_names: list of str. Name of each class index.
        boxes: float32 array `(N, 4)` of `(x0, y0, x1, y1)` pixel boxes
            (NaN rows: no box), or None. Defaults to None.

    Example:

    >>> images = LabelledImages.from_labels(["a.jpg", "b.jpg"], ["cat", 7])
    >>> images.class_names, images.labels.tolist()
    (['7', 'cat'], [1, 0])
    """

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    boxes: np.ndarray | None = None

    def __post_init__(self):
        self.paths = [os.fspath(p) for p in self.paths]
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if len(self.labels) != len(self.paths):
            raise ValueError(
                f"{len(self.paths)} paths but {len(self.labels)} labels; "
                "give one label per image."
            )
        if len(self.labels) and (
            self.labels.min() < 0 or self.labels.max() >= len(self.class_names)
        ):
            raise ValueError(
                "labels must be class indices in [0, "
                f"{len(self.class_names)}), got range "
                f"[{self.labels.min()}, {self.labels.max()}]."
            )
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
            if len(self.boxes) != len(self.paths):
                raise ValueError(
                    f"{len(self.paths)} paths but {len(self.boxes)} boxes."
                )

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_labels(
        cls,
        paths: Sequence[PathLike],
        labels: Sequence,
        boxes: np.ndarray | None = None,
    ) -> "LabelledImages":
        """Builds from arbitrary labels (str or int), sorted into classes.

        Args:
            paths: image files.
            labels: one label per image, any hashable values.
            boxes: optional `(N, 4)` boxes. Defaults to None.

        Returns:
            `LabelledImages` whose `class_names` are the distinct labels (as
            str) in natural order: numbers by value first, then the others.
        """
        keys = [str(label) for label in labels]
        names = sorted(set(keys), key=_natural_key)
        index = {name: i for i, name in enumerate(names)}
        return cls(
            list(paths),
            np.array([index[k] for k in keys], np.int64),
            names,
            boxes,
        )

    def label_names(self) -> list[str]:
        """The class name of each image, in order."""
        return [self.class_names[i] for i in self.labels]

    def subset(self, indices) -> "LabelledImages":
        """The images at `indices` (class names and indices unchanged)."""
        indices = np.asarray(indices, np.int64)
        return LabelledImages(
            [self.paths[i] for i in indices],
            self.labels[indices],
            list(self.class_names),
            None if self.boxes is None else self.boxes[indices],
        )


def _natural_key(text: str):
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


# ---------------------------------------------------------------------------
# Reading.


def _gld_path(image_id: str, root: str) -> str:
    """Google Landmarks v2 layout: `root/a/b/c/abc...jpg`."""
    return os.path.join(root, *image_id[:3], image_id + ".jpg")


def _bad_row(csv_path, line, layout, row, why="") -> ValueError:
    return ValueError(
        f"{csv_path}:{line}: expected `{layout}`, got {row!r}{why}. Fix or "
        "remove that line."
    )


def _read_rows(csv_path: str) -> list[tuple[int, list[str]]]:
    """Non-blank CSV rows with the file line each one ends on."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if row and any(c.strip() for c in row):
                rows.append((reader.line_num, row))
    if not rows:
        raise ValueError(f"{csv_path}: empty image list.")
    return rows


def _read_gld(rows, csv_path, root, clean_layout):
    paths, labels = [], []
    layout = ",".join(_GLD_TRAIN_CLEAN if clean_layout else _GLD_TRAIN)
    for line, row in rows[1:]:
        if len(row) < len(layout.split(",")):
            raise _bad_row(csv_path, line, layout, row)
        if clean_layout:
            for image_id in row[1].split():
                paths.append(_gld_path(image_id, root))
                labels.append(row[0].strip())
        else:
            paths.append(_gld_path(row[0].strip(), root))
            labels.append(row[2].strip())
    return LabelledImages.from_labels(paths, labels)


def _columns(rows):
    """`(path column, label column, box columns or None, data rows)`."""
    header = [c.strip().lower() for c in rows[0][1]]
    if any(h in PATH_COLUMNS for h in header) and any(
        h in LABEL_COLUMNS for h in header
    ):
        path_col = next(i for i, h in enumerate(header) if h in PATH_COLUMNS)
        label_col = next(i for i, h in enumerate(header) if h in LABEL_COLUMNS)
        box_cols = None
        if all(b in header for b in BOX_COLUMNS):
            box_cols = [header.index(b) for b in BOX_COLUMNS]
        return path_col, label_col, box_cols, rows[1:]
    box_cols = [2, 3, 4, 5] if any(len(r) >= 6 for _, r in rows) else None
    return 0, 1, box_cols, rows


def _box(row, box_cols, csv_path, line) -> list[float]:
    cells = [row[c].strip() if c < len(row) else "" for c in box_cols]
    if all(not c for c in cells):
        return [np.nan] * 4
    try:
        return [float(c) for c in cells]
    except ValueError:
        raise ValueError(
            f"{csv_path}:{line}: box columns must be numbers, got "
            f"{cells!r}. Fix or remove that line."
        ) from None


def read_image_list(
    csv_path: PathLike, root: PathLike | None = None
) -> LabelledImages:
    """Reads a labelled image list from a CSV file.

    Accepted layouts (see the module docstring for the header rule):

    - `path,label[,x0,y0,x1,y1]`: the format of `keras-rmac clean`'s
      clean list (boxes in pixels of the original image; empty box cells
      mean no box) and of a plain labelled list.
    - Google Landmarks v2 `train.csv` (`id,url,landmark_id`): images at
      `root/<id[0]>/<id[1]>/<id[2]>/<id>.jpg`.
    - Google Landmarks v2 `train_clean.csv` (`landmark_id,images` with
      space-separated image ids): same image layout.

    Blank lines are skipped.

    Args:
        csv_path: path-like. The CSV file.
        root: path-like or None. Folder that relative paths (and GLD image
            ids) are relative to; `""` keeps them as written. Defaults to
            the CSV file's folder.

    Returns:
        `LabelledImages`, in file order; `boxes` is set when the file has
        box columns (empty cells give NaN rows).

    Raises:
        ValueError: an empty file or a malformed row (the message names the
            file and the line).

    Example:

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "list.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("path,label\\nimg/a.jpg,tower\\n/abs/b.jpg,bridge\\n")
    >>> images = read_image_list(path)
    >>> images.paths[0] == os.path.join(folder, "img/a.jpg"), images.paths[1]
    (True, '/abs/b.jpg')
    >>> images.label_names()
    ['tower', 'bridge']
    """
    csv_path = os.fspath(csv_path)
    root = os.fspath(root) if root is not None else os.path.dirname(csv_path)
    rows = _read_rows(csv_path)
    first = tuple(c.strip().lower() for c in rows[0][1])
    if first[:3] == _GLD_TRAIN or first[:2] == _GLD_TRAIN_CLEAN:
        return _read_gld(rows, csv_path, root, first[:2] == _GLD_TRAIN_CLEAN)
    path_col, label_col, box_cols, body = _columns(rows)
    paths, labels, boxes = [], [], []
    for line, row in body:
        if len(row) <= max(path_col, label_col):
            raise _bad_row(csv_path, line, _LAYOUT, row)
        path, label = row[path_col].strip(), row[label_col].strip()
        if not path or not label:
            raise _bad_row(
                csv_path, line, _LAYOUT, row, " (empty path or label)"
            )
        paths.append(os.path.join(root, path))
        labels.append(label)
        if box_cols is not None:
            boxes.append(_box(row, box_cols, csv_path, line))
    return LabelledImages.from_labels(
        paths, labels, np.array(boxes, np.float32) if box_cols else None
    )


# ---------------------------------------------------------------------------
# Writing.


def _number(value: float) -> str:
    """A box cell: `""` for NaN, `"12"` for whole numbers, else shortest."""
    if np.isnan(value):
        return ""
    if float(value).is_integer():
        return str(int(value))
    return np.format_float_positional(np.float32(value), trim="-")


def write_image_list(path: PathLike, images: LabelledImages) -> None:
    """Writes `images` as a `path,label[,x0,y0,x1,y1]` CSV, atomically.

    The header is `path,label`, plus `x0,y0,x1,y1` when `images.boxes` is
    set (whole-number boxes are written as integers, NaN boxes as empty
    cells). Absolute paths are written as they are; relative ones (relative
    to the current folder, as `read_image_list` returns them) are written
    relative to the CSV's folder, so that `read_image_list` finds the same
    files wherever the list is written. Readers never see a partial file
    (`keras_rmac.fileio.atomic_write_text`).

    Args:
        path: path-like. The CSV file to (over)write.
        images: `LabelledImages`.

    Example:

    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "list.csv")
    >>> write_image_list(out, LabelledImages.from_labels(["/x/a.jpg"], [3]))
    >>> print(open(out).read(), end="")
    path,label
    /x/a.jpg,3
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    header = ("path", "label")
    writer.writerow(
        header + BOX_COLUMNS if images.boxes is not None else header
    )
    for i, (file, label) in enumerate(zip(images.paths, images.labels)):
        if not os.path.isabs(file):
            file = os.path.relpath(os.path.abspath(file), folder)
        row = [file, images.class_names[label]]
        if images.boxes is not None:
            row += [_number(v) for v in images.boxes[i]]
        writer.writerow(row)
    fileio.atomic_write_text(path, text.getvalue())


# ---------------------------------------------------------------------------
# One folder per class.


def class_folders(
    root: PathLike, recursive: bool = True
) -> list[tuple[str, list[str]]]:
    """The class folders under `root` and the image files in each.

    Class folders are the sub-folders of `root` whose names do not start
    with `.`, in natural order (names that are numbers first, by value,
    then the others). Their images are listed by `image_io.list_images`
    (extensions in `image_io.IMAGE_EXTENSIONS`, hidden files skipped,
    sorted). Files directly in `root` belong to no class.

    Args:
        root: path-like. The folder of class folders.
        recursive: bool. Whether images in sub-folders of a class folder
            belong to the class. Defaults to True.

    Returns:
        `[(class name, [image paths])]`, including classes without images.

    Raises:
        FileNotFoundError: `root` is not a folder.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Folder of class folders not found: {root!r}")
    out = []
    for name in sorted(os.listdir(root), key=_natural_key):
        folder = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        out.append((name, image_io.list_images(folder, recursive=recursive)))
    return out


def folder_per_class(root: PathLike) -> LabelledImages:
    """Labelled images from a folder holding one sub-folder per class.

    Images are found with `class_folders` (recursively under each class
    folder); the class name is the sub-folder name.

    Args:
        root: path-like. The folder of class folders.

    Returns:
        `LabelledImages` sorted by class then path.

    Raises:
        FileNotFoundError: `root` is missing or holds no class folder with
            images.
    """
    paths, labels = [], []
    for name, files in class_folders(root):
        paths.extend(files)
        labels.extend([name] * len(files))
    if not paths:
        raise FileNotFoundError(
            f"No class folders with images under {os.fspath(root)!r}; "
            "expected root/<class>/<image files>."
        )
    return LabelledImages.from_labels(paths, labels)
