"""Descriptor shards of a pipeline run: atomic, idempotent, with a manifest.

A run splits the photos to describe into shards of `shard_size` files (in
the folder indexer's order, so its batches are the folder indexer's
batches). Shard `N` is two files in the output folder, each written
atomically (`keras_rmac.fileio`), the records last:

- `NNNNNN.npy`: float32 descriptors of the readable files, in order;
- `NNNNNN.json`: the shard's `key`, and one record per file (path
  relative to the photo folder, size, mtime in ns, optional sha256, or
  the reason it could not be read).

A shard's output is complete (its JSON exists and names the same key) or
absent, so a re-run of a killed pipeline skips the complete shards and
redoes only the others. The key is a digest of everything a descriptor
depends on (model fingerprint, sizes, scales, decoding limits, batch size
and the shard's files with their sizes and times): a shard left by a run
with other settings or other files is redone, never reused.

`manifest.json` names the model fingerprint, the index version marker
(generation of the index the run started from, the formats of the index
settings and of saved search indexes) and every shard with its key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from keras_rmac import fileio

MANIFEST = "manifest.json"
SHARD_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One unit of work: the files of shard `number` and its key.

    Attributes:
        number: int. The shard number (file names `NNNNNN.*`).
        key: str. Digest of the settings and the files (see module doc).
        entries: tuple of `(path, size, mtime_ns, sha256 or None)`, paths
            relative to the photo folder.
    """

    number: int
    key: str
    entries: tuple


def plan_shards(
    entries: Sequence[tuple], shard_size: int, settings: dict
) -> list[ShardSpec]:
    """Splits `entries` (in order) into `ShardSpec`s of `shard_size`.

    Args:
        entries: sequence of `(path, size, mtime_ns, sha256)`.
        shard_size: int >= 1. Files per shard.
        settings: dict. JSON-serialisable: what a descriptor depends on
            (fingerprint, max_size, scales ...); part of every key.

    Returns:
        A list of `ShardSpec`, numbered from 0.
    """
    specs = []
    for number, start in enumerate(range(0, len(entries), shard_size)):
        chunk = tuple(tuple(e) for e in entries[start : start + shard_size])
        text = json.dumps(
            {"format": SHARD_FORMAT, "settings": settings, "files": chunk},
            sort_keys=True,
        )
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()
        specs.append(ShardSpec(number, key, chunk))
    return specs


def _name(directory: str, number: int, ext: str) -> str:
    return os.path.join(directory, f"{number:06d}.{ext}")


def read_records(directory: str, spec: ShardSpec) -> list[dict] | None:
    """The records of a complete shard of `spec`, or None (absent, cut
    short, damaged, or written for another key)."""
    try:
        with open(_name(directory, spec.number, "json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != spec.key:
        return None
    records = meta.get("records")
    if not isinstance(records, list) or len(records) != len(spec.entries):
        return None
    return records


def read_shard(
    directory: str, spec: ShardSpec, dimension: int
) -> tuple[list[dict], np.ndarray] | None:
    """`(records, descriptors)` of a complete shard, or None."""
    records = read_records(directory, spec)
    if records is None:
        return None
    readable = sum("error" not in r for r in records)
    if not readable:
        return records, np.zeros((0, dimension), np.float32)
    try:
        array = np.load(_name(directory, spec.number, "npy"))
    except (OSError, ValueError):
        return None
    if array.dtype != np.float32 or array.shape != (readable, dimension):
        return None
    return records, array


def write_shard(
    directory: str,
    spec: ShardSpec,
    records: list[dict],
    descriptors: np.ndarray,
) -> None:
    """Writes shard `spec` atomically: descriptors first, records last."""
    os.makedirs(directory, exist_ok=True)
    readable = sum("error" not in r for r in records)
    if readable != len(descriptors):
        raise AssertionError("one descriptor per readable record")
    if readable:
        fileio.atomic_save_npy(
            _name(directory, spec.number, "npy"),
            np.asarray(descriptors, np.float32),
        )
    fileio.atomic_write_json(
        _name(directory, spec.number, "json"),
        {"format": SHARD_FORMAT, "key": spec.key, "records": records},
    )


def write_manifest(
    directory: str, specs: Sequence[ShardSpec], fingerprint: str, marker: dict
) -> None:
    """Writes `manifest.json`: fingerprint, version marker, shard keys."""
    fileio.atomic_write_json(
        os.path.join(directory, MANIFEST),
        {
            "format": SHARD_FORMAT,
            "fingerprint": fingerprint,
            "version_marker": marker,
            "shards": [
                {"number": s.number, "key": s.key, "files": len(s.entries)}
                for s in specs
            ],
        },
    )


def read_manifest(directory: str) -> dict | None:
    """The manifest of a run's output folder, or None if absent."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
