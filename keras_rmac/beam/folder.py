"""`index_folder_on_beam`: the folder indexer with its heavy steps on Beam.

The run is the folder indexer's (`keras_rmac.indexing.index_folder`):
same plan (new, changed, removed photos), same descriptor store, same
report, same generations and version marker, so `PhotoIndex` and
`keras-rmac search` read the result like any other index. Two steps run
as Beam pipelines instead of in this process:

- extract: the photos to describe, in shards of `shard_size`, described
  by the workers (`ExtractDescriptors`) into `INDEX_DIR/.work/beam/`, then
  committed to the store in order. A run killed at any point and started
  again skips the shards already written;
- build: the live descriptors split into `index_shards` parts, one index
  per part, joined into a `ShardedIndex` in the new generation. On a
  remote runner (Dataflow, Flink, Spark) the workers build the parts
  (`BuildIndexShards`); on a local one (`DirectRunner`) this process
  builds them in threads, as `ShardedIndex` does, since a second local
  pipeline would only start its worker processes (TensorFlow imports
  and all) again on the same cores. Either way, fast-mode parts whose
  merged results miss the recall target are built once more with more
  leaves, or without a tree when small (`build_with_fallback` for a
  remote runner).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_rmac import fileio
from keras_rmac.beam import pipeline
from keras_rmac.beam import shards
from keras_rmac.indexing import layout
from keras_rmac.indexing.report import IndexReport
from keras_rmac.indexing.run import Steps
from keras_rmac.indexing.run import index_folder
from keras_rmac.indexing.settings import IndexSettings
from keras_rmac.indexing.store import Record

BEAM_DIR = "beam"
BUILD_DIR = "beam-build"


def index_folder_on_beam(  # noqa: PLR0913 - index_folder's arguments + Beam's
    photos_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    settings: IndexSettings | None = None,
    *,
    runner: str = "DirectRunner",
    pipeline_args: Sequence[str] = (),
    index_shards: int = 4,
    model=None,
    rebuild: bool = False,
    verbose: int = 1,
    **options: Any,
) -> IndexReport:
    """`index_folder` with extraction and index building on Apache Beam.

    Args:
        photos_dir: str or os.PathLike. The folder of photos (local).
        index_dir: str or os.PathLike. The index directory.
        settings: `IndexSettings` or None. As `index_folder`.
        runner: str. Beam runner (`"DirectRunner"`, `"DataflowRunner"`,
            `"FlinkRunner"`, `"SparkRunner"`). Defaults to
            `"DirectRunner"`.
        pipeline_args: sequence of str. Beam pipeline options, e.g.
            `["--direct_num_workers=2",
            "--direct_running_mode=multi_processing"]`.
        index_shards: int >= 1. Parts of the search index, each built by
            one worker. Defaults to 4.
        model, rebuild, verbose, **options: as `index_folder`.

    Returns:
        The `IndexReport` (also in `INDEX_DIR/report.json`).

    Example:

    >>> index_folder_on_beam("photos", "photos_index",
    ...     model=RMACModel("mobilenet_v2"),
    ...     pipeline_args=["--direct_num_workers=2",
    ...                    "--direct_running_mode=multi_processing"],
    ... )  # doctest: +SKIP
    """
    from keras_rmac.checks import check_int

    check_int("index_shards", index_shards)
    beam_options = {"runner": runner, "pipeline_args": list(pipeline_args)}
    steps = Steps(
        extract=functools.partial(extract_on_beam, **beam_options),
        build_version=functools.partial(
            build_on_beam, index_shards=index_shards, **beam_options
        ),
    )
    return index_folder(
        photos_dir,
        index_dir,
        settings,
        model=model,
        rebuild=rebuild,
        verbose=verbose,
        steps=steps,
        **options,
    )


def _describe_options(job) -> dict:
    s = job.settings
    return {
        "max_size": int(s.max_size),
        "scales": [float(x) for x in s.scales],
        "batch_size": int(s.batch_size),
        "num_workers": int(s.num_workers),
        "max_pixels": int(s.max_pixels),
        "draft_above": s.draft_above,
        "dimension": int(job.dimension),
    }


def extract_on_beam(job, plan, report, verbose, *, runner, pipeline_args):
    """The extract step (`Steps.extract`) as a Beam pipeline."""
    del verbose  # Beam reports progress its own way.
    out_dir = os.path.join(job.workspace, layout.WORK_DIR, BEAM_DIR)
    options = _describe_options(job)
    keyed = {k: v for k, v in options.items() if k != "num_workers"}
    specs = shards.plan_shards(
        [(rel, *plan.keys[rel]) for rel in plan.todo],
        job.settings.shard_size,
        {"fingerprint": job.fingerprint, **keyed},
    )
    os.makedirs(out_dir, exist_ok=True)
    shards.write_manifest(out_dir, specs, job.fingerprint, _marker(job))
    pipeline.run_extraction(
        specs,
        model_path=job.model_path,
        photos_dir=job.photos_dir,
        out_dir=out_dir,
        options=options,
        runner=runner,
        pipeline_args=pipeline_args,
    )
    for spec in specs:  # Committed in order: the store's own shards.
        found = shards.read_shard(out_dir, spec, job.dimension)
        if found is None:
            raise RuntimeError(
                f"The Beam pipeline finished without shard {spec.number} in "
                f"{out_dir}; run the same command again (finished shards are "
                "kept)."
            )
        records = [Record(**r) for r in found[0]]
        for record in records:
            if record.error is None:
                report.extracted += 1
            elif record.path in plan.retried:
                report.reused += 1  # Still too large: as before.
            else:
                report.new_failures += 1
        job.store.commit(records, found[1])
    for name in os.listdir(out_dir):  # Keep the manifest and dead letters.
        if name.split(".")[0].isdigit() or ".tmp-" in name:
            os.remove(os.path.join(out_dir, name))


def _marker(job) -> dict:
    from keras_rmac.search import INDEX_FORMAT_VERSION

    return {
        "generation": job.generation,
        "settings_format": layout.SETTINGS_FORMAT,
        "index_format_version": INDEX_FORMAT_VERSION,
    }


def build_on_beam(job, records, *, index_shards, runner, pipeline_args):
    """The build step (`Steps.build_version`): a `ShardedIndex` in a new
    generation, its parts built by the workers of a remote runner, or in
    this process's threads for a local one (`is_local_runner`)."""
    from keras_rmac.search import ShardedIndex
    from keras_rmac.search import scann_policy

    settings = job.settings
    dimension = job.dimension
    descriptors = (
        job.store.descriptors(records)
        if records
        else np.zeros((0, dimension), np.float32)
    )
    index_options = {}
    if settings.mode == "compact":
        index_options["bytes_per_vector"] = settings.bytes_per_vector
    metadata = {
        "photos_dir": job.photos_dir,
        "fingerprint": job.fingerprint,
        "max_size": settings.max_size,
        "scales": list(settings.scales),
        "draft_above": settings.draft_above,
        "dimension": dimension,
    }
    paths = [r.path for r in records]
    if is_local_runner(runner) or not records:
        # A local runner's workers are processes of this machine: a
        # second pipeline would only start them again (each importing
        # TensorFlow) to build what this process builds in threads.
        index = ShardedIndex(
            dimension,
            shard_kind=settings.mode,
            num_shards=index_shards,
            shard_options=index_options,
            metadata=metadata,
        )
        if records:
            index.add(
                descriptors,
                ids=np.arange(len(records), dtype=np.int64),
                paths=paths,
            )
        return _save_version(job, index)
    work = os.path.join(job.workspace, layout.WORK_DIR, BUILD_DIR)
    os.makedirs(work, exist_ok=True)
    bounds = np.unique(
        np.linspace(0, len(records), index_shards + 1).astype(np.int64)
    )
    if settings.mode != "exact":
        # Each part gets the tree one index of every row would get, as
        # `ShardedIndex` gives its own shards (`shard_num_leaves`).
        leaves = scann_policy.shard_num_leaves(
            int(np.diff(bounds).min()), len(records), settings.mode
        )
        if leaves:
            index_options["num_leaves"] = leaves

    def build(options):
        # ScaNN parts are not tuned on the workers: only the merged top-k
        # is (here, on every row), as ShardedIndex does for its shards.
        untuned = (
            options if settings.mode == "exact" else {**options, **UNTUNED}
        )
        parts = _write_parts(job, work, descriptors, paths, bounds, untuned)
        pipeline.run_index_build(
            parts,
            kind=settings.mode,
            dimension=dimension,
            index_options=untuned,
            metadata=metadata,
            runner=runner,
            pipeline_args=pipeline_args,
        )
        index = ShardedIndex.from_shards(
            [p["target"] for p in parts],
            metadata=metadata,
            shard_options=_tuned_options(options, settings.mode),
        )
        index.tune(descriptors)  # The merged operating point (ScaNN parts).
        return index

    index = build_with_fallback(
        build, index_options, settings.mode, int(np.diff(bounds).min())
    )
    version = _save_version(job, index)  # Hard links to the parts.
    shutil.rmtree(work, ignore_errors=True)
    return version


UNTUNED = {"target_recall": None}
"""Options of parts built on remote workers (ScaNN modes): no recall
measurement of their own."""


def _tuned_options(options, mode):
    """The merged index's shard options: `options` with the recall target
    a part would have had (its `make_index` default, unless given)."""
    from keras_rmac.search import scann_policy

    if mode == "exact":
        return dict(options)
    return {"target_recall": scann_policy.DEFAULT_TARGET_RECALL, **options}


def build_with_fallback(build, options, mode, rows):
    """`build(options)`, a `ShardedIndex` of parts built elsewhere and
    tuned; built once more when its merged recall target is missed, as
    `ShardedIndex.build` does for shards it builds itself: with
    `REBUILD_LEAVES_FACTOR` times the leaves, or no tree for parts of
    fewer than `MIN_TREE_SIZE` rows (fast mode, a tree given by the
    policy; `rows`: rows of the smallest part)."""
    from keras_rmac.search import scann_builds

    index = build(options)
    point = index.operating_point
    leaves = options.get("num_leaves")
    if mode != "fast" or not leaves or point is None or point.reached:
        return index
    leaves = scann_builds.rebuild_num_leaves(rows, leaves)
    return build({**options, "num_leaves": leaves})


def _write_parts(job, work, descriptors, paths, bounds, options):
    """The parts' descriptor files and specs (`BuildIndexShardFn`'s
    input); a part's key covers its rows, paths, options and model."""
    parts = []
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        x = np.ascontiguousarray(descriptors[start:stop])
        ids = np.arange(start, stop, dtype=np.int64)
        digest = hashlib.sha256(x.tobytes())
        digest.update(json.dumps([job.settings.mode, options]).encode())
        digest.update(json.dumps(paths[start:stop]).encode())
        digest.update(job.fingerprint.encode())
        part = os.path.join(work, f"{number:05d}")
        fileio.atomic_save_npy(part + ".vectors.npy", x)
        fileio.atomic_save_npy(part + ".ids.npy", ids)
        parts.append(
            {
                "number": number,
                "key": digest.hexdigest(),
                "vectors": part + ".vectors.npy",
                "ids": part + ".ids.npy",
                "paths": paths[start:stop],
                "target": part + ".index",
            }
        )
    return parts


def is_local_runner(runner: str) -> bool:
    """Whether `runner` runs its workers on this machine (DirectRunner,
    PrismRunner, or the Python SDK's in-process runners)."""
    name = runner.rsplit(".", 1)[-1].lower()
    return name in (
        "directrunner",
        "prismrunner",
        "bundlebasedirectrunner",
        "swallowingdirectrunner",
        "fnapirunner",
    )


def _save_version(job, index):
    version = layout.new_generation(job.index_dir)
    index.save(version.searchable)
    layout.link_or_copy(job.model_path, version.model_path)
    fileio.fsync_tree(version.directory)
    return version
