"""The search engine behind `keras-rmac serve`: one index, one model thread.

`SearchEngine` holds the `PhotoIndex` the service answers with and:

- runs every query on a single model thread fed by a bounded queue, so
  that the event loop never waits on TensorFlow and queries do not race
  for the CPU (a full queue is refused with `EngineBusy`, not queued
  without end);
- batches image queries (`submit_search`) that wait in that queue at
  the same time: up to `max_batch` go through the network in one call
  (images of one resized shape together, as `RMACModel.extract`
  batches), and are then each searched. A query that arrives while the
  model thread is idle starts at once (no waiting for a batch to fill,
  TF Serving's `batch_timeout_micros=0`);
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

_IMAGE_SEARCH = object()
"""The job function slot of a batchable image query (`submit_search`)."""


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
        max_batch: int. Image queries (`submit_search`) extracted in one
            call, from those waiting together; 1 extracts each alone.
            Defaults to 8.

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
        max_batch: int = 8,
    ):
        from keras_rmac.checks import check_int

        self.max_batch = check_int("max_batch", max_batch)
        self.batches = collections.Counter()  # Image-query batches by size.
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

    def submit_search(self, image, k=10, qe=0, alpha=None):
        """`search_image(image, k, qe, alpha)` on the model thread, batched
        with the image queries waiting beside it; its future.

        Raises:
            EngineBusy: `queue_size` queries are already waiting.
        """
        return self.submit(_IMAGE_SEARCH, image, k, qe, alpha)

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def _work(self) -> None:
        held = collections.deque()  # Taken from the queue, not batchable.
        while True:
            job = held.popleft() if held else self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if fn is _IMAGE_SEARCH:
                batch = [job]
                while len(batch) < self.max_batch and not held:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is not None and more[1] is _IMAGE_SEARCH:
                        batch.append(more)
                    else:  # Runs next, in its turn.
                        held.append(more)
                self._search_batch(batch)
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def _search_batch(self, batch) -> None:
        """Answers image queries `(future, _, (image, k, qe, alpha))` with
        one snapshot: one extraction for all, then each search. If the
        batch's extraction fails, each image is extracted alone, so a bad
        one fails only its own query."""
        live = [job for job in batch if job[0].set_running_or_notify_cancel()]
        if not live:
            return
        snap = self._snapshot
        index = snap.index
        try:
            descriptors = index.extract_batch([args[0] for _, _, args in live])
        except Exception:
            descriptors = None
        self.batches[len(live)] += 1
        for row, (future, _, (image, k, qe, alpha)) in enumerate(live):
            try:
                query = (
                    index.extract(image)[None]
                    if descriptors is None
                    else descriptors[row : row + 1]
                )
                results = index.search_descriptor(query, k, qe, alpha)
                future.set_result((snap.version, snap.hits(results)))
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
        results = index.search_descriptor(query, k, qe, alpha)
        return snap.version, snap.hits(results)

    @staticmethod
    def search_path(snap, i, k, qe, alpha):
        results = snap.index.search(snap.index.path(i), k, qe, alpha)
        return snap.version, snap.hits(results)
