"""The plan step: which photos are new, changed, gone or unchanged.

A file is unchanged when its size and modification time (ns) equal the
recorded ones; with `hash_contents=True` when its size and sha256 equal
the recorded ones instead (then `touch` or a copy does not trigger a new
extraction, and an edit that keeps size and mtime is still seen, at the
cost of reading every file on every run). Unreadable files are recorded as
such and not retried until they change, except those refused as too large
(`TOO_LARGE`): whether they fit depends on the run's `max_pixels` (and
keras_rmac 0.2.0 refused the 108 and 200 MP JPEGs now decoded at reduced
scale), so every run tries them again, which costs a header read when
they are still refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

from keras_rmac import fileio

logger = logging.getLogger(__name__)

_DIGEST_FORMAT = 1  # Part of every content digest: bump to rebuild all.

TOO_LARGE = "image too large"
"""How every too-large refusal reason starts (`keras_rmac.data.image_io`,
`keras_rmac.data.pixel_limits.too_large`, and keras_rmac 0.2.0's
"image too large: declared WxH pixels exceeds max_pixels=...")."""


@dataclasses.dataclass
class Plan:
    """What a run has to do.

    Attributes:
        listed: set of str. Readable-to-stat photos of the folder
            (relative paths).
        todo: list of str. Photos to extract, sorted.
        keys: dict. Path -> `(size, mtime_ns, sha256 or None)`.
        retried: set of str. Unchanged photos of `todo` refused as too
            large before, tried again.
    """

    listed: set
    todo: list
    keys: dict
    retried: set = dataclasses.field(default_factory=set)


def content_digest(records, job) -> str:
    """Identifies what a searchable index is built from and how."""
    digest = hashlib.sha256()
    settings = job.settings
    head = [
        _DIGEST_FORMAT,
        job.fingerprint,
        job.photos_dir,
        settings.mode,
        settings.bytes_per_vector if settings.mode == "compact" else None,
    ]
    digest.update(json.dumps(head).encode())
    for r in records:
        digest.update(
            json.dumps([r.path, r.size, r.mtime_ns, r.sha256]).encode()
        )
    return digest.hexdigest()


def _file_key(path: str, hash_contents: bool) -> tuple[int, int, str | None]:
    st = os.stat(path)
    digest = fileio.file_sha256(path) if hash_contents else None
    return st.st_size, st.st_mtime_ns, digest


def _unchanged(record, size, mtime_ns, digest) -> bool:
    if record.size != size:
        return False
    if digest is not None and record.sha256 is not None:
        return record.sha256 == digest
    return record.mtime_ns == mtime_ns


def plan_changes(job, paths, report) -> Plan:
    """Compares the folder with the store; forgets the photos gone.

    Args:
        job: the run (`keras_rmac.indexing.run.Job`).
        paths: list of str. The image files of the folder (absolute).
        report: `IndexReport`, updated (`reused`, `removed`).

    Returns:
        A `Plan`.
    """
    store = job.store
    keys, todo, vanished, retried = {}, [], [], set()
    for path in paths:
        rel = os.path.relpath(path, job.photos_dir)
        try:
            keys[rel] = _file_key(path, job.settings.hash_contents)
        except OSError as exc:
            vanished.append(rel)
            logger.warning("%s: cannot stat (%s); skipped", path, exc)
            continue
        record = store.records.get(rel)
        if record is not None and _unchanged(record, *keys[rel]):
            if (record.error or "").startswith(TOO_LARGE):
                retried.add(rel)
                todo.append(rel)
            else:
                report.reused += 1
        else:
            todo.append(rel)
    listed = set(keys)
    gone = [p for p in store.records if p not in listed]
    report.removed = len(gone)
    store.forget(gone)
    missing = _missing_descriptors(job, listed, todo, report)
    if missing:
        logger.warning(
            "%d photos must be described again: their descriptors were not "
            "kept (keep_descriptors=False) and the index changed.",
            len(missing),
        )
        report.reused -= len(missing)
        todo = sorted(set(todo) | set(missing))
    return Plan(listed=listed, todo=todo, keys=keys, retried=retried)


def _missing_descriptors(job, listed, todo, report) -> list[str]:
    """Unchanged photos whose floats were dropped and are needed again."""
    records = job.store.records
    missing = [
        rel
        for rel in sorted(listed - set(todo))
        if records[rel].error is None
        and not job.store.has_descriptor(records[rel])
    ]
    if missing and not todo and not report.removed:
        # Floats were dropped (keep_descriptors=False): fine as long as the
        # searchable index need not be rebuilt.
        ok = [records[r] for r in sorted(listed) if records[r].error is None]
        if content_digest(ok, job) == job.built_digest:
            return []
    return missing
