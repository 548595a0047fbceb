"""Oxford 5k and Paris 6k: the revisited and the original protocols."""

import collections
import logging
import os
import pathlib
import pickle
from collections.abc import Iterable
from collections.abc import Mapping

import numpy as np

from keras_rmac.data.datasets.base import Box
from keras_rmac.data.datasets.base import PathLike
from keras_rmac.data.datasets.base import RetrievalDataset

logger = logging.getLogger(__name__)

REVISITED_NAMES = ("roxford5k", "rparis6k")


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
