"""The index directory: its files, and the version readers open.

```
INDEX_DIR/
  current.json    the version marker: the generation readers open; written
                  last and atomically, so it always names a complete one
  generations/N/  one complete, immutable version: `searchable/` (the
                  search index, its metadata holding the photo paths and
                  the settings) and `model.keras` (the network that
                  described the photos; search describes queries with it)
  index.json      the indexer's settings: model fingerprint and spec,
                  dimension, max_size, scales, search mode, photo folder
  model.keras     the indexer's model (a generation's is a hard link)
  report.json     what the last run did, and every unreadable file with why
  .work/          the descriptor store (see `keras_rmac.indexing.store`)
  .rebuild/       a `--rebuild` in progress: its own index.json,
                  model.keras and .work/, moved in once its generation is
                  current
  .lock           held by the indexing run
```

A run that changes the searchable index builds generation N + 1 beside
the current one (fsynced), writes `current.json` naming it, then deletes
the generations other than N + 1 and N: the previous version is kept
until the next switch, so a reader that read the marker just before a
switch can still open it. A run killed at any point leaves the previous
version searchable.

Indexes written by keras_rmac 0.2.0 have no marker: their search index is
`INDEX_DIR/searchable/` with the top-level `model.keras`; they are
version 0 and open as such. The next indexing run makes generation 1.
"""

from __future__ import annotations

import json
import os
import shutil

from keras_rmac import fileio
from keras_rmac.fileio import link_or_copy  # noqa: F401 - used as layout.link_or_copy

__all__ = [
    "CURRENT_FILE",
    "GENERATIONS_DIR",
    "MODEL_FILE",
    "REPORT_FILE",
    "SEARCHABLE_DIR",
    "SETTINGS_FILE",
    "WORK_DIR",
    "Version",
    "current_generation",
    "current_version",
    "recorded_settings",
    "saved_model_path",
]

MODEL_FILE = "model.keras"
SETTINGS_FILE = "index.json"
SEARCHABLE_DIR = "searchable"
REPORT_FILE = "report.json"
WORK_DIR = ".work"
CURRENT_FILE = "current.json"
GENERATIONS_DIR = "generations"
REBUILD_DIR = ".rebuild"
LOCK_FILE = ".lock"
_PROMOTE_FLAG = "promote"

SETTINGS_FORMAT = 2
"""Format of `index.json` (1: keras_rmac 0.2.0, `descriptor_dim` key)."""
READABLE_SETTINGS_FORMATS = (1, 2)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def generation_dir(index_dir: str, generation: int) -> str:
    """The folder of generation `generation` (0: the 0.2.0 layout)."""
    if generation == 0:
        return index_dir
    return os.path.join(index_dir, GENERATIONS_DIR, f"{generation:06d}")


def read_marker(index_dir: str | os.PathLike) -> dict | None:
    """The parsed `current.json`, or None when there is none."""
    try:
        return _read_json(os.path.join(os.fspath(index_dir), CURRENT_FILE))
    except FileNotFoundError:
        return None


def current_generation(index_dir: str | os.PathLike) -> int | None:
    """The generation readers of `index_dir` open now, cheaply.

    Reads only the small version marker: a service can poll it and reopen
    the index when the number changes.

    Args:
        index_dir: str or os.PathLike. An index directory.

    Returns:
        The generation number (>= 1), 0 for an index written by keras_rmac
        0.2.0 (no marker), or None when `index_dir` holds no finished
        index.

    Example:

    >>> import tempfile
    >>> current_generation(tempfile.mkdtemp()) is None
    True
    """
    index_dir = os.fspath(index_dir)
    marker = read_marker(index_dir)
    if marker is not None:
        return int(marker["generation"])
    legacy = os.path.join(index_dir, SEARCHABLE_DIR)
    return 0 if os.path.isdir(legacy) else None


class Version:
    """The files of one generation of an index directory.

    Attributes:
        generation: int. The generation number (0: a 0.2.0 index).
        directory: str. Where its `searchable/` and `model.keras` are.
        searchable: str. The search index folder.
        model_path: str. The model that described its photos.
    """

    def __init__(self, index_dir: str, generation: int):
        self.generation = int(generation)
        self.directory = generation_dir(index_dir, self.generation)
        self.searchable = os.path.join(self.directory, SEARCHABLE_DIR)
        self.model_path = os.path.join(self.directory, MODEL_FILE)

    def __repr__(self) -> str:
        return f"<Version generation={self.generation} at {self.directory}>"


def current_version(index_dir: str | os.PathLike) -> Version:
    """The version readers open now.

    Raises:
        FileNotFoundError: no finished index in `index_dir`.
    """
    index_dir = os.path.abspath(os.fspath(index_dir))
    generation = current_generation(index_dir)
    if generation is None:
        raise FileNotFoundError(
            f"No finished index in {index_dir} (neither {CURRENT_FILE} nor "
            f"{SEARCHABLE_DIR}/)."
        )
    return Version(index_dir, generation)


def recorded_settings(index_dir: str | os.PathLike) -> dict | None:
    """The settings an index directory was built with, or None.

    The indexer's `index.json` as a dict, with the descriptor dimension
    under `dimension` (0.2.0 wrote `descriptor_dim`).

    Example:

    >>> import tempfile
    >>> recorded_settings(tempfile.mkdtemp()) is None
    True
    """
    path = os.path.join(os.fspath(index_dir), SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    settings = _read_json(path)
    if "dimension" not in settings and "descriptor_dim" in settings:
        settings["dimension"] = settings.pop("descriptor_dim")
    return settings


def saved_model_path(index_dir: str | os.PathLike) -> str | None:
    """The indexer's saved model file of `index_dir`, or None if none."""
    path = os.path.join(os.path.abspath(os.fspath(index_dir)), MODEL_FILE)
    return path if os.path.isfile(path) else None


# ---------------------------------------------------------------------------
# Writing versions (under the index lock).


def new_generation(index_dir: str) -> Version:
    """A fresh, empty generation folder numbered after every existing one."""
    root = os.path.join(index_dir, GENERATIONS_DIR)
    os.makedirs(root, exist_ok=True)
    numbers = [int(n) for n in os.listdir(root) if n.isdigit()]
    number = max([current_generation(index_dir) or 0, *numbers]) + 1
    version = Version(index_dir, number)
    os.makedirs(version.directory)
    return version


def switch_to(index_dir: str, version: Version, digest: str) -> None:
    """Makes `version` (complete, fsynced) the one readers open.

    Writes the marker atomically, naming the generation it replaces as
    `previous`, then deletes the generations that are neither.
    """
    for path in (version.directory, os.path.dirname(version.directory)):
        fileio.fsync_path(path)
    previous = current_generation(index_dir)
    fileio.atomic_write_json(
        os.path.join(index_dir, CURRENT_FILE),
        {
            "generation": version.generation,
            "previous": previous,
            "digest": digest,
        },
    )
    remove_stale_generations(index_dir)


def remove_stale_generations(index_dir: str) -> None:
    """Deletes every generation but the current and the previous one."""
    marker = read_marker(index_dir)
    if marker is None:
        return
    keep = {marker["generation"], marker.get("previous")}
    root = os.path.join(index_dir, GENERATIONS_DIR)
    names = os.listdir(root) if os.path.isdir(root) else []
    for name in names:
        if not (name.isdigit() and int(name) in keep):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    legacy = os.path.join(index_dir, SEARCHABLE_DIR)
    if 0 not in keep and os.path.isdir(legacy):
        shutil.rmtree(legacy, ignore_errors=True)


# ---------------------------------------------------------------------------
# A rebuild is indexed aside, in its own workspace, then moved in.


def rebuild_workspace(index_dir: str) -> str:
    """A fresh, empty workspace for a rebuild (a killed one is dropped)."""
    staging = os.path.join(index_dir, REBUILD_DIR)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def mark_rebuild_complete(index_dir: str) -> None:
    """Records that the rebuild's workspace is complete and must replace
    the index's own (written just before its version is switched to)."""
    flag = os.path.join(index_dir, REBUILD_DIR, _PROMOTE_FLAG)
    fileio.atomic_write_text(flag, "complete: move into place\n")


def finish_rebuild(index_dir: str) -> None:
    """Moves a complete rebuild's workspace into place; drops another.

    Called after the switch to the rebuild's version, and at the start of
    every run: a run killed halfway through the move is completed by the
    next one, and a rebuild killed before it was complete is deleted (the
    index goes on with its previous workspace and version).
    """
    staging = os.path.join(index_dir, REBUILD_DIR)
    if not os.path.isdir(staging):
        return
    if os.path.exists(os.path.join(staging, _PROMOTE_FLAG)):
        # The settings last: they decide how the next run reads the rest.
        for name in (WORK_DIR, MODEL_FILE, SETTINGS_FILE):
            source = os.path.join(staging, name)
            target = os.path.join(index_dir, name)
            if not os.path.lexists(source):
                continue  # Moved before a kill.
            if os.path.isdir(target):
                os.rename(target, os.path.join(staging, "retired" + name))
            os.replace(source, target)
        fileio.fsync_path(index_dir)
    shutil.rmtree(staging, ignore_errors=True)
