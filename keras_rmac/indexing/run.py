"""`index_folder`: a folder of photos -> a searchable index directory.

One run, under the index lock, in plain steps:

1. open: settings and model resolved against the index's own;
2. plan (`plan.py`): what is new, changed, gone or unchanged;
3. extract (`extract.py`): descriptors of the photos to describe,
   committed to the store shard by shard (a killed run resumes after the
   last committed shard);
4. build (`build.py`): when the indexed content changed, a new generation
   of the searchable index beside the current one, then the switch of the
   version marker (`layout.py`);
5. tidy up: the store compacted (or its floats dropped), old generations
   deleted, the report written.

The float descriptors in `.work/` take `4 * D` bytes per photo on disk
(5 KiB for D = 1280); they let later runs add or remove photos, or switch
the search mode, without describing everything again.
`keep_descriptors=False` deletes them once the searchable index is built;
the next run that finds photos added, changed or removed then has to
describe every photo again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

from keras_rmac import fileio
from keras_rmac.data import image_io
from keras_rmac.indexing import layout
from keras_rmac.indexing.build import adopt_legacy
from keras_rmac.indexing.build import build_version
from keras_rmac.indexing.errors import IndexBusyError
from keras_rmac.indexing.extract import extract_into_store
from keras_rmac.indexing.plan import content_digest
from keras_rmac.indexing.plan import plan_changes
from keras_rmac.indexing.report import IndexReport
from keras_rmac.indexing.settings import IndexSettings
from keras_rmac.indexing.store import DescriptorStore
from keras_rmac.models import loading
from keras_rmac.search import IndexMismatchError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The two heavy steps of a run, replaceable by another engine.

    `extract(job, plan, report, verbose)` commits the descriptors of
    `plan.todo` to `job.store`; `build_version(job, records)` returns a
    new complete generation. `keras_rmac.beam` runs both on Apache Beam.
    """

    extract: Any = extract_into_store
    build_version: Any = build_version


@dataclasses.dataclass
class Job:
    """One indexing run: where, with which settings and model.

    `workspace` is `index_dir`, or its `.rebuild/` folder for a rebuild
    (indexed aside, moved in after the switch).
    """

    photos_dir: str
    index_dir: str
    workspace: str
    settings: IndexSettings
    model: Any
    fingerprint: str
    dimension: int
    store: DescriptorStore
    record: dict
    built_digest: str | None
    generation: int | None
    rebuild: bool

    @property
    def model_path(self) -> str:
        return os.path.join(self.workspace, layout.MODEL_FILE)

    def write_record(self) -> None:
        path = os.path.join(self.workspace, layout.SETTINGS_FILE)
        fileio.atomic_write_json(path, self.record)


def _as_settings(settings, options) -> IndexSettings:
    if settings is None:
        settings = IndexSettings()
    elif not isinstance(settings, IndexSettings):
        raise TypeError(
            "`settings` must be an IndexSettings or None. Received: "
            f"{type(settings).__name__} (pass the model as `model=`)."
        )
    return settings.replace(**options) if options else settings


def index_folder(
    photos_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    settings: IndexSettings | None = None,
    *,
    model=None,
    rebuild: bool = False,
    verbose: int = 1,
    steps: Steps | None = None,
    **options: Any,
) -> IndexReport:
    """Indexes (or updates the index of) every photo under a folder.

    Lists the images under `photos_dir` recursively, describes those that
    are new or changed since the last run, forgets those that are gone,
    and builds a new version of the searchable index when its content
    changed. Unreadable files are skipped, counted and listed in the
    report; they never stop the run. A run that is killed can simply be
    started again: it resumes after the last committed shard, and the
    previous version stays searchable meanwhile.

    Args:
        photos_dir: str or os.PathLike. The folder of photos (recursive).
        index_dir: str or os.PathLike. The index directory (created).
        settings: `IndexSettings` or None. How to index; fields left at
            None keep the index's values. Defaults to None (all defaults).
        model: `RMACModel` or None. The descriptor network. None reuses the
            one saved in `index_dir` (required for a new index). A model
            whose `fingerprint()` differs from the one the index was built
            with is refused (`IndexMismatchError`) unless `rebuild=True`.
        rebuild: bool. Index everything afresh, aside, then switch to it
            (needed to change the model, `max_size`, `scales` or
            `draft_above`). Defaults to False.
        verbose: int. 1 shows progress. Defaults to 1.
        steps: `Steps` or None. Who extracts and builds (e.g. a Beam
            pipeline, `keras_rmac.beam.index_folder_on_beam`). Defaults to
            None (here, in this process).
        **options: fields of `IndexSettings` overriding `settings` (e.g.
            `mode="exact"`, `max_size=384`).

    Returns:
        An `IndexReport`, also written to `INDEX_DIR/report.json`.

    Raises:
        IndexMismatchError: the index was built with another model,
            `max_size`, `scales` or `draft_above`, and `rebuild` is False.
        IndexBusyError: another run holds the index.
        FileNotFoundError / NotADirectoryError: `photos_dir` is not a
            folder.

    Example:

    >>> from keras_rmac.models import RMACModel  # doctest: +SKIP
    >>> report = index_folder("photos", "photos_index",
    ...                       model=RMACModel("mobilenet_v2"))  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """
    settings = _as_settings(settings, options)
    steps = steps or Steps()
    started = time.perf_counter()
    photos_dir = os.path.abspath(os.fspath(photos_dir))
    index_dir = os.path.abspath(os.fspath(index_dir))
    paths = image_io.list_images(photos_dir)  # Fails early on a bad folder.
    os.makedirs(index_dir, exist_ok=True)
    lock = fileio.FileLock(
        os.path.join(index_dir, layout.LOCK_FILE),
        f"Another process is indexing into {index_dir}; wait for it to "
        "finish (or stop it) and run again.",
        error=IndexBusyError,
    )
    with lock:
        layout.finish_rebuild(index_dir)  # One killed after its switch.
        job = open_job(photos_dir, index_dir, settings, model, rebuild)
        report = IndexReport(
            photos_dir=photos_dir,
            index_dir=index_dir,
            listed=len(paths),
            mode=job.settings.mode,
            bytes_per_vector=job.settings.bytes_per_vector
            if job.settings.mode == "compact"
            else None,
        )
        plan = plan_changes(job, paths, report)
        t0 = time.perf_counter()
        if plan.todo:
            steps.extract(job, plan, report, verbose)
        report.seconds_extracting = time.perf_counter() - t0
        build(job, plan, report, steps.build_version)
        tidy_up(job, plan)
        report.seconds = time.perf_counter() - started
        fileio.atomic_write_json(
            os.path.join(index_dir, layout.REPORT_FILE), report.to_dict()
        )
    return report


def open_job(photos_dir, index_dir, settings, model, rebuild) -> Job:
    """Resolves the settings and the model; records them in `index.json`."""
    workspace = index_dir
    if rebuild:
        saved = layout.saved_model_path(index_dir)
        if model is None and saved is None:
            raise ValueError(
                f"{index_dir} holds no index yet ({layout.MODEL_FILE} "
                "missing): pass `model=` (an RMACModel) to create one."
            )
        if model is None:
            model = loading.load_rmac_model(saved)
        workspace = layout.rebuild_workspace(index_dir)
    recorded = layout.recorded_settings(workspace)
    settings_path = os.path.join(workspace, layout.SETTINGS_FILE)
    if recorded is not None and (
        recorded.get("format") not in layout.READABLE_SETTINGS_FORMATS
    ):
        raise IndexMismatchError(
            f"{settings_path} has format {recorded.get('format')!r}; this "
            f"version reads formats {layout.READABLE_SETTINGS_FORMATS}. "
            "Rebuild the index (--rebuild)."
        )
    recorded = recorded or {}
    model, fingerprint, must_save = loading.resolve_index_model(
        os.path.join(workspace, layout.MODEL_FILE),
        model,
        recorded.get("fingerprint"),
        rebuild,
    )
    settings = settings.resolve(recorded, index_dir)
    old_root = recorded.get("photos_dir")
    if old_root and old_root != photos_dir:
        logger.warning(
            "The index in %s mirrored %s; it now mirrors %s (photos are "
            "matched by their path relative to the folder).",
            index_dir,
            old_root,
            photos_dir,
        )
    if must_save:
        with fileio.atomic_write(
            os.path.join(workspace, layout.MODEL_FILE)
        ) as tmp:
            model.save(tmp)
    dimension = loading.model_dimension(model)
    job = Job(
        photos_dir=photos_dir,
        index_dir=index_dir,
        workspace=workspace,
        settings=settings,
        model=model,
        fingerprint=fingerprint,
        dimension=dimension,
        store=DescriptorStore(
            os.path.join(workspace, layout.WORK_DIR), dimension
        ),
        record=_record(settings, fingerprint, dimension, photos_dir),
        built_digest=None,
        generation=layout.current_generation(index_dir),
        rebuild=rebuild,
    )
    marker = layout.read_marker(index_dir)
    if marker is not None:
        job.built_digest = marker.get("digest")
    elif job.generation == 0:  # A 0.2.0 index: its digest is recorded.
        job.built_digest = recorded.get("built_digest")
    job.record["built_digest"] = recorded.get("built_digest")
    job.write_record()
    return job


def _record(settings, fingerprint, dimension, photos_dir) -> dict:
    """What `index.json` holds."""
    return {
        "format": layout.SETTINGS_FORMAT,
        "fingerprint": fingerprint,
        "model_spec": settings.model_spec,
        "dimension": int(dimension),
        "max_size": int(settings.max_size),
        "scales": list(settings.scales),
        "mode": settings.mode,
        "bytes_per_vector": int(settings.bytes_per_vector),
        "photos_dir": photos_dir,
        "hash_contents": bool(settings.hash_contents),
        "keep_descriptors": bool(settings.keep_descriptors),
        "max_pixels": int(settings.max_pixels),
        "draft_above": settings.draft_above,
        "built_digest": None,
    }


def build(job, plan, report, build_version=build_version) -> None:
    """A new version when the indexed content changed, then the switch."""
    live = [job.store.records[rel] for rel in sorted(plan.listed)]
    report.failed = [
        {"path": r.path, "reason": r.error} for r in live if r.error is not None
    ]
    ok = [r for r in live if r.error is None]
    report.indexed = len(ok)
    digest = content_digest(ok, job)
    if job.rebuild or digest != job.built_digest or job.generation is None:
        version = build_version(job, ok)
        report.rebuilt = True
    elif job.generation == 0:
        version = adopt_legacy(job)  # Unchanged: kept as it is.
    else:
        return
    job.record["built_digest"] = digest
    job.write_record()
    if job.rebuild:
        layout.mark_rebuild_complete(job.index_dir)
    layout.switch_to(job.index_dir, version, digest)
    if job.rebuild:
        layout.finish_rebuild(job.index_dir)
        job.workspace = job.index_dir
        job.store = DescriptorStore(
            os.path.join(job.index_dir, layout.WORK_DIR), job.dimension
        )


def tidy_up(job, plan) -> None:
    """Store housekeeping and removal of stale generations."""
    store = job.store
    live = [store.records[rel] for rel in sorted(plan.listed)]
    if not job.settings.keep_descriptors:
        if any(store.has_descriptor(r) for r in store.records.values()):
            store.drop_descriptors(live)
    else:
        # Compact once a quarter of the stored rows are stale, or once
        # incremental runs have left many small shards (the full shards
        # of a first run are left alone: rewriting them gains nothing).
        stale = store.stale_rows(plan.listed)
        small = sum(
            store.shard_sizes.get(n, 0) < job.settings.shard_size // 2
            for n in store.shards
        )
        ok = sum(r.error is None for r in live)
        if stale > 0.25 * max(1, ok) or small > 64:
            store.compact(live)
    layout.remove_stale_generations(job.index_dir)
