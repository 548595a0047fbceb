"""The search engine behind `keras-rmac serve`: one index, one model thread.

`SearchEngine` holds the `PhotoIndex` the service answers with and:

- runs every query on a single model thread fed by a bounded queue, so
  that the event loop never waits on TensorFlow and queries do not race
  for the CPU (a full queue is refused with `EngineBusy`, not queued
  without end);
- follows the index's version marker: a watcher thread reads
  `current.json` (`keras_rmac.indexing.current_generation`, one small
  file) every `poll_interval` seconds and, when the generation changed,
  opens the new version aside, runs one warm-up query on it, and only
  then swaps the one reference queries read. A query reads that
  reference once, so it is answered by exactly one version, which it
  names; an old version's photo list is kept for the thumbnails and
  "more like this" links a page still shows.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import queue
import threading
import time

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["EngineBusy", "Hit", "PhotoNotFound", "SearchEngine", "Snapshot"]

_RETAINED_VERSIONS = 4
"""Photo lists of this many recent versions are kept for old links."""


class EngineBusy(RuntimeError):
    """The query queue is full: the client should retry later."""


class PhotoNotFound(LookupError):
    """An id (or version) that names no photo this service can show."""


@dataclasses.dataclass(frozen=True)
class Hit:
    """One ranked photo of a service answer.

    Attributes:
        rank: int. 1 for the best match.
        id: int. The photo's position in its version's photo list.
        score: float. Inner product of the descriptors.
        path: str. The photo file, as `PhotoIndex.search` gives it.
        relative: str. The path relative to the photo folder.
    """

    rank: int
    id: int
    score: float
    path: str
    relative: str


class Snapshot:
    """One opened version: the `PhotoIndex` and what queries need of it."""

    def __init__(self, index):
        self.index = index
        self.version: int = index.version
        self.paths: list[str] = list(index.paths)
        self.ids = {index.path(i): i for i in range(len(self.paths))}
        self.ids_by_relative = {p: i for i, p in enumerate(self.paths)}
        self.photos_dir = os.path.realpath(index.photos_dir)
        self.loaded_at = time.time()

    def __len__(self) -> int:
        return len(self.paths)

    def light(self) -> "Snapshot":
        """This version without its index and model: what links to its
        photos need once it is no longer the one searched."""
        copy = object.__new__(Snapshot)
        copy.__dict__.update(self.__dict__, index=None)
        return copy

    def hits(self, results) -> list[Hit]:
        """`SearchResult`s of this version as `Hit`s (with ids)."""
        out = []
        for r in results:
            i = self.ids[r.path]
            out.append(Hit(r.rank, i, r.score, r.path, self.paths[i]))
        return out


def _open_photo_index(index_dir: str, check_model: bool):
    from keras_rmac.indexing import PhotoIndex

    return PhotoIndex(index_dir, check_model=check_model)


def _warm_up(index) -> None:
    """One query on a fresh `PhotoIndex`: its first call traces and
    allocates, which must not happen on a user's query."""
    index.extract(np.full((64, 64, 3), 127, np.uint8))


class SearchEngine:
    """A `PhotoIndex` served to concurrent queries, following new versions.

    Args:
        index_dir: str or os.PathLike. An index made by `keras-rmac index`.
        poll_interval: float. Seconds between reads of the version marker;
            0 disables the watcher (call `reload_if_changed` yourself).
            Defaults to 1.
        queue_size: int. Queries waiting for the model thread beyond
            which new ones are refused with `EngineBusy`. Defaults to 64.
        check_model: bool. As in `PhotoIndex`. Defaults to True.

    Example:

    >>> engine = SearchEngine("photos_index")  # doctest: +SKIP
    >>> version, hits = engine.search_image(image, k=5)  # doctest: +SKIP
    >>> engine.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        index_dir,
        poll_interval: float = 1.0,
        queue_size: int = 64,
        check_model: bool = True,
    ):
        self.index_dir = os.path.abspath(os.fspath(index_dir))
        self.poll_interval = float(poll_interval)
        self.check_model = check_model
        first = self._open()
        self._snapshot = first
        self._retained = collections.OrderedDict({first.version: first})
        self._retain_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.reloads = 0
        self.last_reload_error: str | None = None
        self.started_at = time.time()
        self._jobs: queue.Queue = queue.Queue(maxsize=int(queue_size))
        self._stop = threading.Event()
        self._worker = threading.Thread(
            target=self._work, name="keras-rmac-serve-model", daemon=True
        )
        self._worker.start()
        self._watcher = None
        if self.poll_interval > 0:
            self._watcher = threading.Thread(
                target=self._watch, name="keras-rmac-serve-watch", daemon=True
            )
            self._watcher.start()

    # -- versions ---------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The version new queries are answered with."""
        return self._snapshot

    def _open(self) -> Snapshot:
        index = _open_photo_index(self.index_dir, self.check_model)
        _warm_up(index)
        return Snapshot(index)

    def reload_if_changed(self) -> bool:
        """Switches to the marker's version if it is not the one served.

        The new version is opened and warmed up while queries go on with
        the old one; then one reference assignment switches them.

        Returns:
            True if the service now answers with another version.
        """
        from keras_rmac.indexing import current_generation

        with self._reload_lock:
            if current_generation(self.index_dir) == self._snapshot.version:
                return False
            try:
                fresh = self._open()
            except Exception as exc:  # Keep serving the old version.
                error = f"{type(exc).__name__}: {exc}"
                if error != self.last_reload_error:  # Once, not each poll.
                    logger.warning("Keeping version %s: %s", self.version, exc)
                self.last_reload_error = error
                return False
            old = self._snapshot
            if fresh.version == old.version:
                return False
            with self._retain_lock:
                # Queries holding the old snapshot finish with it; links
                # to its photos only need its photo list.
                self._retained[old.version] = old.light()
                self._retained[fresh.version] = fresh
                while len(self._retained) > _RETAINED_VERSIONS:
                    self._retained.popitem(last=False)
            self._snapshot = fresh  # The switch: one reference.
            self.reloads += 1
            self.last_reload_error = None
            logger.info("Now serving version %d", fresh.version)
            return True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.reload_if_changed()
            except Exception:  # The watcher must outlive a bad moment.
                logger.exception("Reading the version marker failed")

    @property
    def version(self) -> int:
        return self._snapshot.version

    def retained(self, version: int | None) -> Snapshot:
        """The snapshot of `version` (None: the current one).

        Raises:
            PhotoNotFound: that version is not (or no longer) known here.
        """
        if version is None:
            return self._snapshot
        with self._retain_lock:
            found = self._retained.get(int(version))
        if found is None:
            raise PhotoNotFound(
                f"index version {version} is not served (current: "
                f"{self.version}); search again to get current links"
            )
        return found

    def photo(self, photo_id: int, version: int | None = None, snap=None):
        """`(snapshot, relative path, absolute path)` of an indexed photo.

        The photo `photo_id` of `version`, or of `snap` when given.

        Only paths recorded in the index are ever returned, and only those
        whose real location is inside the indexed photo folder.

        Raises:
            PhotoNotFound: no such id in that version, or the file lies
                outside the photo folder (e.g. through a symbolic link).
        """
        snap = snap or self.retained(version)
        if not 0 <= int(photo_id) < len(snap):
            raise PhotoNotFound(
                f"no photo with id {photo_id} in index version "
                f"{snap.version} (ids 0 to {len(snap) - 1})"
            )
        relative = snap.paths[int(photo_id)]
        full = os.path.realpath(os.path.join(snap.photos_dir, relative))
        if os.path.commonpath([full, snap.photos_dir]) != snap.photos_dir:
            raise PhotoNotFound(
                f"photo {photo_id} lies outside the indexed folder"
            )
        return snap, relative, full

    # -- the model thread --------------------------------------------------

    def submit(self, fn, *args) -> concurrent.futures.Future:
        """Runs `fn(*args)` on the model thread; its future.

        Raises:
            EngineBusy: `queue_size` queries are already waiting.
        """
        future = concurrent.futures.Future()
        try:
            self._jobs.put_nowait((future, fn, args))
        except queue.Full:
            raise EngineBusy(
                f"{self._jobs.maxsize} queries are waiting; retry shortly"
            ) from None
        return future

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def close(self) -> None:
        """Stops the watcher and the model thread (after queued queries)."""
        self._stop.set()
        self._jobs.put(None)
        self._worker.join(timeout=30)
        if self._watcher is not None:
            self._watcher.join(timeout=30)

    # -- queries (run on the model thread) ---------------------------------

    def search_image(self, image, k=10, qe=0, alpha=None):
        """`(version, hits)`: `PhotoIndex.search(image, k, qe, alpha)` on
        the current version. Call it through `submit`."""
        snap = self._snapshot
        return snap.version, snap.hits(snap.index.search(image, k, qe, alpha))

    def search_id(self, photo_id, version=None, k=10, qe=0, alpha=None):
        """`(version, hits)` for the photo `photo_id` of `version` (None:
        current) searched in the current version ("more like this").

        The query is the photo's stored descriptor, the one the index
        holds for it; a compact index without kept descriptors describes
        the photo file again. Call it through `submit`.

        Raises:
            PhotoNotFound: no such photo, or it is not in the current
                version any more.
        """
        snap = self._snapshot
        source = snap if version in (None, snap.version) else None
        _, relative, _ = self.photo(photo_id, version, source)
        i = snap.ids_by_relative.get(relative)
        if i is None:
            raise PhotoNotFound(
                f"photo {photo_id} of version {version} is no longer in the "
                f"index (version {snap.version})"
            )
        index = snap.index
        try:
            query = index.stored_descriptors(np.array([i]))
        except ValueError:
            return self.search_path(snap, i, k, qe, alpha)
        return snap.version, _search_vector(snap, query, k, qe, alpha)

    @staticmethod
    def search_path(snap, i, k, qe, alpha):
        results = snap.index.search(snap.index.path(i), k, qe, alpha)
        return snap.version, snap.hits(results)


def _search_vector(snap: Snapshot, query, k, qe, alpha) -> list[Hit]:
    """`PhotoIndex.search` from a descriptor `(1, D)` instead of an image:
    the same checks, expansion and ranking."""
    from keras_rmac.search import expansion

    index = snap.index
    if int(k) < 1:
        raise ValueError(f"`k` must be >= 1. Received: k={k!r}")
    if int(qe) < 0:
        raise ValueError(f"`qe` must be >= 0. Received: qe={qe!r}")
    k = min(int(k), len(snap))
    if k == 0:
        return []
    query = np.asarray(query, np.float32)
    if qe:
        qe = min(int(qe), len(snap))
        ids, scores = index.index.search(query, qe)
        valid = ids >= 0
        neighbours = np.zeros(ids.shape + (query.shape[1],), np.float32)
        neighbours[valid] = index.stored_descriptors(ids[valid])
        if alpha is None:
            query = expansion.average_query_expansion(query, neighbours, valid)
        else:
            query = expansion.alpha_query_expansion(
                query, neighbours, scores, alpha, valid
            )
    ids, scores = index.index.search(query, k)
    return [
        Hit(rank + 1, int(i), float(s), index.path(int(i)), snap.paths[int(i)])
        for rank, (i, s) in enumerate(zip(ids[0], scores[0]))
        if int(i) >= 0
    ]
