"""Running class tasks, in this process or in spawned worker processes."""

import contextlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

from keras_rmac import fileio
from keras_rmac.data.cleaning.config import CleaningConfig
from keras_rmac.data.cleaning.one_class import clean_class

logger = logging.getLogger(__name__)


def _run_class_task(task: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point: cleans one class and saves it to its work file."""
    config = CleaningConfig(**task["config"])
    result = clean_class(task["label"], task["paths"], config, task["pairs"])
    payload = {"fingerprint": task["fingerprint"], "result": result.to_dict()}
    fileio.atomic_write_text(task["work_file"], json.dumps(payload))
    return payload["result"]


def _init_worker() -> None:
    """Worker set-up: one OpenCV thread."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


@contextlib.contextmanager
def _one_blas_thread():
    """Spawned workers start with one BLAS/OpenMP thread each.

    With several worker processes, multi-threaded BLAS in each only
    oversubscribes the cores (and is much slower when they are busy).
    Variables the user set are left alone.
    """
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    added = [n for n in names if n not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


ResultCallback = Callable[[str, dict[str, Any]], None]


def run_tasks(
    tasks: list[dict[str, Any]], num_workers: int, on_result: ResultCallback
) -> dict[str, str]:
    """Cleans each task's class and saves it to its work file.

    Args:
        tasks: dicts with the class's `label`, `paths`, `config` (as a
            dict), `pairs` (or None), `fingerprint` and `work_file`.
        num_workers: int. Worker processes; with 1 (or a single task) the
            classes run in this process.
        on_result: called with `(label, ClassResult.to_dict())` as each
            class finishes.

    Returns:
        `{label: repr(error)}` of the classes that failed (the others are
        saved and reported).
    """
    if num_workers == 1 or len(tasks) <= 1:
        return _run_serial(tasks, on_result)
    return _run_parallel(tasks, num_workers, on_result)


def _run_serial(tasks, on_result) -> dict[str, str]:
    failures = {}
    for task in tasks:
        try:
            on_result(task["label"], _run_class_task(task))
        except Exception as error:  # noqa: BLE001 - reported by the caller.
            logger.exception("Class %r failed", task["label"])
            failures[task["label"]] = repr(error)
    return failures


def _run_parallel(tasks, num_workers, on_result) -> dict[str, str]:
    failures = {}
    context = multiprocessing.get_context("spawn")
    with (
        _one_blas_thread(),
        context.Pool(num_workers, initializer=_init_worker) as pool,
    ):
        pending = {
            task["label"]: pool.apply_async(_run_class_task, (task,))
            for task in tasks
        }
        while pending:
            ready = [k for k, v in pending.items() if v.ready()]
            if not ready:
                time.sleep(0.05)
                continue
            for label in ready:
                async_result = pending.pop(label)
                try:
                    on_result(label, async_result.get())
                except Exception as error:  # noqa: BLE001
                    logger.error("Class %r failed: %r", label, error)
                    failures[label] = repr(error)
    return failures
