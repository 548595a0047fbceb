"""Incremental, resumable indexing of a photo folder, and searching it.

This is the library behind `keras-rmac index` and `keras-rmac search`:
`index_folder` turns a folder of photos into a searchable index directory,
`PhotoIndex` opens one and answers image queries.

An index directory holds:

```
INDEX_DIR/
  model.keras     the RMACModel that described the photos; search loads it
                  so queries are described by exactly the same network
  index.json      settings: model fingerprint and spec, max_size, scales,
                  search mode, photo folder
  searchable/     the search index (`keras_rmac.search`), its metadata
                  holding the photo paths and the settings above
  report.json     what the last run did, and every unreadable file with why
  .work/          the descriptor store: shards of float32 descriptors
```

Descriptor store. Photos are described in order and committed in shards
of `shard_size` files: `.work/shards/NNNNNN.npy` (the descriptors of the
readable files) then `NNNNNN.json` (one record per file: path relative to
the folder, size, mtime in ns, optional sha256, or the reason it could not
be read). Each is written to a temporary name and moved into place with
`os.replace`, the JSON last, so a shard exists completely or not at all.
A run killed at any point (even `kill -9`) and started again keeps every
committed shard and describes only the rest. The store is the source of
truth for incremental runs: a later run describes only files that are new
or changed, forgets files that are gone, and rebuilds the searchable index
from the stored descriptors (it is not rebuilt when nothing changed).
Batches are aligned to shard starts, so a resumed run computes bit for bit
what an uninterrupted one computes.

A file is unchanged when its size and modification time (ns) equal the
recorded ones; with `hash_contents=True` when its size and sha256 equal the
recorded ones instead (then `touch` or a copy does not trigger
re-description, and an edit that keeps size and mtime is still seen, at
the cost of reading every file on every run). Unreadable files (see
`keras_rmac.data.image_io`) are recorded as such and not retried until
they change.

The compact search operating point (`mode="compact"`) bounds the memory
and bytes per photo of the *searchable* index. The float descriptors in
`.work/` take `4 * D` bytes per photo on disk (5 KiB for D = 1280); they
let later runs add or remove photos, or switch the search mode, without
describing everything again. `keep_descriptors=False` deletes them once
the searchable index is built; the next run that finds photos added,
changed or removed then has to describe every photo again.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence

import keras
import numpy as np

from keras_rmac.data import image_io
from keras_rmac.search import storage as search_storage

try:
    import fcntl
except ImportError:  # Windows: runs are not locked.
    fcntl = None

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODES = ("fast", "compact", "exact")
BYTES_PER_VECTOR = (64, 128)
DEFAULT_MAX_SIZE = 512

MODEL_FILE = "model.keras"
SETTINGS_FILE = "index.json"
SEARCHABLE_DIR = "searchable"
REPORT_FILE = "report.json"
WORK_DIR = ".work"

CRASH_AFTER_ENV = "KERAS_RMAC_TEST_CRASH_AFTER"
"""Test-only hook: when set to K, the indexing process kills itself with
SIGKILL right after committing its K-th shard, to test resumption."""

_OWNED = (MODEL_FILE, SETTINGS_FILE, SEARCHABLE_DIR, REPORT_FILE, WORK_DIR)


class IndexMismatchError(search_storage.IndexMismatchError):
    """An existing index was built with another model or image size."""


class IndexBusyError(RuntimeError):
    """Another process is indexing into the same index directory."""


# ---------------------------------------------------------------------------
# Small file helpers.


def _atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path)
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write_json(path: str, obj) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_model_atomic(model, path: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's contents."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------------
# The descriptor store.


@dataclasses.dataclass
class _Record:
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
        dim: int. Descriptor dimension.
        writable: bool. Open for writing (only under the index lock): the
            folder is created and leftovers of interrupted writes (temporary
            files, descriptors without records, damaged shards) are
            deleted. A read-only store touches nothing. Defaults to True.
    """

    def __init__(self, directory: str, dim: int, writable: bool = True):
        self.directory = directory
        self.shard_dir = os.path.join(directory, "shards")
        self.dim = int(dim)
        self.writable = bool(writable)
        if self.writable:
            os.makedirs(self.shard_dir, exist_ok=True)
        self.records: dict[str, _Record] = {}
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
            if name.startswith(".tmp-"):
                self._remove(name)
        committed = sorted(
            int(n[:-5])
            for n in names
            if n.endswith(".json") and n[:-5].isdigit()
        )
        for number in committed:
            try:
                meta = _read_json(self._name(number, "json"))
                records = [_Record(**r) for r in meta["records"]]
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
        if array.shape != (rows, self.dim):
            logger.warning(
                "Ignoring shard %s: expected descriptors of shape %s, found "
                "%s; its photos will be described again.",
                path,
                (rows, self.dim),
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
        self, records: list[_Record], descriptors: np.ndarray, base=False
    ) -> int:
        """Writes one shard atomically (descriptors first, records last)."""
        number = self.next_number
        descriptors = np.asarray(descriptors, np.float32).reshape(-1, self.dim)
        ok = [r for r in records if r.error is None]
        if len(ok) != len(descriptors):
            raise AssertionError("one descriptor per readable record")
        if len(ok):
            _atomic_save_npy(self._name(number, "npy"), descriptors)
        _atomic_write_json(
            self._name(number, "json"),
            {
                "format": FORMAT_VERSION,
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
        _atomic_write_json(
            self._name(number, "json"),
            {
                "format": FORMAT_VERSION,
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

    def descriptors(self, records: Sequence[_Record]) -> np.ndarray:
        """Stored descriptors of `records`, in order, as (N, D) float32."""
        out = np.empty((len(records), self.dim), np.float32)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for i, record in enumerate(records):
            by_shard.setdefault(record.shard, []).append((i, record.row))
        for number, pairs in by_shard.items():
            dest, rows = zip(*pairs)
            out[list(dest)] = self._array(number)[list(rows)]
        return out

    def has_descriptor(self, record: _Record) -> bool:
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

    def compact(self, live: list[_Record]) -> None:
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

    def drop_descriptors(self, live: list[_Record]) -> None:
        """Keeps only the records (no floats): `keep_descriptors=False`."""
        records = [dataclasses.replace(r, shard=None, row=None) for r in live]
        old = list(self.shards)
        number = self.next_number
        _atomic_write_json(
            self._name(number, "json"),
            {
                "format": FORMAT_VERSION,
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


# ---------------------------------------------------------------------------
# The report.


@dataclasses.dataclass
class IndexReport:
    """What one `index_folder` run did.

    Attributes:
        photos_dir: absolute path of the indexed folder.
        index_dir: absolute path of the index directory.
        listed: image files found in the folder.
        indexed: photos in the searchable index after the run.
        extracted: photos described by the model during this run.
        reused: photos whose stored descriptor (or stored failure) was
            still valid.
        removed: photos dropped because their file is gone.
        failed: every unreadable file of the folder, as
            `{"path": ..., "reason": ...}` (relative paths), including
            those found by earlier runs and not retried.
        new_failures: how many of `failed` were found during this run.
        rebuilt: whether the searchable index was (re)built.
        mode: search mode of the searchable index.
        bytes_per_vector: bytes per photo of the compact index, or None.
        seconds: wall-clock time of the run.
        seconds_extracting: time spent decoding and describing.
    """

    photos_dir: str
    index_dir: str
    listed: int = 0
    indexed: int = 0
    extracted: int = 0
    reused: int = 0
    removed: int = 0
    failed: list = dataclasses.field(default_factory=list)
    new_failures: int = 0
    rebuilt: bool = False
    mode: str = "fast"
    bytes_per_vector: int | None = None
    seconds: float = 0.0
    seconds_extracting: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """Human-readable summary, a few lines."""
        lines = [
            f"Indexed {self.indexed} photos from {self.photos_dir} into "
            f"{self.index_dir} ({self.mode} mode"
            + (
                f", {self.bytes_per_vector} bytes/vector"
                if self.mode == "compact"
                else ""
            )
            + ")",
            f"  listed {self.listed}, described {self.extracted}, reused "
            f"{self.reused}, removed {self.removed}, unreadable "
            f"{len(self.failed)} ({self.new_failures} new)",
            f"  {self.seconds:.1f} s in all, {self.seconds_extracting:.1f} s "
            "describing",
        ]
        for item in self.failed[:20]:
            lines.append(f"  skipped {item['path']}: {item['reason']}")
        if len(self.failed) > 20:
            lines.append(
                f"  ... and {len(self.failed) - 20} more, see "
                f"{os.path.join(self.index_dir, REPORT_FILE)}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Search index construction (keras_rmac.search).


def _make_index(mode: str, bytes_per_vector: int, dim: int):
    from keras_rmac.search import ExactIndex
    from keras_rmac.search import ScannIndex

    if mode == "exact":
        return ExactIndex(dim)
    if mode == "fast":
        return ScannIndex(dim, mode="fast")
    return ScannIndex(dim, mode="compact", bytes_per_vector=bytes_per_vector)


def _load_searchable(directory: str, fingerprint: str | None = None):
    from keras_rmac.search import load_index

    expect = None if fingerprint is None else {"fingerprint": fingerprint}
    return load_index(directory, expect=expect)


# ---------------------------------------------------------------------------
# Indexing.


def _validate_settings(mode, bytes_per_vector, max_size, scales):
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: {mode!r}")
    if bytes_per_vector not in BYTES_PER_VECTOR:
        raise ValueError(
            f"`bytes_per_vector` must be one of {BYTES_PER_VECTOR}. "
            f"Received: {bytes_per_vector!r}"
        )
    if max_size is not None and (
        isinstance(max_size, bool) or int(max_size) != max_size or max_size < 1
    ):
        raise ValueError(
            f"`max_size` must be a positive int or None. Received: {max_size!r}"
        )
    if scales is not None:
        scales = tuple(float(s) for s in scales)
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(
                f"`scales` must be positive numbers. Received: {scales!r}"
            )
    return scales


class _Lock:
    """An exclusive `flock` on `INDEX_DIR/.lock` for the whole run.

    Two runs on one index would interleave shards; the second one fails
    at once instead. The kernel drops the lock when the process dies, so a
    killed run never leaves a stale lock behind.
    """

    def __init__(self, index_dir: str):
        self.path = os.path.join(index_dir, ".lock")
        self._file = None

    def __enter__(self):
        self._file = open(self.path, "a")
        if fcntl is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._file.close()
                folder = os.path.dirname(self.path)
                raise IndexBusyError(
                    f"Another process is indexing into {folder}; wait for "
                    "it to finish (or stop it) and run again."
                ) from None
        return self

    def __exit__(self, *exc):
        self._file.close()  # Releases the lock.


def _wipe(index_dir: str) -> None:
    """Removes what an index owns inside `index_dir` (nothing else)."""
    for name in _OWNED:
        path = os.path.join(index_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def _file_key(path: str, hash_contents: bool) -> tuple[int, int, str | None]:
    st = os.stat(path)
    digest = file_sha256(path) if hash_contents else None
    return st.st_size, st.st_mtime_ns, digest


def _unchanged(record: _Record, size, mtime_ns, digest) -> bool:
    if record.size != size:
        return False
    if digest is not None and record.sha256 is not None:
        return record.sha256 == digest
    return record.mtime_ns == mtime_ns


def _crash_hook():
    value = os.environ.get(CRASH_AFTER_ENV)
    return int(value) if value else None


def _describe(model, images, max_size, scales, batch_size):
    return model.extract(
        images,
        max_size=max_size,
        scales=scales,
        batch_size=batch_size,
        num_workers=0,
        verbose=0,
    )


def load_rmac_model(path: str | os.PathLike):
    """Loads a `.keras` file that must hold an `RMACModel`.

    Raises:
        FileNotFoundError: `path` does not exist.
        TypeError: the file holds another kind of model.
    """
    from keras_rmac.models.rmac_model import RMACModel

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Model file not found: {path}. Pass a .keras file saved from "
            "an RMACModel (model.save('model.keras'))."
        )
    model = keras.models.load_model(path, compile=False)
    if not isinstance(model, RMACModel):
        raise TypeError(
            f"{path} holds a {type(model).__name__}, not an RMACModel; "
            "save the RMACModel itself (e.g. triplet_model.rmac.save(...))."
        )
    return model


def _ensure_built(model):
    """Builds every layer (one call on a blank image) and returns `model`.

    `RMACModel` creates its shift + PCA weights on first call, and
    `fingerprint()` hashes `model.weights`, so an unbuilt model has another
    fingerprint than the same model after one call; saving it unbuilt would
    also drop those weights.
    """
    if not model.built or any(not layer.built for layer in model.layers):
        model(np.zeros((1, 64, 64, 3), np.float32))
    return model


def _resolve_model(index_dir, model, settings, rebuild):
    """The model of this run, and whether it must be saved."""
    model_path = os.path.join(index_dir, MODEL_FILE)
    if model is None:
        if not os.path.isfile(model_path):
            raise ValueError(
                f"{index_dir} holds no index yet ({MODEL_FILE} missing): "
                "pass `model=` (an RMACModel) to create one."
            )
        loaded = _ensure_built(load_rmac_model(model_path))
        return loaded, loaded.fingerprint(), False
    fingerprint = _ensure_built(model).fingerprint()
    if settings and not rebuild and settings["fingerprint"] != fingerprint:
        raise IndexMismatchError(
            f"The index in {index_dir} was built with another model "
            f"(fingerprint {settings['fingerprint'][:12]}..., this one is "
            f"{fingerprint[:12]}...): its descriptors cannot be mixed with "
            "this model's. Use the same model, or rebuild the index from "
            "scratch (--rebuild, or rebuild=True)."
        )
    saved = (
        settings is not None
        and settings["fingerprint"] == fingerprint
        and os.path.isfile(model_path)
    )
    return model, fingerprint, not saved


def index_folder(
    photos_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    model=None,
    *,
    max_size: int | None = None,
    scales: Sequence[float] | None = None,
    mode: str | None = None,
    bytes_per_vector: int | None = None,
    keep_descriptors: bool = True,
    hash_contents: bool = False,
    rebuild: bool = False,
    shard_size: int = 256,
    batch_size: int = 8,
    num_workers: int = 4,
    model_spec: dict | None = None,
    verbose: int = 1,
) -> IndexReport:
    """Indexes (or updates the index of) every photo under a folder.

    Lists the images under `photos_dir` recursively, describes those that
    are new or changed since the last run with `model`, forgets those that
    are gone, and (re)builds the searchable index. Unreadable files are
    skipped, counted and listed in the report; they never stop the run.
    A run that is killed can simply be started again: it resumes after the
    last committed shard (see the module docstring for the layout).

    Args:
        photos_dir: str or os.PathLike. The folder of photos (recursive).
        index_dir: str or os.PathLike. The index directory (created).
        model: `RMACModel` or None. The descriptor network. None reuses the
            one saved in `index_dir` (required for a new index). A model
            whose `fingerprint()` differs from the one the index was built
            with is refused (`IndexMismatchError`) unless `rebuild=True`.
        max_size: int or None. Longest image side at scale 1. None keeps
            the index's value (512 for a new index).
        scales: sequence of float or None. Multi-resolution scales. None
            keeps the index's value (`(1.0,)` for a new index).
        mode: str or None. Search operating point: `"fast"` (ScaNN, float
            reordering), `"compact"` (ScaNN codes only, `bytes_per_vector`
            bytes per photo) or `"exact"` (brute force). None keeps the
            index's value (`"fast"` for a new index). Changing it only
            rebuilds the searchable index from the stored descriptors.
        bytes_per_vector: int or None. 64 or 128, for `"compact"`. None
            keeps the index's value (64 for a new index).
        keep_descriptors: bool. Keep the float descriptors in `.work/`
            after the run, so later runs only describe new or changed
            photos. Defaults to True.
        hash_contents: bool. Decide whether a file changed by its sha256
            (and size) instead of its modification time. Defaults to False.
        rebuild: bool. Discard the existing index and start afresh.
            Defaults to False.
        shard_size: int. Files per committed shard. Defaults to 256.
        batch_size: int. Images per forward pass. Defaults to 8.
        num_workers: int. Image decoding threads. Defaults to 4.
        model_spec: dict or None. How the model was asked for (recorded for
            the command line). Defaults to None.
        verbose: int. 1 shows a progress bar. Defaults to 1.

    Returns:
        An `IndexReport`, also written to `INDEX_DIR/report.json`.

    Raises:
        IndexMismatchError: the index was built with another model,
            `max_size` or `scales`, and `rebuild` is False.
        FileNotFoundError / NotADirectoryError: `photos_dir` is not a
            folder.

    Example:

    >>> from keras_rmac.models import RMACModel  # doctest: +SKIP
    >>> report = index_folder("photos", "photos_index",
    ...                       RMACModel("mobilenet_v2"))  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """
    started = time.perf_counter()
    photos_dir = os.path.abspath(os.fspath(photos_dir))
    index_dir = os.path.abspath(os.fspath(index_dir))
    scales = _validate_settings(
        mode or "fast", bytes_per_vector or 64, max_size, scales
    )
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"`{name}` must be >= 1. Received: {value!r}")
    paths = image_io.list_images(photos_dir)  # Fails early on a bad folder.
    os.makedirs(index_dir, exist_ok=True)
    with _Lock(index_dir):
        if rebuild:
            if model is None and os.path.isfile(
                os.path.join(index_dir, MODEL_FILE)
            ):
                model = load_rmac_model(os.path.join(index_dir, MODEL_FILE))
            _wipe(index_dir)
        return _index_locked(
            photos_dir,
            index_dir,
            paths,
            model,
            started=started,
            max_size=max_size,
            scales=scales,
            mode=mode,
            bytes_per_vector=bytes_per_vector,
            keep_descriptors=keep_descriptors,
            hash_contents=hash_contents,
            rebuild=rebuild,
            shard_size=shard_size,
            batch_size=batch_size,
            num_workers=num_workers,
            model_spec=model_spec,
            verbose=verbose,
        )


def _index_locked(
    photos_dir,
    index_dir,
    paths,
    model,
    *,
    started,
    max_size,
    scales,
    mode,
    bytes_per_vector,
    keep_descriptors,
    hash_contents,
    rebuild,
    shard_size,
    batch_size,
    num_workers,
    model_spec,
    verbose,
):
    settings_path = os.path.join(index_dir, SETTINGS_FILE)
    settings = (
        _read_json(settings_path) if os.path.isfile(settings_path) else None
    )
    if settings is not None and settings.get("format") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{settings_path} has format {settings.get('format')!r}; this "
            f"version reads format {FORMAT_VERSION}. Rebuild the index "
            "(--rebuild)."
        )
    model, fingerprint, must_save = _resolve_model(
        index_dir, model, settings, rebuild
    )
    recorded = settings or {}
    max_size = max_size or recorded.get("max_size") or DEFAULT_MAX_SIZE
    scales = scales or tuple(recorded.get("scales", (1.0,)))
    for name, value, old in (
        ("max_size", max_size, recorded.get("max_size")),
        ("scales", list(scales), recorded.get("scales")),
    ):
        if old is not None and value != old:
            raise IndexMismatchError(
                f"The index in {index_dir} was built with {name}={old}, "
                f"not {value}: descriptors at different sizes do not mix. "
                f"Pass the same {name}, or rebuild the index (--rebuild)."
            )
    mode = mode or recorded.get("mode", "fast")
    bytes_per_vector = bytes_per_vector or recorded.get("bytes_per_vector", 64)
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
        _save_model_atomic(model, os.path.join(index_dir, MODEL_FILE))
    settings = {
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "model_spec": model_spec
        if model_spec is not None
        else recorded.get("model_spec"),
        "descriptor_dim": int(model.descriptor_dim),
        "max_size": int(max_size),
        "scales": list(scales),
        "mode": mode,
        "bytes_per_vector": int(bytes_per_vector),
        "photos_dir": photos_dir,
        "hash_contents": bool(hash_contents),
        "keep_descriptors": bool(keep_descriptors),
        "built_digest": recorded.get("built_digest"),
    }
    _atomic_write_json(settings_path, settings)

    store = DescriptorStore(
        os.path.join(index_dir, WORK_DIR), model.descriptor_dim
    )
    report = IndexReport(
        photos_dir=photos_dir,
        index_dir=index_dir,
        listed=len(paths),
        mode=mode,
        bytes_per_vector=bytes_per_vector if mode == "compact" else None,
    )

    # What is new or changed.
    rel_paths = [os.path.relpath(p, photos_dir) for p in paths]
    keys = {}
    todo = []
    vanished = []
    for path, rel in zip(paths, rel_paths):
        try:
            keys[rel] = _file_key(path, hash_contents)
        except OSError as exc:
            vanished.append(rel)
            logger.warning("%s: cannot stat (%s); skipped", path, exc)
            continue
        record = store.records.get(rel)
        if record is not None and _unchanged(record, *keys[rel]):
            report.reused += 1
        else:
            todo.append(rel)
    listed = set(rel_paths) - set(vanished)
    gone = [p for p in store.records if p not in listed]
    report.removed = len(gone)
    store.forget(gone)
    todo_set = set(todo)
    missing_floats = [
        rel
        for rel in sorted(listed - todo_set)
        if store.records[rel].error is None
        and not store.has_descriptor(store.records[rel])
    ]
    if missing_floats and not todo and not report.removed:
        # Floats were dropped (keep_descriptors=False): fine as long as the
        # searchable index need not be rebuilt.
        unchanged = [store.records[rel] for rel in sorted(listed)]
        digest = _content_digest(
            [r for r in unchanged if r.error is None], settings
        )
        searchable = os.path.join(index_dir, SEARCHABLE_DIR)
        if digest == settings["built_digest"] and os.path.isdir(searchable):
            missing_floats = []
    if missing_floats:
        logger.warning(
            "%d photos must be described again: their descriptors were not "
            "kept (keep_descriptors=False) and the index changed.",
            len(missing_floats),
        )
        report.reused -= len(missing_floats)
        todo = sorted(set(todo) | set(missing_floats))

    # Describe them, one committed shard at a time.
    t0 = time.perf_counter()
    if todo:
        _describe_into_store(
            store,
            model,
            photos_dir,
            todo,
            keys,
            report,
            max_size=max_size,
            scales=scales,
            batch_size=int(batch_size),
            shard_size=int(shard_size),
            num_workers=num_workers,
            verbose=verbose,
        )
    report.seconds_extracting = time.perf_counter() - t0

    # The searchable index, from every live descriptor.
    live = [store.records[rel] for rel in sorted(listed)]
    report.failed = [
        {"path": r.path, "reason": r.error} for r in live if r.error is not None
    ]
    ok = [r for r in live if r.error is None]
    report.indexed = len(ok)
    digest = _content_digest(ok, settings)
    searchable = os.path.join(index_dir, SEARCHABLE_DIR)
    if digest != settings.get("built_digest") or not os.path.isdir(searchable):
        if ok and not all(store.has_descriptor(r) for r in ok):
            raise AssertionError("every live photo has a descriptor")
        descriptors = (
            store.descriptors(ok)
            if ok
            else np.zeros((0, model.descriptor_dim), np.float32)
        )
        _build_searchable(
            searchable,
            descriptors,
            [r.path for r in ok],
            mode=mode,
            bytes_per_vector=bytes_per_vector,
            settings=settings,
        )
        report.rebuilt = True
        settings["built_digest"] = digest
        _atomic_write_json(settings_path, settings)

    # Housekeeping of the store.
    if not keep_descriptors:
        if any(store.has_descriptor(r) for r in store.records.values()):
            store.drop_descriptors(live)
    else:
        # Compact once a quarter of the stored rows are stale, or once
        # incremental runs have left many small shards (the full shards
        # of a first run are left alone: rewriting them gains nothing).
        stale = store.stale_rows(listed)
        small = sum(
            store.shard_sizes.get(n, 0) < shard_size // 2 for n in store.shards
        )
        if stale > 0.25 * max(1, len(ok)) or small > 64:
            store.compact(live)

    report.seconds = time.perf_counter() - started
    _atomic_write_json(os.path.join(index_dir, REPORT_FILE), report.to_dict())
    return report


def _content_digest(records, settings) -> str:
    """Identifies what a searchable index is built from and how."""
    digest = hashlib.sha256()
    mode = settings["mode"]
    head = [
        FORMAT_VERSION,
        settings["fingerprint"],
        settings["photos_dir"],
        mode,
        settings["bytes_per_vector"] if mode == "compact" else None,
    ]
    digest.update(json.dumps(head).encode())
    for r in records:
        digest.update(
            json.dumps([r.path, r.size, r.mtime_ns, r.sha256]).encode()
        )
    return digest.hexdigest()


def _describe_into_store(
    store,
    model,
    photos_dir,
    todo,
    keys,
    report,
    *,
    max_size,
    scales,
    batch_size,
    shard_size,
    num_workers,
    verbose,
):
    crash_after = _crash_hook()
    progbar = keras.utils.Progbar(len(todo)) if verbose else None
    committed = 0
    done = 0
    for start in range(0, len(todo), shard_size):
        chunk = todo[start : start + shard_size]
        records = []
        images = []
        descriptors = []
        loader = image_io.load_images(
            [os.path.join(photos_dir, rel) for rel in chunk],
            num_workers=num_workers,
        )
        for i, result in loader:
            rel = chunk[i]
            size, mtime_ns, sha = keys[rel]
            record = _Record(rel, size, mtime_ns, sha)
            if isinstance(result, image_io.ImageError):
                record.error = result.reason
                report.new_failures += 1
                logger.debug("Skipping %s", result)
            else:
                images.append(result)
                if len(images) == batch_size:
                    descriptors.append(
                        _describe(model, images, max_size, scales, batch_size)
                    )
                    report.extracted += len(images)
                    images = []
            records.append(record)
            done += 1
            if progbar is not None and (
                done % batch_size == 0 or done == len(todo)
            ):
                progbar.update(done)
        if images:
            descriptors.append(
                _describe(model, images, max_size, scales, batch_size)
            )
            report.extracted += len(images)
        stacked = (
            np.concatenate(descriptors)
            if descriptors
            else np.zeros((0, store.dim), np.float32)
        )
        stacked = _drop_degenerate(records, stacked, report)
        store.commit(records, stacked)
        committed += 1
        if crash_after is not None and committed >= crash_after:
            logger.warning(
                "%s=%d: killing this process (test hook)",
                CRASH_AFTER_ENV,
                crash_after,
            )
            os.kill(os.getpid(), signal.SIGKILL)
    if progbar is not None and done != len(todo):
        progbar.update(len(todo))


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


def _build_searchable(
    directory, descriptors, paths, *, mode, bytes_per_vector, settings
):
    index = _make_index(mode, bytes_per_vector, descriptors.shape[1])
    if len(descriptors):
        index.add(
            descriptors,
            ids=np.arange(len(descriptors), dtype=np.int64),
            paths=list(paths),
        )
    index.metadata.update(
        {
            "photos_dir": settings["photos_dir"],
            "fingerprint": settings["fingerprint"],
            "max_size": settings["max_size"],
            "scales": settings["scales"],
            "descriptor_dim": settings["descriptor_dim"],
        }
    )
    index.save(directory)


# ---------------------------------------------------------------------------
# Searching.


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """One ranked photo.

    Attributes:
        rank: int. 1 for the best match.
        score: float. Similarity (inner product of descriptors).
        path: str. The photo file.
    """

    rank: int
    score: float
    path: str


class PhotoIndex:
    """An index directory made by `index_folder`, opened for searching.

    Loads the saved model and the searchable index; queries are described
    with the same model, `max_size` and `scales` as the photos.

    Args:
        index_dir: str or os.PathLike. The index directory.
        check_model: bool. Verify that the saved model's fingerprint is the
            one the index was built with. Defaults to True.

    Example:

    >>> index = PhotoIndex("photos_index")  # doctest: +SKIP
    >>> for hit in index.search("query.jpg", k=5):  # doctest: +SKIP
    ...     print(hit.rank, hit.score, hit.path)
    """

    def __init__(self, index_dir: str | os.PathLike, check_model: bool = True):
        self.index_dir = os.path.abspath(os.fspath(index_dir))
        model_path = os.path.join(self.index_dir, MODEL_FILE)
        try:
            self.index = _load_searchable(
                os.path.join(self.index_dir, SEARCHABLE_DIR)
            )
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"No finished index in {self.index_dir} ({exc}) Build it "
                f"with `keras-rmac index PHOTOS_DIR --index {self.index_dir}`."
            ) from None
        meta = self.index.metadata
        self.paths: list[str] = self.index.paths or []
        self.photos_dir: str = meta["photos_dir"]
        self.max_size: int = meta["max_size"]
        self.scales: tuple[float, ...] = tuple(meta["scales"])
        self.fingerprint: str = meta["fingerprint"]
        self.model = _ensure_built(load_rmac_model(model_path))
        if check_model and self.model.fingerprint() != self.fingerprint:
            raise IndexMismatchError(
                f"{model_path} is not the model the index in "
                f"{self.index_dir} was built with (fingerprints differ; "
                "indexes made by keras_rmac < 0.2, whose fingerprints did "
                "not cover the backbone's padding, all differ); rebuild the "
                "index (keras-rmac index ... --rebuild)."
            )
        self._store = None

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        """Absolute path of photo `i`."""
        return os.path.join(self.photos_dir, self.paths[i])

    def describe(self, image) -> np.ndarray:
        """Descriptor `(D,)` of one image (a path or an RGB array).

        Raises:
            keras_rmac.data.image_io.ImageError: the file cannot be read.
        """
        if isinstance(image, (str, os.PathLike)):
            image = image_io.load_image(image)
        image = np.asarray(image)
        return _describe(self.model, [image], self.max_size, self.scales, 1)[0]

    def stored_descriptors(self, ids: np.ndarray) -> np.ndarray:
        """Float descriptors `(N, D)` of photos `ids` (positions in
        `paths`), from the searchable index or else the descriptor store.

        Raises:
            ValueError: the index keeps no floats (compact mode) and the
                store none either (`keep_descriptors=False`).
        """
        ids = np.asarray(ids, np.int64)
        try:
            return self.index.get_vectors(ids)
        except ValueError:
            pass  # A compact index keeps only codes.
        if self._store is None:
            self._store = DescriptorStore(
                os.path.join(self.index_dir, WORK_DIR),
                self.index.metadata["descriptor_dim"],
                writable=False,
            )
        records = [self._store.records.get(self.paths[i]) for i in ids]
        if any(r is None or r.shard is None for r in records):
            raise ValueError(
                f"The index in {self.index_dir} keeps no float descriptors "
                "(compact mode, built with --no-keep-descriptors); query "
                "expansion needs them: re-index with --keep-descriptors."
            )
        return self._store.descriptors(records)

    def search(
        self, image, k: int = 10, qe: int = 0, alpha: float | None = None
    ) -> list[SearchResult]:
        """The `k` most similar photos to `image`.

        Args:
            image: str, os.PathLike or `(H, W, 3)` RGB array. The query.
            k: int. Number of results. Defaults to 10.
            qe: int. Query expansion with the `qe` best matches: the query
                descriptor becomes the L2-normalised sum of itself and
                those matches' descriptors (average QE, Chum et al. 2007),
                then is searched again. 0 disables it. Defaults to 0.
            alpha: float or None. With `qe`: weigh each match by its
                score to the power `alpha` (alpha-QE, Radenovic et al.
                2018) instead of 1. Defaults to None (average QE).

        Returns:
            list of `SearchResult`, best first (at most `len(self)`).

        Raises:
            keras_rmac.data.image_io.ImageError: the query file cannot be
                read.
            ValueError: `qe` on a compact index whose float descriptors
                were not kept.
        """
        from keras_rmac.search import expansion

        if int(k) < 1:
            raise ValueError(f"`k` must be >= 1. Received: k={k!r}")
        if int(qe) < 0:
            raise ValueError(f"`qe` must be >= 0. Received: qe={qe!r}")
        query = self.describe(image)[None]
        k = min(int(k), len(self))
        if k == 0:
            return []
        if qe:
            ids, scores = self.index.search(query, min(int(qe), len(self)))
            valid = ids >= 0
            neighbours = np.zeros(ids.shape + (query.shape[1],), np.float32)
            neighbours[valid] = self.stored_descriptors(ids[valid])
            if alpha is None:
                query = expansion.average_query_expansion(
                    query, neighbours, valid
                )
            else:
                query = expansion.alpha_query_expansion(
                    query, neighbours, scores, alpha, valid
                )
        ids, scores = self.index.search(query, k)
        return [
            SearchResult(rank + 1, float(score), self.path(int(i)))
            for rank, (i, score) in enumerate(zip(ids[0], scores[0]))
            if int(i) >= 0
        ]
