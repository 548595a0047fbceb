"""`PhotoIndex`: an index directory opened for searching by image."""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from keras_rmac.data import image_io
from keras_rmac.indexing import layout
from keras_rmac.indexing.extract import decode_options
from keras_rmac.indexing.extract import extract_images
from keras_rmac.indexing.settings import recorded_draft_above
from keras_rmac.indexing.store import DescriptorStore
from keras_rmac.models import loading
from keras_rmac.search import IndexMismatchError
from keras_rmac.search import expansion
from keras_rmac.search import load_index

__all__ = ["PhotoIndex", "SearchResult"]

_OPEN_TRIES = 3


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


def _open(index_dir: str):
    """The current version's search index, and the version.

    Retries when the version changed while it was being opened (two
    switches in between delete the generation that was read).
    """
    for attempt in range(_OPEN_TRIES):
        version = layout.current_version(index_dir)
        try:
            return load_index(version.searchable), version
        except FileNotFoundError:
            moved = layout.current_generation(index_dir) != version.generation
            if not moved or attempt == _OPEN_TRIES - 1:
                raise


class PhotoIndex:
    """An index directory made by `index_folder`, opened for searching.

    Opens the version the index's marker names (`layout.current_version`)
    with the model that described its photos; queries are described with
    the same model, `max_size`, `scales` and decoding (`draft_above`) as
    the photos. An indexing
    run going on meanwhile does not change what this object searches:
    reopen it when `is_current` turns False to see the new version.

    Args:
        index_dir: str or os.PathLike. The index directory.
        check_model: bool. Verify that the saved model's fingerprint is the
            one the index was built with. Defaults to True.
        max_pixels: int. Largest width x height a query file may be
            decoded to (see `keras_rmac.data.pixel_limits`). Defaults to
            `image_io.DEFAULT_MAX_PIXELS` (100 MP).

    Attributes:
        version: int. The generation opened (0: a keras_rmac 0.2.0 index).
        paths: list of str. The photos, relative to `photos_dir`.
        dimension: int. The descriptor dimension D.
        draft_above: int or None. The index's reduced JPEG decoding
            threshold, applied to query files too.

    Example:

    >>> index = PhotoIndex("photos_index")  # doctest: +SKIP
    >>> for hit in index.search("query.jpg", k=5):  # doctest: +SKIP
    ...     print(hit.rank, hit.score, hit.path)
    """

    def __init__(
        self,
        index_dir: str | os.PathLike,
        check_model: bool = True,
        max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
    ):
        self.index_dir = os.path.abspath(os.fspath(index_dir))
        try:
            self.index, found = _open(self.index_dir)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"No finished index in {self.index_dir} ({exc}) Build it "
                f"with `keras-rmac index PHOTOS_DIR --index {self.index_dir}`."
            ) from None
        self.version: int = found.generation
        meta = self.index.metadata
        self.paths: list[str] = self.index.paths or []
        self.photos_dir: str = meta["photos_dir"]
        self.max_size: int = meta["max_size"]
        self.scales: tuple[float, ...] = tuple(meta["scales"])
        self.draft_above: int | None = recorded_draft_above(meta)
        self.max_pixels = max_pixels
        self.fingerprint: str = meta["fingerprint"]
        self.dimension: int = int(
            meta.get("dimension", meta.get("descriptor_dim", 0))
            or self.index.dimension
        )
        self.model = loading.ensure_built(
            loading.load_rmac_model(found.model_path)
        )
        if check_model and self.model.fingerprint() != self.fingerprint:
            raise IndexMismatchError(
                f"{found.model_path} is not the model the index in "
                f"{self.index_dir} was built with (fingerprints differ; "
                "indexes made by keras_rmac < 0.2, whose fingerprints did "
                "not cover the backbone's padding, all differ); rebuild the "
                "index (keras-rmac index ... --rebuild)."
            )
        self._store = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def is_current(self) -> bool:
        """Whether the opened version is still the index's current one."""
        return layout.current_generation(self.index_dir) == self.version

    def path(self, i: int) -> str:
        """Absolute path of photo `i`."""
        return os.path.join(self.photos_dir, self.paths[i])

    def extract(self, image) -> np.ndarray:
        """Descriptor `(D,)` of one image (a path or an RGB array).

        A file is decoded as the index's photos were (`draft_above`),
        within `max_pixels`.

        Raises:
            keras_rmac.data.image_io.ImageError: the file cannot be read.
        """
        return self.extract_batch([image])[0]

    def extract_batch(self, images) -> np.ndarray:
        """Descriptors `(N, D)` of several images, each as `extract` gives
        it; images of the same resized shape go through the network
        together (equal to one at a time to float32 rounding).

        Raises:
            keras_rmac.data.image_io.ImageError: a file cannot be read.
        """
        decoded = [self._decoded(image) for image in images]
        if not decoded:
            return np.zeros((0, self.dimension), np.float32)
        return extract_images(
            self.model,
            decoded,
            self.max_size,
            self.scales,
            batch_size=len(decoded),
        )

    def _decoded(self, image) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            return image_io.load_image(
                image,
                **decode_options(
                    self.max_size,
                    self.scales,
                    self.max_pixels,
                    self.draft_above,
                ),
            )
        return np.asarray(image)

    def describe(self, image) -> np.ndarray:
        """Deprecated alias of `extract`."""
        warnings.warn(
            "PhotoIndex.describe is deprecated; use PhotoIndex.extract.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.extract(image)

    def _open_store(self) -> DescriptorStore | None:
        """The descriptor store, if it still holds this version's model's
        descriptors (a rebuild with another model replaces it)."""
        recorded = layout.recorded_settings(self.index_dir) or {}
        if recorded.get("fingerprint") != self.fingerprint:
            return None
        return DescriptorStore(
            os.path.join(self.index_dir, layout.WORK_DIR),
            self.dimension,
            writable=False,
        )

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
            self._store = self._open_store()
        records = [
            None if self._store is None else self._store.records.get(p)
            for p in (self.paths[i] for i in ids)
        ]
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
        _check_k_qe(k, qe)
        return self.search_descriptor(self.extract(image)[None], k, qe, alpha)

    def search_descriptor(
        self, query, k: int = 10, qe: int = 0, alpha: float | None = None
    ) -> list[SearchResult]:
        """`search` from a descriptor `(1, D)` (e.g. from `extract_batch`
        or `stored_descriptors`) instead of an image: the same checks,
        expansion and ranking."""
        _check_k_qe(k, qe)
        query = np.asarray(query, np.float32).reshape(1, -1)
        k = min(int(k), len(self))
        if k == 0:
            return []
        if qe:
            query = self._expand(query, min(int(qe), len(self)), alpha)
        ids, scores = self.index.search(query, k)
        return [
            SearchResult(rank + 1, float(score), self.path(int(i)))
            for rank, (i, score) in enumerate(zip(ids[0], scores[0]))
            if int(i) >= 0
        ]

    def _expand(self, query, qe, alpha):
        """Query expansion (`keras_rmac.search.expansion`) with the float
        descriptors of the `qe` best matches, wherever they are kept."""
        ids, scores = self.index.search(query, qe)
        valid = ids >= 0
        neighbours = np.zeros(ids.shape + (query.shape[1],), np.float32)
        neighbours[valid] = self.stored_descriptors(ids[valid])
        if alpha is None:
            return expansion.average_query_expansion(query, neighbours, valid)
        return expansion.alpha_query_expansion(
            query, neighbours, scores, alpha, valid
        )


def _check_k_qe(k, qe) -> None:
    if int(k) < 1:
        raise ValueError(f"`k` must be >= 1. Received: k={k!r}")
    if int(qe) < 0:
        raise ValueError(f"`qe` must be >= 0. Received: qe={qe!r}")
