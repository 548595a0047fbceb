"""The search index interface shared by every index type.

An index holds L2-normalised float32 descriptors, each with an int64 id
(and optionally a path), and returns the `k` database items with the
largest inner product with each query (cosine similarity, since rows are
normalised). Concrete indexes implement a few private hooks; ids, paths,
metadata, validation, padding and the on-disk manifest live here.
"""

import abc
import copy
import logging
import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import ClassVar

import numpy as np

from keras_rmac.search import storage

logger = logging.getLogger(__name__)

# Rows whose norm is farther than this from 1 are refused by `add`.
NORM_TOLERANCE = 1e-3

_REGISTRY: dict[str, type["Index"]] = {}


def _as_float_matrix(
    values: Any, dimension: int, what: str, allow_vector: bool
) -> np.ndarray:
    array = np.asarray(values)
    if allow_vector and array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dimension:
        raise ValueError(
            f"`{what}` must have shape (N, {dimension}), got {array.shape}."
            " Check that the descriptors come from the model this index "
            "was built for."
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"`{what}` must be a float array, got dtype {array.dtype}."
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    _squared_norms(array, what)
    return array


def _squared_norms(array: np.ndarray, what: str) -> np.ndarray:
    """Row squared norms (no N x D temporary); raises on NaN/infinity."""
    squared = np.einsum("ij,ij->i", array, array)
    bad = np.nonzero(~np.isfinite(squared))[0]
    if bad.size:
        raise ValueError(
            f"`{what}` row {bad[0]} holds NaN, infinity or values too large "
            "for float32 arithmetic."
        )
    return squared


class Index(abc.ABC):
    """Abstract inner-product search index over L2-normalised descriptors.

    Subclasses: `ExactIndex` (brute force, exact) and `ScannIndex`
    (ScaNN tree + product quantisation). Every index:

    - `add(descriptors, ids=None, paths=None)` appends float32 rows
      of unit norm with unique non-negative int64 ids (default: consecutive
      from `len(index)`) and optional paths (all or none of the rows);
    - `search(queries, k)` returns `(ids, scores)`, both of shape
      `(Q, k)`, best first (largest inner product). When fewer than `k`
      items can be returned (a small index, or an approximate search that
      found fewer candidates), the row is padded with id `-1` and score
      `-inf`;
    - `save(directory)` writes a versioned directory atomically and
      `Index.load(directory, expect=...)` reads it back (see
      `keras_rmac.search.storage`); `load_index(directory)` dispatches on
      the saved type;
    - `operating_point` is the recall an approximate index measured at
      build time (`ScannIndex`: recall@k on sample rows, own row excluded, the
      sample size and the queries per second), None for exact search or
      an index built without a measurement;
    - `metadata` is a JSON-serialisable dict stored in the manifest, e.g.
      the descriptor model's configuration and weight fingerprint, which
      `load(..., expect={...})` can then check;
    - `get_config()` / `from_config(config)` give the constructor arguments
      of an equivalent empty index, and `kind` its `make_index` kind.

    Args:
        dimension: int. Descriptor dimension D.
        metadata: dict or None. Initial `metadata`. Defaults to None.
    """

    index_type: ClassVar[str] = ""
    # Keyword options `search` accepts besides `queries` and `k`.
    search_options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.index_type:
            _REGISTRY[cls.index_type] = cls

    def __init__(
        self, dimension: int, metadata: Mapping[str, Any] | None = None
    ):
        if (
            isinstance(dimension, bool)
            or not isinstance(dimension, (int, np.integer))
            or dimension < 1
        ):
            raise ValueError(
                f"`dimension` must be a positive int. Received: "
                f"dimension={dimension!r}"
            )
        self.dimension = int(dimension)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._ids = np.empty((0,), np.int64)
        self._paths: list[str] | None = None
        self._row_lookup: tuple[np.ndarray, np.ndarray] | None = None
        # The measured recall of an approximate index (see ScannIndex).
        self.operating_point = None

    # ------------------------------------------------------------------
    # Public API.

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} dimension={self.dimension} "
            f"count={len(self)}>"
        )

    @property
    def kind(self) -> str:
        """The `make_index` kind of this index (`"exact"`, `"fast"` ...)."""
        return self.index_type

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments of an equivalent empty index.

        A JSON-serialisable dict (given JSON-serialisable `metadata`):
        `dimension`, the index type's own options and a copy of `metadata`.
        `type(index).from_config(config)` and
        `make_index(index.kind, **config)` both make an empty index with
        the same settings; the vectors are not part of it.

        Example:

        >>> from keras_rmac.search import ExactIndex, make_index
        >>> index = ExactIndex(4, metadata={"model": "m"})
        >>> config = index.get_config()
        >>> config
        {'dimension': 4, 'block_bytes': 67108864, 'metadata': {'model': 'm'}}
        >>> ExactIndex.from_config(config)
        <ExactIndex dimension=4 count=0>
        >>> make_index(index.kind, **config).get_config() == config
        True
        """
        return {
            "dimension": self.dimension,
            **self._options_config(),
            "metadata": copy.deepcopy(self.metadata),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Index":
        """A new, empty index from `get_config()`'s dict.

        Args:
            config: dict. The constructor's keyword arguments.

        Returns:
            An instance of the class it is called on.
        """
        if cls is Index or not cls.index_type:
            raise TypeError(
                "Call `from_config` on the index class (e.g. "
                "`ScannIndex.from_config`), or use "
                "`make_index(kind, **config)`."
            )
        return cls(**config)

    @property
    def ids(self) -> np.ndarray:
        """int64 array of the ids, in insertion (row) order; read-only."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def paths(self) -> list[str] | None:
        """The paths given to `add`, in row order, or None if none were."""
        return None if self._paths is None else list(self._paths)

    def add(
        self,
        descriptors: np.ndarray,
        ids: np.ndarray | Sequence[int] | None = None,
        paths: Sequence[str] | None = None,
    ) -> None:
        """Appends descriptors to the index.

        A float32 C-contiguous array is kept by reference, not copied (a
        1M x 512 database is 2 GB): do not modify it afterwards.

        Args:
            descriptors: float array of shape `(N, D)`, rows L2-normalised
                (norm within 1e-3 of 1). Converted to float32.
            ids: int array-like of shape `(N,)` or None. Unique,
                non-negative, not already in the index (`-1` marks padding
                in search results). Defaults to `len(self) .. len(self)+N-1`.
            paths: sequence of `N` str or None. Stored alongside; an index
                has paths for all rows or for none. Defaults to None.

        Raises:
            ValueError: wrong shape, dtype, norm, duplicate or negative ids,
                or paths given for some batches only.
        """
        x = _as_float_matrix(
            descriptors, self.dimension, "descriptors", allow_vector=False
        )
        norms = np.sqrt(_squared_norms(x, "descriptors"))
        bad = np.nonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)[0]
        if bad.size:
            raise ValueError(
                f"`descriptors` rows must be L2-normalised; row {bad[0]} has "
                f"norm {norms[bad[0]]:.6g} ({bad.size} such rows). Normalise "
                "with `x / np.linalg.norm(x, axis=1, keepdims=True)`."
            )
        new_ids = self._check_new_ids(ids, len(x))
        new_paths = self._check_new_paths(paths, len(x))
        self._check_can_add()
        if len(x) == 0:
            return
        self._add_vectors(x)
        self._ids = np.concatenate([self._ids, new_ids])
        self._row_lookup = None
        if new_paths is not None:
            self._paths = (self._paths or []) + new_paths

    def search(
        self, queries: np.ndarray, k: int, **options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns the `k` best database items for each query.

        Args:
            queries: float array of shape `(Q, D)` (or `(D,)` for one
                query). Not required to be normalised.
            k: int >= 1. Number of results per query.
            **options: the index type's search options (`search_options`;
                e.g. `leaves_to_search` of `ScannIndex.search`).

        Returns:
            A tuple `(ids, scores)`: int64 and float32 arrays of shape
            `(Q, k)`, best first by inner product. Missing results (fewer
            than `k` items, or fewer candidates found by an approximate
            index) are id `-1` with score `-inf`, at the end of the row.
        """
        q = _as_float_matrix(queries, self.dimension, "queries", True)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"`k` must be an int >= 1. Received: k={k!r}")
        if k < 1:
            raise ValueError(f"`k` must be >= 1. Received: k={k}")
        k = int(k)
        unknown = sorted(set(options) - set(self.search_options))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.search takes no option "
                f"{', '.join(unknown)}; its options: "
                f"{', '.join(self.search_options) or 'none'}."
            )
        ids = np.full((len(q), k), -1, np.int64)
        scores = np.full((len(q), k), -np.inf, np.float32)
        if len(self) == 0 or len(q) == 0:
            return ids, scores
        kk = min(k, len(self))
        rows, found = self._search_rows(q, kk, **options)
        valid = rows >= 0
        ids[:, :kk] = np.where(valid, self._ids[np.where(valid, rows, 0)], -1)
        scores[:, :kk] = np.where(valid, found, -np.inf)
        return ids, scores

    def rows_of(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Row positions (insertion order) of the given ids; -1 if absent.

        Args:
            ids: int array-like of any shape. `-1` maps to `-1`.

        Returns:
            int64 array of the same shape.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if self._row_lookup is None:
            order = np.argsort(self._ids, kind="stable")
            self._row_lookup = (self._ids[order], order)
        sorted_ids, order = self._row_lookup
        if len(sorted_ids) == 0:
            return np.full(ids.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(order) - 1)
        hit = sorted_ids[pos] == ids
        return np.where(hit, order[pos], -1).astype(np.int64)

    def get_vectors(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """The stored float32 descriptors of `ids` (shape `ids.shape + (D,)`).

        Ids equal to `-1` (padding) give zero vectors.

        Raises:
            KeyError: an id is not in the index.
            ValueError: the index keeps no float descriptors (compact
                `ScannIndex`); pass the descriptors to the caller instead.
        """
        ids = np.asarray(ids, dtype=np.int64)
        rows = self.rows_of(ids)
        missing = (rows < 0) & (ids != -1)
        if missing.any():
            raise KeyError(f"id {int(ids[missing][0])} is not in the index.")
        flat = rows.reshape(-1)
        out = np.zeros((flat.size, self.dimension), np.float32)
        valid = flat >= 0
        if valid.any():
            out[valid] = self._vectors_at_rows(flat[valid])
        return out.reshape(ids.shape + (self.dimension,))

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the index to `directory`, replacing it atomically.

        The index is written into a temporary sibling directory which then
        replaces `directory` (an existing index there is renamed aside and
        deleted only once the new one is in place), so an interruption
        never leaves a half-written index.

        Args:
            directory: path. Created if absent; if it exists it must be an
                index directory or empty.
        """
        storage.check_json_metadata(self.metadata)
        self._prepare_save()

        def write(tmp: str) -> None:
            files = storage.save_ids_and_paths(tmp, self._ids, self._paths)
            params, own_files = self._write_payload(tmp)
            files.update(own_files)
            manifest = storage.make_manifest(
                index_type=self.index_type,
                dimension=self.dimension,
                count=len(self),
                params=params,
                metadata=self.metadata,
                files=files,
            )
            # The manifest is written last: it marks a complete index.
            storage.write_json(os.path.join(tmp, storage.MANIFEST), manifest)

        storage.atomic_write_directory(os.fspath(directory), write)
        logger.info(
            "Saved %s with %d vectors to %s",
            self.index_type,
            len(self),
            directory,
        )

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        expect: Mapping[str, Any] | None = None,
    ) -> "Index":
        """Reads an index written by `save`.

        Args:
            directory: path of the index directory.
            expect: dict or None. What the caller requires of the index:
                `dimension`, `format_version`, `index_type`, or any metadata
                key such as `"weights_fingerprint"`. A different value
                raises `IndexMismatchError` naming both. Defaults to None.

        Returns:
            The index (of this class, or of the saved type when called as
            `Index.load`).

        Raises:
            FileNotFoundError: no index at `directory`.
            IndexMismatchError: another format version, or `expect` unmet,
                or (called on a subclass) another index type.
        """
        directory = os.fspath(directory)
        manifest = storage.read_manifest(directory)
        storage.check_expectations(directory, manifest, expect)
        index_type = manifest["index_type"]
        target = _REGISTRY.get(index_type)
        if target is None:
            raise storage.IndexMismatchError(
                f"Index {directory} has unknown index_type={index_type!r}; "
                f"this keras_rmac knows {sorted(_REGISTRY)}."
            )
        if cls is not Index and not issubclass(target, cls):
            raise storage.IndexMismatchError(
                f"Index {directory} is a {index_type!r} index, not "
                f"{cls.index_type!r}. Use `load_index(directory)` or "
                f"{target.__name__}.load."
            )
        ids, paths = storage.load_ids_and_paths(directory, manifest)
        index = target._from_saved(directory, manifest)
        index.metadata = dict(manifest["metadata"])
        index._ids = ids
        index._paths = paths
        return index

    # ------------------------------------------------------------------
    # Hooks for subclasses.

    def _options_config(self) -> dict[str, Any]:
        """The constructor options besides `dimension` and `metadata`."""
        return {}

    def _check_can_add(self) -> None:
        """Raises if the index cannot take more vectors in its state."""

    @abc.abstractmethod
    def _add_vectors(self, x: np.ndarray) -> None:
        """Stores validated float32 rows (ids are handled by the base)."""

    @abc.abstractmethod
    def _search_rows(
        self, q: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` rows (int64, -1 if missing) and scores, both (Q, k)."""

    def _vectors_at_rows(self, rows: np.ndarray) -> np.ndarray:
        raise ValueError(
            f"{type(self).__name__} keeps no float descriptors; pass them "
            "explicitly (e.g. `database=` in keras_rmac.search.expansion)."
        )

    def _prepare_save(self) -> None:
        """Called before writing (e.g. to build a pending index)."""

    @abc.abstractmethod
    def _write_payload(
        self, directory: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Writes own files; returns the (params, files) manifest parts."""

    @classmethod
    @abc.abstractmethod
    def _from_saved(
        cls, directory: str, manifest: Mapping[str, Any]
    ) -> "Index":
        """Rebuilds an instance from type-specific files (no ids/metadata)."""

    # ------------------------------------------------------------------
    # Validation helpers.

    def _check_new_ids(self, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            start = int(self._ids.max()) + 1 if len(self._ids) else 0
            return np.arange(start, start + n, dtype=np.int64)
        raw = np.asarray(ids)
        if raw.shape != (n,):
            raise ValueError(
                f"`ids` must have shape ({n},) to match the descriptors, got "
                f"{raw.shape}."
            )
        if n and not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(
                f"`ids` must be integers (int64), got dtype {raw.dtype}. "
                "Keep string keys in `paths` or map them to ints."
            )
        new = raw.astype(np.int64)
        if n and new.min() < 0:
            raise ValueError(
                f"`ids` must be >= 0 (-1 marks missing results); got "
                f"{int(new.min())}."
            )
        uniq, counts = np.unique(new, return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"`ids` holds duplicates, e.g. {int(uniq[counts > 1][0])}."
            )
        if len(self._ids):
            present = self.rows_of(new) >= 0
            if present.any():
                raise ValueError(
                    f"id {int(new[present][0])} is already in the index "
                    f"({int(present.sum())} of the new ids are)."
                )
        return new

    def _check_new_paths(self, paths: Any, n: int) -> list[str] | None:
        if paths is None:
            if self._paths is not None and n:
                raise ValueError(
                    "This index stores a path per vector: pass `paths` to "
                    "`add` as well."
                )
            return None
        if isinstance(paths, (str, bytes)):
            raise ValueError("`paths` must be a sequence of str, not one str.")
        paths = [os.fspath(p) for p in paths]
        if len(paths) != n:
            raise ValueError(
                f"`paths` has {len(paths)} entries for {n} descriptors."
            )
        if any(not isinstance(p, str) for p in paths):
            raise ValueError("`paths` must hold str (or os.PathLike).")
        if len(self) and self._paths is None:
            raise ValueError(
                "This index was built without paths: add without `paths`, "
                "or rebuild it with paths for every vector."
            )
        return paths


def load_index(
    directory: str | os.PathLike, expect: Mapping[str, Any] | None = None
) -> Index:
    """Loads any saved index, dispatching on the manifest's `index_type`.

    Args:
        directory: path of the index directory.
        expect: dict or None. See `Index.load`. Defaults to None.

    Returns:
        An `ExactIndex` or `ScannIndex`.

    Example:

    >>> import numpy as np, tempfile, os
    >>> from keras_rmac.search import ExactIndex, load_index
    >>> x = np.eye(3, dtype=np.float32)
    >>> index = ExactIndex(3)
    >>> index.add(x, ids=[10, 11, 12])
    >>> path = os.path.join(tempfile.mkdtemp(), "idx")
    >>> index.save(path)
    >>> load_index(path).search(x[:1], k=2)[0]
    array([[10, 11]])
    """
    # Importing the package registers every index type.
    import keras_rmac.search  # noqa: F401

    return Index.load(directory, expect=expect)
