"""On-disk layout of search indexes: manifest, atomic directory writes.

An index is a directory:

```
manifest.json   format_version, index_type, dimension, count, params,
                metadata (e.g. descriptor model config, weight fingerprint)
ids.npy         int64 ids, one per indexed vector, in insertion order
paths.json      optional: one path (str) per indexed vector
...             the index type's own files (vectors.npy, scann/ ...)
```

`manifest.json` is written last, so a directory without it is never a
complete index. Whole directories are replaced atomically: the new index is
written into a temporary sibling, the old one is renamed aside, the new one
renamed in, and only then is the old one deleted. Nothing is pickled:
arrays are `.npy` files read with `allow_pickle=False`, the rest is JSON.
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_rmac import fileio

logger = logging.getLogger(__name__)

FORMAT_NAME = "keras_rmac.search"
# The version of this on-disk index layout (the manifest's
# `format_version`), not of any other keras_rmac file. Version 2 added
# ScannIndex's optional projection and 8-bit codes; an index of version 1
# (no projection, 4-bit codes) reads the same way. Version 3 added
# ScannIndex's recall target (`target_recall`, `recall_k`) and measured
# `operating_point` to the params; indexes of versions 1 and 2 read as
# built without a target (no operating point).
INDEX_FORMAT_VERSION = 3
READABLE_INDEX_FORMAT_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
IDS_FILE = "ids.npy"
PATHS_FILE = "paths.json"

# Manifest keys that `expect=` compares directly; any other key is looked
# up in the manifest's `metadata`.
TOP_LEVEL_KEYS = ("format_version", "index_type", "dimension")


class IndexMismatchError(ValueError):
    """A saved index does not match what the caller expected.

    Raised by `load(directory, expect=...)` when the index was written by
    another format version, holds descriptors of another dimension, or was
    built from another descriptor model (weight fingerprint) than expected.
    """


def is_index_directory(directory: str) -> bool:
    """Whether `directory` holds a complete index (has a manifest)."""
    return os.path.isfile(os.path.join(directory, MANIFEST))


def atomic_write_directory(
    directory: str, write: Callable[[str], None]
) -> None:
    """Writes a directory with `write(tmp)` and swaps it in atomically.

    `write` fills a fresh temporary sibling of `directory`. If it raises,
    the temporary directory is removed and `directory` is left untouched.
    Otherwise an existing `directory` is renamed aside, the new one renamed
    in, and the old one deleted. A process killed at any point leaves either
    the old or the new complete index at `directory` (or, between the two
    renames, the old one in a `.NAME.old-*` sibling that `read_manifest`
    points to); at worst a stray `.NAME.tmp-*` sibling remains.

    Args:
        directory: str. The destination. If it exists it must be an index
            directory (holding a manifest) or empty: anything else is
            refused rather than deleted.
        write: callable taking the temporary directory path.

    Raises:
        FileExistsError: `directory` exists and is not an index directory.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    exists = os.path.lexists(directory)
    if exists and not (
        os.path.isdir(directory)
        and (is_index_directory(directory) or not os.listdir(directory))
    ):
        raise FileExistsError(
            f"Refusing to replace {directory}: it exists and is not a "
            f"search index (no {MANIFEST}). Choose another directory or "
            "remove it yourself."
        )
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        write(tmp)
        if not is_index_directory(tmp):
            raise RuntimeError(f"Index writer left no {MANIFEST} in {tmp}.")
        fileio.fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not exists:
        os.rename(tmp, directory)
    else:
        old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
        os.rmdir(old)  # only the unique name is wanted
        os.rename(directory, old)
        try:
            os.rename(tmp, directory)
        except BaseException:
            os.rename(old, directory)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fileio.fsync_path(parent)


def _stranded_old_copies(directory: str) -> list[str]:
    parent, name = os.path.split(os.path.abspath(directory))
    if not os.path.isdir(parent):
        return []
    prefix = f".{name}.old-"
    return sorted(
        os.path.join(parent, entry)
        for entry in os.listdir(parent)
        if entry.startswith(prefix)
    )


def write_json(path: str, value: Any) -> None:
    """Writes `value` as indented, key-sorted JSON (`fileio`, atomically)."""
    text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    fileio.atomic_write_text(path, text + "\n")


def check_json_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Returns `metadata` as a dict after checking it is JSON-serialisable.

    Raises:
        ValueError: a key is not a string, or a value cannot be written to
            JSON (the message names the key).
    """
    if not isinstance(metadata, Mapping):
        raise ValueError(
            f"`metadata` must be a dict, got {type(metadata).__name__}."
        )
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata keys must be str, got {key!r}.")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"metadata[{key!r}] cannot be stored in the manifest (JSON):"
                f" {e}. Convert it to str/int/float/list/dict first (e.g. "
                "`.tolist()` for arrays)."
            ) from e
    return dict(metadata)


def make_manifest(
    *,
    index_type: str,
    dimension: int,
    count: int,
    params: Mapping[str, Any],
    metadata: Mapping[str, Any],
    files: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest dict of an index (see the module docstring)."""
    from keras_rmac.version import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": INDEX_FORMAT_VERSION,
        "index_type": index_type,
        "dimension": int(dimension),
        "count": int(count),
        "params": dict(params),
        "metadata": check_json_metadata(metadata),
        "files": dict(files),
        "written_by": f"keras_rmac {__version__}",
    }


def read_manifest(directory: str) -> dict[str, Any]:
    """Reads and sanity-checks `directory/manifest.json`.

    Raises:
        FileNotFoundError: no index at `directory` (names a stranded copy
            left by an interrupted save, if there is one).
        IndexMismatchError: written by another format or format version.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        old = _stranded_old_copies(directory)
        hint = (
            f" An interrupted save left the previous index at {old[-1]}: "
            f"rename it to {directory} to use it."
            if old and not os.path.exists(directory)
            else " Build and save an index there first."
        )
        raise FileNotFoundError(
            f"No search index at {directory} (missing {MANIFEST}).{hint}"
        )
    with open(path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}.") from e
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT_NAME:
        raise IndexMismatchError(
            f"{path} is not a keras_rmac search index manifest (format "
            f"{found!r}, expected {FORMAT_NAME!r})."
        )
    version = manifest.get("format_version")
    if version not in READABLE_INDEX_FORMAT_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_INDEX_FORMAT_VERSIONS)
        raise IndexMismatchError(
            f"Index {directory} has format_version={version!r}, but this "
            f"keras_rmac reads format_version {readable}. Rebuild the "
            "index from the descriptors with this version (or open it with "
            f"the keras_rmac version that wrote it: "
            f"{manifest.get('written_by', 'unknown')})."
        )
    for key in ("index_type", "dimension", "count", "params", "metadata"):
        if key not in manifest:
            raise ValueError(f"{path} lacks the required key {key!r}.")
    return manifest


_MISSING = object()

_ADVICE = {
    "dimension": (
        "The queries' descriptors would not match the indexed ones: rebuild "
        "the index with the current descriptor model, or use the model that "
        "built it."
    ),
    "index_type": "Load it with `load_index` or the matching class.",
    "format_version": (
        "Rebuild the index with this keras_rmac version, or use the version "
        "that wrote it."
    ),
}
_DEFAULT_ADVICE = (
    "The index was built with another descriptor model or settings: its "
    "descriptors cannot be compared with new ones. Rebuild the index with "
    "the current model, or load the model that built it."
)


def check_expectations(
    directory: str,
    manifest: Mapping[str, Any],
    expect: Mapping[str, Any] | None,
) -> None:
    """Raises `IndexMismatchError` if the manifest differs from `expect`.

    Args:
        directory: str. Named in the error message.
        manifest: the manifest read from `directory`.
        expect: dict or None. Keys `format_version`, `index_type` and
            `dimension` compare with the manifest's own fields; any other
            key (e.g. `"weights_fingerprint"`, `"model_config"`) with the
            same key of the manifest's `metadata`. A key absent from the
            index is a mismatch too.
    """
    if not expect:
        return
    for key, want in expect.items():
        if key in TOP_LEVEL_KEYS:
            got = manifest.get(key, _MISSING)
            where = key
        else:
            got = manifest["metadata"].get(key, _MISSING)
            where = f"metadata[{key!r}]"
        if _json_equal(got, want):
            continue
        shown = "nothing (the key is absent)" if got is _MISSING else got
        raise IndexMismatchError(
            f"Index {directory} has {where} = {_short(shown)}, but "
            f"{_short(want)} was expected. "
            f"{_ADVICE.get(key, _DEFAULT_ADVICE)}"
        )


def _json_equal(got: Any, want: Any) -> bool:
    if got is _MISSING:
        return False
    # Compare as JSON would store them (tuples become lists, etc.).
    try:
        return json.loads(json.dumps(want)) == got
    except (TypeError, ValueError):
        return want == got


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = repr(text) if isinstance(value, str) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def save_ids_and_paths(
    directory: str, ids: np.ndarray, paths: list[str] | None
) -> dict[str, str]:
    """Writes `ids.npy` (+ `paths.json`); returns their manifest entries."""
    np.save(
        os.path.join(directory, IDS_FILE),
        np.ascontiguousarray(ids, np.int64),
        allow_pickle=False,
    )
    files = {"ids": IDS_FILE}
    if paths is not None:
        write_json(os.path.join(directory, PATHS_FILE), list(paths))
        files["paths"] = PATHS_FILE
    return files


def load_ids_and_paths(
    directory: str, manifest: Mapping[str, Any]
) -> tuple[np.ndarray, list[str] | None]:
    """Reads the ids and optional paths and checks them against `count`."""
    files = manifest.get("files", {})
    count = int(manifest["count"])
    ids = load_array(directory, files.get("ids", IDS_FILE))
    if ids.dtype != np.int64 or ids.shape != (count,):
        raise ValueError(
            f"{os.path.join(directory, IDS_FILE)} holds {ids.dtype} "
            f"{ids.shape}, expected int64 ({count},) per the manifest: the "
            "index is damaged; rebuild it."
        )
    paths = None
    if "paths" in files:
        with open(
            os.path.join(directory, files["paths"]), encoding="utf-8"
        ) as f:
            paths = json.load(f)
        if not isinstance(paths, list) or len(paths) != count:
            raise ValueError(
                f"{os.path.join(directory, files['paths'])} does not hold "
                f"{count} paths: the index is damaged; rebuild it."
            )
    return ids, paths


def load_array(
    directory: str, name: str, mmap_mode: str | None = None
) -> np.ndarray:
    """`np.load` of `directory/name`, never unpickling."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing: the index is incomplete; rebuild it."
        )
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
