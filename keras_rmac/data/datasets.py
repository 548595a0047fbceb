"""Instance-retrieval benchmarks as plain Python / NumPy structures.

Every loader returns a `RetrievalDataset`: image paths for the database and
the queries, optional query boxes, and one ground-truth mapping per query
(database indices under ``"ok"`` and ``"junk"``, or ``"easy"``, ``"hard"``
and ``"junk"`` for revisited Oxford/Paris) ready for
`keras_rmac.evaluation.compute_map` / `evaluate_revisited`. Nothing here
decodes images or needs TensorFlow.

Supported layouts: revisited Oxford/Paris (revisitop ``gnd_*.pkl``), the
original Oxford 5k / Paris 6k (``*_good.txt`` ... text files, or the
cnnimageretrieval ``gnd_oxford5k.pkl``), INRIA Holidays, COIL-100 with the
project's fixed split, and a generic one-folder-per-instance layout.
"""

import collections
import dataclasses
import logging
import os
import pathlib
import pickle
import re
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)

REVISITED_NAMES = ("roxford5k", "rparis6k")

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


def _as_index_array(values) -> np.ndarray:
    arr = np.asarray(values if values is not None else [])
    return arr.reshape(-1).astype(np.int64)


def _as_box(bbx) -> Box:
    values = [float(v) for v in np.asarray(bbx, dtype=np.float64).ravel()]
    if len(values) != 4:
        raise ValueError(f"Query box must have 4 numbers, got {values}.")
    return tuple(values)


def _load_pickle(path: pathlib.Path) -> dict:
    # Only open ground-truth files from a trusted source: pickle can run code.
    with open(path, "rb") as f:
        cfg = pickle.load(f)
    if not isinstance(cfg, Mapping):
        raise ValueError(
            f"{path} holds a {type(cfg).__name__}, expected a dict with "
            "'imlist', 'qimlist' and 'gnd'."
        )
    missing = [k for k in ("imlist", "gnd") if k not in cfg]
    if missing:
        raise ValueError(
            f"{path} lacks {missing}; expected revisitop/cnnimageretrieval "
            "keys 'imlist', 'qimlist' (or 'qidx') and 'gnd'."
        )
    return cfg


def _find_gnd_pickle(root: pathlib.Path, name: str) -> pathlib.Path | None:
    for folder in (root, root / name):
        path = folder / f"gnd_{name}.pkl"
        if path.is_file():
            return path
    return None


def _check_files_exist(paths: Iterable[str], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3])
        raise FileNotFoundError(
            f"{len(missing)} {what} image(s) not found, e.g. {shown}. Check "
            "the dataset root, or pass check_files=False to skip this check."
        )


def _from_gnd_pickle(
    path: pathlib.Path, name: str, check_files: bool
) -> RetrievalDataset:
    """Dataset from a revisitop / cnnimageretrieval `gnd_*.pkl`."""
    cfg = _load_pickle(path)
    imlist = [str(n) for n in cfg["imlist"]]
    if "qimlist" in cfg:
        qimlist = [str(n) for n in cfg["qimlist"]]
    elif "qidx" in cfg:
        qimlist = [imlist[int(i)] for i in np.ravel(cfg["qidx"])]
    else:
        raise ValueError(f"{path} has neither 'qimlist' nor 'qidx'.")
    if len(qimlist) != len(cfg["gnd"]):
        raise ValueError(
            f"{path}: {len(qimlist)} queries but {len(cfg['gnd'])} gnd entries."
        )
    image_dir = path.parent / "jpg"
    db_paths = [str(image_dir / f"{n}.jpg") for n in imlist]
    query_paths = [str(image_dir / f"{n}.jpg") for n in qimlist]
    if check_files:
        _check_files_exist(db_paths, f"{name} database")
        _check_files_exist(query_paths, f"{name} query")

    gnd, boxes = [], []
    for i, entry in enumerate(cfg["gnd"]):
        out = {}
        for key in ("ok", "easy", "hard", "junk"):
            if key in entry:
                out[key] = _as_index_array(entry[key])
        if "junk" not in out:
            out["junk"] = np.zeros((0,), dtype=np.int64)
        if "bbx" in entry and entry["bbx"] is not None:
            out["bbx"] = np.asarray(entry["bbx"], dtype=np.float64).ravel()
            boxes.append(_as_box(entry["bbx"]))
        else:
            boxes.append(None)
        if "ok" not in out and not ("easy" in out and "hard" in out):
            raise ValueError(
                f"{path}: gnd[{i}] has keys {sorted(entry)}; expected 'ok' "
                "or 'easy' and 'hard'."
            )
        gnd.append(out)
    if all(b is None for b in boxes):
        boxes = None
    logger.info(
        "%s: %d database images, %d queries from %s",
        name,
        len(db_paths),
        len(query_paths),
        path,
    )
    return RetrievalDataset(
        db_paths=db_paths,
        query_paths=query_paths,
        query_boxes=boxes,
        gnd=gnd,
        name=name,
    )


def load_revisited(
    root: PathLike, name: str, check_files: bool = True
) -> RetrievalDataset:
    """Loads revisited Oxford 5k or Paris 6k (Radenovic et al., 2018).

    Expects the revisitop layout: `root/gnd_<name>.pkl` (keys `imlist`,
    `qimlist`, `gnd`) and the images in `root/jpg/<image>.jpg`; `root` may
    also be the folder containing `<name>/`. The 70 queries are not part
    of the database and must be cropped to their box (`query_boxes`, see
    `crop_box`) before description, as the protocol requires. Evaluate
    with `keras_rmac.evaluation.evaluate_revisited`.

    Args:
        root: path. Dataset folder.
        name: str. `"roxford5k"` or `"rparis6k"`.
        check_files: bool. Raise if an image file is missing. Defaults to
            True.

    Returns:
        A `RetrievalDataset` whose `gnd` entries hold `"easy"`, `"hard"`,
        `"junk"` and `"bbx"`.

    Reference: https://arxiv.org/abs/1803.11285
    """
    name = str(name).lower()
    if name not in REVISITED_NAMES:
        raise ValueError(
            f"Unknown revisited dataset {name!r}; expected one of "
            f"{REVISITED_NAMES}."
        )
    root = pathlib.Path(root)
    path = _find_gnd_pickle(root, name)
    if path is None:
        raise FileNotFoundError(
            f"gnd_{name}.pkl not found in {root} or {root / name}. Download "
            "it from the revisitop project (data/datasets/<name>/)."
        )
    dataset = _from_gnd_pickle(path, name, check_files)
    if not dataset.is_revisited:
        raise ValueError(
            f"{path} has no 'easy'/'hard' ground truth; for the original "
            "protocol use load_oxford5k / load_paris6k."
        )
    return dataset


# ---------------------------------------------------------------------------
# Original Oxford 5k / Paris 6k.


def _first_existing(
    root: pathlib.Path, candidates, test
) -> pathlib.Path | None:
    for c in candidates:
        if test(root / c):
            return root / c
    return None


def _read_name_list(path: pathlib.Path) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _load_original_text(
    root: pathlib.Path,
    name: str,
    gt_dir: PathLike | None,
    image_dir: PathLike | None,
) -> RetrievalDataset:
    def has_queries(p: pathlib.Path) -> bool:
        return p.is_dir() and any(p.glob("*_query.txt"))

    if gt_dir is None:
        gt_dir = _first_existing(
            root,
            ("gt", "gt_files", "gt_files_170407", "gt_files_120310", "."),
            has_queries,
        )
        if gt_dir is None:
            raise FileNotFoundError(
                f"No gnd_{name}.pkl and no folder of *_query.txt files in "
                f"{root} (looked in gt/, gt_files*/ and the root); pass "
                "gt_dir= explicitly."
            )
    gt_dir = pathlib.Path(gt_dir)
    if image_dir is None:
        image_dir = _first_existing(
            root,
            ("jpg", "oxbuild_images", "images", "paris", "."),
            lambda p: p.is_dir() and any(p.rglob("*.jpg")),
        )
        if image_dir is None:
            raise FileNotFoundError(
                f"No .jpg images under {root}; pass image_dir= explicitly."
            )
    image_dir = pathlib.Path(image_dir)

    # Image name (without extension) -> path; Paris nests them by landmark.
    by_name = {}
    for p in sorted(image_dir.rglob("*.jpg")):
        if p.stem in by_name:
            raise ValueError(
                f"Image name {p.stem!r} appears twice: {by_name[p.stem]} and "
                f"{p}; keep one copy."
            )
        by_name[p.stem] = p
    imlist = sorted(by_name)
    index = {n: i for i, n in enumerate(imlist)}

    query_files = sorted(gt_dir.glob("*_query.txt"))
    if not query_files:
        raise FileNotFoundError(f"No *_query.txt files in {gt_dir}.")
    query_paths, boxes, gnd = [], [], []
    unknown = collections.Counter()
    for qf in query_files:
        prefix = str(qf)[: -len("_query.txt")]
        fields = _read_name_list(qf)[0].split()
        if len(fields) != 5:
            raise ValueError(
                f"{qf}: expected 'image x0 y0 x1 y1', got {' '.join(fields)}"
            )
        # Oxford query names carry an 'oxc1_' prefix the file names lack.
        qname = fields[0].removeprefix("oxc1_")
        if qname not in index:
            raise FileNotFoundError(
                f"{qf}: query image {qname}.jpg not found under {image_dir}."
            )
        query_paths.append(str(by_name[qname]))
        boxes.append(tuple(float(v) for v in fields[1:]))

        def indices(*kinds, prefix=prefix):
            out = []
            for kind in kinds:
                for n in _read_name_list(pathlib.Path(f"{prefix}_{kind}.txt")):
                    if n in index:
                        out.append(index[n])
                    else:
                        unknown[n] += 1
            return np.unique(np.array(out, dtype=np.int64))

        gnd.append({"ok": indices("good", "ok"), "junk": indices("junk")})
    if unknown:
        logger.warning(
            "%s: %d ground-truth image name(s) not found under %s were "
            "ignored, e.g. %s",
            name,
            len(unknown),
            image_dir,
            sorted(unknown)[:3],
        )
    logger.info(
        "%s: %d database images, %d queries from %s",
        name,
        len(imlist),
        len(query_paths),
        gt_dir,
    )
    return RetrievalDataset(
        db_paths=[str(by_name[n]) for n in imlist],
        query_paths=query_paths,
        query_boxes=boxes,
        gnd=gnd,
        name=name,
    )


def _load_original(
    root: PathLike,
    name: str,
    gt_dir: PathLike | None,
    image_dir: PathLike | None,
    check_files: bool,
) -> RetrievalDataset:
    root = pathlib.Path(root)
    path = _find_gnd_pickle(root, name) if gt_dir is None else None
    if path is not None:
        dataset = _from_gnd_pickle(path, name, check_files)
        if dataset.is_revisited:
            raise ValueError(
                f"{path} holds revisited ground truth; use load_revisited."
            )
        return dataset
    return _load_original_text(root, name, gt_dir, image_dir)


def load_oxford5k(
    root: PathLike,
    gt_dir: PathLike | None = None,
    image_dir: PathLike | None = None,
    check_files: bool = True,
) -> RetrievalDataset:
    """Loads Oxford 5k with its original protocol (Philbin et al., 2007).

    Reads `root/gnd_oxford5k.pkl` (cnnimageretrieval layout, images in
    `root/jpg/`) when present; otherwise the original text ground truth:
    for each query `Q`, `Q_query.txt` (`oxc1_<image> x0 y0 x1 y1`),
    `Q_good.txt`, `Q_ok.txt` and `Q_junk.txt` in `gt_dir`, and every
    `.jpg` under `image_dir` as the database. Positives (`"ok"`) are good
    plus ok, `"junk"` is junk. Query images belong to the database and are
    cropped to `query_boxes`.

    Args:
        root: path. Dataset folder.
        gt_dir: path or None. Folder of the `*_query.txt` files; None looks
            for `gt/`, `gt_files*/` or the root. Defaults to None.
        image_dir: path or None. Folder of the images (searched
            recursively); None looks for `jpg/`, `oxbuild_images/`,
            `images/` or the root. Defaults to None.
        check_files: bool. For the pickle layout, raise if an image file is
            missing. Defaults to True.

    Returns:
        A `RetrievalDataset` with `"ok"` / `"junk"` ground truth.
    """
    return _load_original(root, "oxford5k", gt_dir, image_dir, check_files)


def load_paris6k(
    root: PathLike,
    gt_dir: PathLike | None = None,
    image_dir: PathLike | None = None,
    check_files: bool = True,
) -> RetrievalDataset:
    """Loads Paris 6k with its original protocol (Philbin et al., 2008).

    Same layouts and rules as `load_oxford5k` (`gnd_paris6k.pkl`, or text
    ground truth with images possibly nested in per-landmark folders, such
    as `paris/defense/paris_defense_000000.jpg`).

    Args:
        root: path. Dataset folder.
        gt_dir: path or None. Folder of the `*_query.txt` files. Defaults
            to None.
        image_dir: path or None. Folder of the images, searched
            recursively; None looks for `jpg/`, `paris/`, `images/` or the
            root. Defaults to None.
        check_files: bool. For the pickle layout, raise if an image file is
            missing. Defaults to True.

    Returns:
        A `RetrievalDataset` with `"ok"` / `"junk"` ground truth.
    """
    return _load_original(root, "paris6k", gt_dir, image_dir, check_files)


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


def _is_image(p: pathlib.Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def load_folder_per_instance(
    root: PathLike, name: str | None = None
) -> RetrievalDataset:
    """Loads a `root/<instance>/<image>` folder as a retrieval benchmark.

    Every image is in the database. Each instance (subfolder, in sorted
    order) has one query, its first image in sorted file-name order; the
    positives are the other images of the instance and the query itself is
    junk. Instances with a single image give queries without positives,
    which `compute_map` leaves out.

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
    for sub in sorted((p for p in root.iterdir() if p.is_dir()), key=str):
        images = sorted((p for p in sub.iterdir() if _is_image(p)), key=str)
        if not images:
            logger.warning("%s: instance folder %s has no images", root, sub)
            continue
        label = len(names)
        names.append(sub.name)
        queries.append(len(db_paths))
        for p in images:
            db_paths.append(str(p))
            labels.append(label)
    if not db_paths:
        raise FileNotFoundError(
            f"No images found in subfolders of {root}; expected "
            f"root/<instance>/<image> with extensions {IMAGE_EXTENSIONS}."
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
