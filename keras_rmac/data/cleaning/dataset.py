"""Cleaning a whole labelled list: plan, resume, run the classes, report."""

import collections
import logging
import os
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_rmac import fileio
from keras_rmac import progress
from keras_rmac.data import local_features
from keras_rmac.data.cleaning import resume
from keras_rmac.data.cleaning import workers
from keras_rmac.data.cleaning.config import DROP_REASONS
from keras_rmac.data.cleaning.config import CleaningConfig
from keras_rmac.data.cleaning.graph import shortlist_pairs
from keras_rmac.data.cleaning.one_class import ClassResult
from keras_rmac.data.cleaning.report import CleaningReport
from keras_rmac.data.labelled import LabelledImages
from keras_rmac.data.labelled import read_image_list
from keras_rmac.data.labelled import write_image_list

logger = logging.getLogger(__name__)

Embed = Callable[[Sequence[str]], np.ndarray]


def _embed_class(embed: Embed, label: str, paths: Sequence[str]) -> np.ndarray:
    """Global descriptors of a class; rows that failed are NaN."""
    try:
        out = np.asarray(embed(list(paths)), np.float64)
        if out.ndim == 2 and len(out) == len(paths):
            return out
        raise ValueError(
            f"embed returned shape {out.shape} for {len(paths)} paths; "
            "expected (N, D)"
        )
    except Exception as error:  # noqa: BLE001 - retried image by image.
        logger.warning(
            "Class %r: embed failed on the batch (%s); retrying image by image",
            label,
            error,
        )
    rows = []
    for path in paths:
        try:
            rows.append(np.asarray(embed([path]), np.float64).reshape(-1))
        except Exception as error:  # noqa: BLE001 - image is verified anyway.
            logger.warning("embed failed on %s (%s)", path, error)
            rows.append(None)
    dim = next((len(r) for r in rows if r is not None), 1)
    return np.stack([np.full(dim, np.nan) if r is None else r for r in rows])


def _group_by_class(
    images: LabelledImages | Sequence[tuple[str, str]],
) -> dict[str, list[str]]:
    """`{label: [paths]}` in the order classes and images first appear."""
    if isinstance(images, LabelledImages):
        images = zip(images.paths, images.label_names())
    classes: dict[str, list[str]] = {}
    for path, label in images:
        classes.setdefault(str(label), []).append(str(path))
    return classes


def _plan(classes, config, work_dir, resolve, use_shortlist):
    """Finished classes from the work dir, and a task for each other one."""
    results: dict[str, ClassResult] = {}
    resumed = set()
    tasks = []
    for label, paths in classes.items():
        fingerprint = resume.fingerprint(label, paths, config, use_shortlist)
        work_file = resume.work_file(work_dir, label)
        finished = resume.load_finished(work_file, fingerprint)
        if finished is not None:
            results[label] = finished
            resumed.add(label)
            continue
        tasks.append(
            {
                "label": label,
                "paths": [resolve(p) for p in paths],
                "config": config.to_dict(),
                "pairs": None,
                "fingerprint": fingerprint,
                "work_file": work_file,
            }
        )
    if resumed:
        logger.info(
            "Resuming: %d of %d classes already done in %s",
            len(resumed),
            len(classes),
            work_dir,
        )
    # Largest classes first: better balance across workers.
    tasks.sort(key=lambda t: -len(t["paths"]))
    return results, resumed, tasks


def _run(tasks, results, num_workers, bar, work_dir) -> None:
    """Runs the tasks into `results`; raises if a class failed."""
    done = len(results)
    if bar is not None:
        bar.update(done)

    def collect(label, result_dict):
        nonlocal done
        results[label] = ClassResult.from_dict(result_dict)
        done += 1
        if bar is not None:
            bar.update(done)

    failures = workers.run_tasks(tasks, num_workers, collect)
    if failures:
        raise RuntimeError(
            f"{len(failures)} class(es) failed: {failures}. The other "
            f"classes are saved in {work_dir}; fix the cause and rerun to "
            "resume."
        )


def _class_stats(label, result, resumed) -> dict[str, Any]:
    return {
        "label": label,
        "num_images": result.num_images,
        "num_kept": len(result.kept),
        "num_pairs": result.num_pairs,
        "num_verified_pairs": len(result.edges),
        "seconds": result.seconds,
        "resumed": label in resumed,
    }


def _collate(classes, results, resumed, resolve):
    """The clean list (in input order), the dropped rows, per-class stats."""
    paths, labels, boxes, dropped, stats = [], [], [], [], []
    for label, class_paths in classes.items():
        result = results[label]
        for i, box in sorted(result.kept.items()):
            paths.append(_as_written(class_paths[i], resolve))
            labels.append(label)
            boxes.append(box)
        for i, reason, detail in result.dropped:
            dropped.append(
                {
                    "path": class_paths[i],
                    "label": label,
                    "reason": reason,
                    "detail": detail,
                }
            )
        stats.append(_class_stats(label, result, resumed))
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    kept = LabelledImages.from_labels(paths, labels, boxes)
    return kept, dropped, stats


def _as_written(path: str, resolve: Callable[[str], str]) -> str:
    """A kept path as `write_image_list` should see it.

    Absolute input paths stay as given; relative ones are resolved against
    `root` and made relative to the current folder, which the writer then
    makes relative to the clean list's folder.
    """
    return path if os.path.isabs(path) else os.path.relpath(resolve(path))


def _resolver(root: str | None) -> Callable[[str], str]:
    def resolve(path):
        if root is None or os.path.isabs(path):
            return path
        return os.path.join(root, path)

    return resolve


def clean_dataset(
    images: LabelledImages | Sequence[tuple[str, str]],
    output_path: str | os.PathLike,
    *,
    config: CleaningConfig | None = None,
    root: str | os.PathLike | None = None,
    embed: Embed | None = None,
    num_workers: int = 1,
    work_dir: str | os.PathLike | None = None,
    verbose: int = 1,
) -> CleaningReport:
    """Cleans a labelled image list and writes `path,label,x0,y0,x1,y1`.

    Classes are processed independently, in `num_workers` processes. Each
    finished class is written atomically to `work_dir` with a fingerprint
    of its image list and of `config`; a restarted run reuses those and
    only computes the others. The clean list keeps the input's class order
    and image order. It is written by
    `keras_rmac.data.labelled.write_image_list`: absolute paths as given,
    relative ones (resolved against `root`) relative to the clean list's
    own folder, which is how `keras_rmac.data.labelled.read_image_list`
    (and so `keras-rmac train --train-list`) resolves them: the output
    feeds training wherever it is written. Next to the input list, the
    path strings are unchanged.

    Args:
        images: `LabelledImages` (their boxes are ignored), or
            `(path, label)` pairs.
        output_path: the clean list CSV to write. The report goes to
            `<output_path>.report.json` and `<output_path>.report.txt`.
        config: `CleaningConfig`. Defaults to `CleaningConfig()`.
        root: directory that relative paths are relative to. Defaults to
            the current directory.
        embed: optional callable mapping a list of image paths (as
            resolved against `root`) to an (N, D) array of L2-normalised
            global descriptors, e.g. an R-MAC model's extractor. It runs in
            this process, before the workers start. With it, only each
            image's `config.shortlist_k` nearest neighbours are verified.
            It is not part of the resume fingerprint: clear the work
            directory after changing it.
        num_workers: int. Worker processes; 1 runs in this process.
            Defaults to 1.
        work_dir: directory for per-class results. Defaults to
            `<output_path>.work`.
        verbose: int. 0 silent, 1 progress bar. Defaults to 1.

    Returns:
        A `CleaningReport`.

    Example:

    Two blank images of one class: no keypoints, so no verified pair, and
    both are dropped (the clean list holds only its header).

    >>> import os, tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("a.png", "b.png"):
    ...     Image.new("RGB", (64, 64), "gray").save(os.path.join(folder, name))
    >>> rows = [("a.png", "tower"), ("b.png", "tower")]
    >>> out = os.path.join(folder, "clean.csv")
    >>> report = clean_dataset(rows, out, root=folder, verbose=0)
    >>> report.num_images, report.num_kept
    (2, 0)
    >>> report.dropped_counts["no_verified_match"]
    2
    >>> open(out).read()
    'path,label,x0,y0,x1,y1\\n'
    """
    config = config or CleaningConfig()
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    local_features.require_cv2()
    start = time.perf_counter()
    output_path = os.fspath(output_path)
    work_dir = os.fspath(work_dir) if work_dir else output_path + ".work"
    os.makedirs(work_dir, exist_ok=True)
    resolve = _resolver(os.fspath(root) if root is not None else None)
    classes = _group_by_class(images)
    use_shortlist = embed is not None and config.shortlist_k is not None
    results, resumed, tasks = _plan(
        classes, config, work_dir, resolve, use_shortlist
    )
    if use_shortlist:
        for task in tasks:
            descriptors = _embed_class(embed, task["label"], task["paths"])
            task["pairs"] = shortlist_pairs(descriptors, config.shortlist_k)
    bar = progress.progress_bar(
        len(classes), verbose, unit_name="class", label="cleaning"
    )
    _run(tasks, results, num_workers, bar, work_dir)
    kept, dropped, stats = _collate(classes, results, resumed, resolve)
    write_image_list(output_path, kept)
    counts = collections.Counter(d["reason"] for d in dropped)
    report = CleaningReport(
        output_path=output_path,
        num_images=sum(len(p) for p in classes.values()),
        num_kept=len(kept),
        num_classes=len(classes),
        num_classes_kept=sum(1 for c in stats if c["num_kept"]),
        dropped_counts={r: counts.get(r, 0) for r in DROP_REASONS},
        dropped=dropped,
        classes=stats,
        seconds=time.perf_counter() - start,
        config=config.to_dict(),
    )
    fileio.atomic_write_json(output_path + ".report.json", report.to_dict())
    fileio.atomic_write_text(output_path + ".report.txt", report.summary())
    logger.info("%s", report.summary(max_listed=0))
    return report


def clean_list(
    list_path: str | os.PathLike,
    output_path: str | os.PathLike,
    **kwargs,
) -> CleaningReport:
    """Reads a labelled list CSV and runs `clean_dataset` on it.

    The list is read by `keras_rmac.data.labelled.read_image_list` (any of
    its layouts: `path,label[,...]` with or without a header, Google
    Landmarks v2 `train.csv` / `train_clean.csv`). Relative image paths
    are taken relative to the CSV's directory unless `root` is given.

    Args:
        list_path: the input CSV.
        output_path: the clean list CSV to write.
        **kwargs: passed to `clean_dataset`.

    Returns:
        A `CleaningReport`.
    """
    # Paths as written (root=""): `clean_dataset` resolves them against
    # `root`, and the report and the resume fingerprints use them as written.
    images = read_image_list(list_path, root="")
    kwargs.setdefault("root", os.path.dirname(os.path.abspath(list_path)))
    return clean_dataset(images, output_path, **kwargs)
