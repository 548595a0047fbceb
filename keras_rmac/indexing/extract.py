"""The extract step: photos -> descriptors, committed to the store by shard.

Batches are aligned to shard starts, so a resumed run computes bit for bit
what an uninterrupted one computes.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from keras_rmac import progress
from keras_rmac.data import image_io
from keras_rmac.indexing.store import Record

logger = logging.getLogger(__name__)


def extract_images(model, images, max_size, scales, batch_size=1):
    """Descriptors `(N, D)` of decoded images, as the index computes them."""
    return model.extract(
        images,
        max_size=max_size,
        scales=scales,
        batch_size=batch_size,
        num_workers=0,
        verbose=0,
    )


def decode_options(max_size, scales, max_pixels, draft_above) -> dict:
    """The keyword arguments of `image_io.load_image(s)` for the index.

    Large JPEGs (above `draft_above` declared pixels) are decoded at
    reduced scale down to the largest size they are resized to, as
    `RMACModel.extract` decodes files, so the index's descriptors equal
    `extract(path, max_size=..., scales=..., draft_above=...)`.
    """
    from keras_rmac.models.multiscale import scale_sizes

    return {
        "max_pixels": max_pixels,
        "draft_size": max(scale_sizes(max_size, scales)),
        "draft_above": draft_above,
    }


def extract_into_store(job, plan, report, verbose=1):
    """Extracts the descriptors of `plan.todo`, one shard at a time.

    Args:
        job: the run (`keras_rmac.indexing.run.Job`): model, settings,
            store and photo folder.
        plan: `keras_rmac.indexing.plan.Plan`: `todo`, the paths (relative
            to the folder) to describe; `keys`, path -> `(size, mtime_ns,
            sha256)` of each file; `retried`, the unchanged files refused
            as too large before (refused again, they count as reused).
        report: `IndexReport`, updated.
        verbose: int. 1 shows progress. Defaults to 1.
    """
    todo = plan.todo
    shard_size = job.settings.shard_size
    bar = progress.progress_bar(
        len(todo), verbose, unit_name="photo", label="indexing"
    )
    done = 0

    def tick():
        nonlocal done
        done += 1
        if bar is not None and (
            done % job.settings.batch_size == 0 or done == len(todo)
        ):
            bar.update(done)

    for start in range(0, len(todo), shard_size):
        chunk = todo[start : start + shard_size]
        records, descriptors = _extract_chunk(job, chunk, plan, report, tick)
        descriptors = _drop_degenerate(records, descriptors, report)
        job.store.commit(records, descriptors)


def _extract_chunk(job, chunk, plan, report, tick):
    settings = job.settings
    batch_size = settings.batch_size

    def run(images):
        report.extracted += len(images)
        return extract_images(
            job.model, images, settings.max_size, settings.scales, batch_size
        )

    records, images, descriptors = [], [], []
    loader = image_io.load_images(
        [os.path.join(job.photos_dir, rel) for rel in chunk],
        num_workers=settings.num_workers,
        **decode_options(
            settings.max_size,
            settings.scales,
            settings.max_pixels,
            settings.draft_above,
        ),
    )
    for i, result in loader:
        rel = chunk[i]
        record = Record(rel, *plan.keys[rel])
        if isinstance(result, image_io.ImageError):
            record.error = result.reason
            if rel in plan.retried:
                report.reused += 1  # Still too large: as before.
            else:
                report.new_failures += 1
            logger.debug("Skipping %s", result)
        else:
            images.append(result)
            if len(images) == batch_size:
                descriptors.append(run(images))
                images = []
        records.append(record)
        tick()
    if images:
        descriptors.append(run(images))
    if not descriptors:
        return records, np.zeros((0, job.store.dimension), np.float32)
    return records, np.concatenate(descriptors)


def _drop_degenerate(records, descriptors, report):
    """Turns photos whose descriptor is not unit-norm into failures.

    A blank image can give an all-zero feature map, hence an all-zero
    descriptor that search indexes refuse (and that matches nothing).
    """
    norms = np.linalg.norm(descriptors, axis=1)
    bad = np.abs(norms - 1.0) > 1e-3
    if not bad.any():
        return descriptors
    ok = [r for r in records if r.error is None]
    for record, is_bad, norm in zip(ok, bad, norms):
        if is_bad:
            record.error = (
                f"descriptor has norm {norm:.3g} instead of 1 (a blank or "
                "featureless image?); not indexed"
            )
            report.new_failures += 1
    return descriptors[~bad]
