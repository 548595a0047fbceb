"""The descriptor store: append-only shards of descriptors with records.

Photos are described in order and committed in shards of `shard_size`
files: `.work/shards/NNNNNN.npy` (the float32 descriptors of the readable
files) then `NNNNNN.json` (one record per file: path relative to the
folder, size, mtime in ns, optional sha256, or the reason it could not be
read). Each is written atomically (`keras_rmac.fileio`), the JSON last, so
a shard exists completely or not at all. A run killed at any point (even
`kill -9`) and started again keeps every committed shard and describes
only the rest.

The store is the source of truth for incremental runs: a later run
describes only files that are new or changed, forgets files that are gone
(a shard of records only, `removed`), and compacts the store into one
`base` shard once many rows are stale.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from keras_rmac import fileio

__all__ = ["DescriptorStore", "Record"]

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
"""Format of the shard records (unchanged since keras_rmac 0.2.0)."""


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _is_leftover(name: str) -> bool:
    """A temporary file of a write cut short (`keras_rmac.fileio` names
    them `.NAME.tmp-*`; keras_rmac 0.2.0 named them `.tmp-*`)."""
    return name.startswith(".") and ".tmp-" in name


@dataclasses.dataclass
class Record:
    """What the store knows about one photo."""

    path: str  # relative to the photo folder
    size: int
    mtime_ns: int
    sha256: str | None = None
    error: str | None = None
    shard: int | None = None  # shard holding the descriptor
    row: int | None = None  # row in that shard's .npy

    def to_json(self) -> dict:
        out = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.error is not None:
            out["error"] = self.error
        return out


class DescriptorStore:
    """Append-only shards of descriptors with per-file records.

    Args:
        directory: str. The store folder (`INDEX_DIR/.work`).
        dimension: int. Descriptor dimension D.
        writable: bool. Open for writing (only under the index lock): the
            folder is created and leftovers of interrupted writes (temporary
            files, descriptors without records, damaged shards) are
            deleted. A read-only store touches nothing. Defaults to True.
    """

    def __init__(self, directory: str, dimension: int, writable: bool = True):
        self.directory = directory
        self.shard_dir = os.path.join(directory, "shards")
        self.dimension = int(dimension)
        self.writable = bool(writable)
        if self.writable:
            os.makedirs(self.shard_dir, exist_ok=True)
        self.records: dict[str, Record] = {}
        self.shards: list[int] = []
        self.shard_sizes: dict[int, int] = {}  # records per shard
        self._arrays: dict[int, np.ndarray] = {}
        if os.path.isdir(self.shard_dir):
            self._load()

    def _remove(self, name: str) -> None:
        if self.writable:
            path = os.path.join(self.shard_dir, name)
            if os.path.exists(path):
                os.remove(path)

    def _name(self, number: int, ext: str) -> str:
        return os.path.join(self.shard_dir, f"{number:06d}.{ext}")

    def _load(self):
        names = os.listdir(self.shard_dir)
        for name in names:  # Leftovers of writes cut short.
            if _is_leftover(name):
                self._remove(name)
        committed = sorted(
            int(n[:-5])
            for n in names
            if n.endswith(".json") and n[:-5].isdigit()
        )
        for number in committed:
            try:
                meta = _read_json(self._name(number, "json"))
                records = [Record(**r) for r in meta["records"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning(
                    "Ignoring unreadable shard %s (%s); its photos will be "
                    "described again.",
                    self._name(number, "json"),
                    exc,
                )
                self._remove(f"{number:06d}.json")
                continue
            rows = sum(r.error is None for r in records)
            if meta.get("descriptors", True) and rows:
                if not self._check_npy(number, rows):
                    self._remove(f"{number:06d}.json")
                    continue
            if meta.get("base"):
                # A compacted shard replaces everything before it.
                self.records.clear()
                self.shards.clear()
            for path in meta.get("removed", ()):
                self.records.pop(path, None)
            self.shard_sizes[number] = len(records)
            row = 0
            for record in records:
                if record.error is None and meta.get("descriptors", True):
                    record.shard, record.row = number, row
                    row += 1
                self.records[record.path] = record
            self.shards.append(number)
        for name in os.listdir(self.shard_dir):  # Uncommitted descriptors.
            stem, ext = os.path.splitext(name)
            if ext == ".npy" and stem.isdigit():
                if not os.path.exists(self._name(int(stem), "json")):
                    self._remove(name)

    def _check_npy(self, number, rows) -> bool:
        path = self._name(number, "npy")
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            logger.warning(
                "Ignoring shard %s: descriptors unreadable (%s); its photos "
                "will be described again.",
                path,
                exc,
            )
            return False
        if array.shape != (rows, self.dimension):
            logger.warning(
                "Ignoring shard %s: expected descriptors of shape %s, found "
                "%s; its photos will be described again.",
                path,
                (rows, self.dimension),
                array.shape,
            )
            return False
        return True

    @property
    def next_number(self) -> int:
        existing = [
            int(n.split(".")[0])
            for n in os.listdir(self.shard_dir)
            if n.split(".")[0].isdigit()
        ]
        return max(existing, default=0) + 1

    def commit(
        self, records: list[Record], descriptors: np.ndarray, base=False
    ) -> int:
        """Writes one shard atomically (descriptors first, records last)."""
        number = self.next_number
        descriptors = np.asarray(descriptors, np.float32).reshape(
            -1, self.dimension
        )
        ok = [r for r in records if r.error is None]
        if len(ok) != len(descriptors):
            raise AssertionError("one descriptor per readable record")
        if len(ok):
            fileio.atomic_save_npy(self._name(number, "npy"), descriptors)
        fileio.atomic_write_json(
            self._name(number, "json"),
            {
                "format": STORE_FORMAT,
                "base": base,
                "records": [r.to_json() for r in records],
            },
        )
        if base:
            self.records.clear()
            self.shards.clear()
        row = 0
        for record in records:
            record.shard, record.row = None, None
            if record.error is None:
                record.shard, record.row = number, row
                row += 1
            self.records[record.path] = record
        self.shards.append(number)
        self.shard_sizes[number] = len(records)
        return number

    def forget(self, paths: Sequence[str]) -> None:
        """Drops the records of `paths` (files gone from the folder).

        Writes a shard of records only; the descriptors stay in their
        shards until the next compaction.
        """
        if not paths:
            return
        number = self.next_number
        fileio.atomic_write_json(
            self._name(number, "json"),
            {
                "format": STORE_FORMAT,
                "base": False,
                "records": [],
                "removed": sorted(paths),
            },
        )
        for path in paths:
            self.records.pop(path, None)
        self.shards.append(number)
        self.shard_sizes[number] = 0

    def _array(self, number) -> np.ndarray:
        if number not in self._arrays:
            self._arrays[number] = np.load(
                self._name(number, "npy"), mmap_mode="r"
            )
        return self._arrays[number]

    def descriptors(self, records: Sequence[Record]) -> np.ndarray:
        """Stored descriptors of `records`, in order, as (N, D) float32."""
        out = np.empty((len(records), self.dimension), np.float32)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for i, record in enumerate(records):
            by_shard.setdefault(record.shard, []).append((i, record.row))
        for number, pairs in by_shard.items():
            dest, rows = zip(*pairs)
            out[list(dest)] = self._array(number)[list(rows)]
        return out

    def has_descriptor(self, record: Record) -> bool:
        return record.shard is not None

    def stale_rows(self, live: set[str]) -> int:
        """Stored rows that no current record points to."""
        total = 0
        for number in self.shards:
            path = self._name(number, "npy")
            if os.path.exists(path):
                total += len(self._array(number))
        used = sum(
            1
            for r in self.records.values()
            if r.shard is not None and r.path in live
        )
        return total - used

    def compact(self, live: list[Record]) -> None:
        """Rewrites the live records as one base shard, drops the others."""
        ok = [r for r in live if r.error is None]
        descriptors = self.descriptors(ok)
        old = list(self.shards)
        records = [dataclasses.replace(r) for r in live]
        self._arrays.clear()
        self.commit(records, descriptors, base=True)
        for number in old:
            for ext in ("npy", "json"):
                path = self._name(number, ext)
                if os.path.exists(path):
                    os.remove(path)

    def drop_descriptors(self, live: list[Record]) -> None:
        """Keeps only the records (no floats): `keep_descriptors=False`."""
        records = [dataclasses.replace(r, shard=None, row=None) for r in live]
        old = list(self.shards)
        number = self.next_number
        fileio.atomic_write_json(
            self._name(number, "json"),
            {
                "format": STORE_FORMAT,
                "base": True,
                "descriptors": False,
                "records": [r.to_json() for r in records],
            },
        )
        self._arrays.clear()
        self.records = {r.path: r for r in records}
        self.shards = [number]
        for n in old:
            for ext in ("npy", "json"):
                path = self._name(n, ext)
                if os.path.exists(path):
                    os.remove(path)
