"""Benchmarks whose queries are database images: Holidays, COIL-100, and
one folder per instance."""

import collections
import logging
import pathlib
import re

import numpy as np

from keras_rmac.data import labelled
from keras_rmac.data.datasets.base import PathLike
from keras_rmac.data.datasets.base import RetrievalDataset
from keras_rmac.data.image_io import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Layouts where each query is one of the database images.


def _queries_in_db(
    db_paths: list[str],
    db_labels: np.ndarray,
    query_db_indices: list[int],
    name: str,
    label_names: list[str] | None = None,
    train_paths: list[str] | None = None,
    train_labels: np.ndarray | None = None,
) -> RetrievalDataset:
    """Positives = same label; the query itself = junk."""
    members = collections.defaultdict(list)
    for i, label in enumerate(db_labels):
        members[int(label)].append(i)
    gnd = []
    for q in query_db_indices:
        same = members[int(db_labels[q])]
        gnd.append(
            {
                "ok": np.array([i for i in same if i != q], dtype=np.int64),
                "junk": np.array([q], dtype=np.int64),
            }
        )
    empty = sum(1 for g in gnd if g["ok"].size == 0)
    if empty:
        logger.warning(
            "%s: %d queries have no other image of their instance; they "
            "are left out of mAP.",
            name,
            empty,
        )
    logger.info(
        "%s: %d database images, %d queries",
        name,
        len(db_paths),
        len(query_db_indices),
    )
    return RetrievalDataset(
        db_paths=db_paths,
        query_paths=[db_paths[q] for q in query_db_indices],
        query_boxes=None,
        gnd=gnd,
        name=name,
        db_labels=np.asarray(db_labels, dtype=np.int64),
        train_paths=train_paths,
        train_labels=train_labels,
        query_db_indices=np.asarray(query_db_indices, dtype=np.int64),
        label_names=label_names,
    )


_HOLIDAYS_NAME = re.compile(r"^(\d{4})(\d{2})\.jpe?g$", re.IGNORECASE)


def load_holidays(root: PathLike) -> RetrievalDataset:
    """Loads INRIA Holidays (Jegou et al., 2008).

    Images are named `NNNNPP.jpg` (in `root/jpg/` or `root/`): `NNNN` is
    the scene group and `PP == 00` marks its query. Every image is in the
    database (1491 in the full set); each of the 500 queries has the other
    images of its group as positives and is junk for its own ranking, the
    standard protocol's "the query is removed from the results".

    Args:
        root: path. Folder with the images, or with a `jpg/` subfolder.

    Returns:
        A `RetrievalDataset` with `db_labels` = group number and
        `query_db_indices`.
    """
    root = pathlib.Path(root)
    folder = root / "jpg" if (root / "jpg").is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"Holidays folder {folder} does not exist.")
    db_paths, labels, queries, ignored = [], [], [], []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        m = _HOLIDAYS_NAME.match(p.name)
        if not m or not p.is_file():
            ignored.append(p.name)
            continue
        if m.group(2) == "00":
            queries.append(len(db_paths))
        db_paths.append(str(p))
        labels.append(int(m.group(1)))
    if not db_paths:
        raise FileNotFoundError(
            f"No Holidays images named NNNNPP.jpg in {folder}."
        )
    if ignored:
        logger.warning(
            "holidays: ignored %d file(s) not named NNNNPP.jpg in %s, e.g. %s",
            len(ignored),
            folder,
            ignored[:3],
        )
    labels = np.asarray(labels, dtype=np.int64)
    no_query = sorted(set(labels.tolist()) - {labels[q] for q in queries})
    if no_query:
        logger.warning(
            "holidays: %d group(s) have no NNNN00 query image, e.g. %s",
            len(no_query),
            no_query[:3],
        )
    return _queries_in_db(db_paths, labels, queries, "holidays")


def load_folder_per_instance(
    root: PathLike, name: str | None = None
) -> RetrievalDataset:
    """Loads a `root/<instance>/<image>` folder as a retrieval benchmark.

    Every image is in the database. Instances and their images are listed
    by `keras_rmac.data.labelled.class_folders` (not recursively): the
    sub-folders not starting with `.`, in natural order (numbers by value
    first), and their files with an extension of
    `keras_rmac.data.image_io.IMAGE_EXTENSIONS`, in sorted order. Each
    instance has one query, its first image; the positives are the other
    images of the instance and the query itself is junk. Instances with a
    single image give queries without positives, which `compute_map`
    leaves out.

    Args:
        root: path. Folder with one subfolder per instance.
        name: str or None. Dataset name; None uses the folder name.
            Defaults to None.

    Returns:
        A `RetrievalDataset` with `db_labels` (index into `label_names`,
        the subfolder names) and `query_db_indices`.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder {root} does not exist.")
    db_paths, labels, queries, names = [], [], [], []
    for folder, images in labelled.class_folders(str(root), recursive=False):
        if not images:
            logger.warning(
                "%s: instance folder %s has no images", root, root / folder
            )
            continue
        queries.append(len(db_paths))
        db_paths.extend(images)
        labels.extend([len(names)] * len(images))
        names.append(folder)
    if not db_paths:
        raise FileNotFoundError(
            f"No images found in subfolders of {root}; expected "
            "root/<instance>/<image> with extensions "
            f"{sorted(IMAGE_EXTENSIONS)}."
        )
    return _queries_in_db(
        db_paths,
        np.asarray(labels, dtype=np.int64),
        queries,
        name or root.name,
        label_names=names,
    )


_COIL_NAME = re.compile(r"^obj(\d+)__(\d+)\.png$")

COIL_TRAIN_OBJECTS = range(1, 51)
COIL_TEST_OBJECTS = range(51, 101)
COIL_TEST_STEP_DEGREES = 15


def load_coil100(root: PathLike) -> RetrievalDataset:
    """Loads COIL-100 with the project's fixed benchmark split.

    Files are `obj{N}__{deg}.png` (N = 1..100, deg = 0..355 in steps of
    5). The split, fixed so that numbers compare across runs:

    - train: objects 1-50, all views (`train_paths`, `train_labels` = N);
    - database: objects 51-100, views at multiples of 15 degrees (1200
      images; `db_labels` = N);
    - queries: the 0-degree view of objects 51-100 (50 queries), which are
      database images: positives = every other database view of the same
      object, the query itself is junk.

    Args:
        root: path. Folder holding the PNG files.

    Returns:
        A `RetrievalDataset` with training data, sorted by (object, angle).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"COIL-100 folder {root} does not exist.")
    views = []
    ignored = 0
    for p in root.iterdir():
        m = _COIL_NAME.match(p.name)
        if m is None:
            ignored += 1
            continue
        views.append((int(m.group(1)), int(m.group(2)), str(p)))
    if not views:
        raise FileNotFoundError(
            f"No COIL-100 images named obj<N>__<deg>.png in {root}."
        )
    if ignored:
        logger.warning("coil100: ignored %d other file(s) in %s", ignored, root)
    views.sort()

    train = [(o, p) for o, d, p in views if o in COIL_TRAIN_OBJECTS]
    test = [
        (o, d, p)
        for o, d, p in views
        if o in COIL_TEST_OBJECTS and d % COIL_TEST_STEP_DEGREES == 0
    ]
    db_paths = [p for _, _, p in test]
    db_labels = np.array([o for o, _, _ in test], dtype=np.int64)
    queries = [i for i, (_, d, _) in enumerate(test) if d == 0]
    missing = set(COIL_TEST_OBJECTS) - {test[q][0] for q in queries}
    if missing:
        logger.warning(
            "coil100: no 0-degree view for test object(s) %s; they have no "
            "query",
            sorted(missing),
        )
    return _queries_in_db(
        db_paths,
        db_labels,
        queries,
        "coil100",
        label_names=[f"obj{n}" for n in range(101)],
        train_paths=[p for _, p in train],
        train_labels=np.array([o for o, _ in train], dtype=np.int64),
    )
