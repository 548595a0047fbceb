"""A search index split into shards: one index per shard, merged top-k.

A collection too large to index in one piece (or indexed by a pipeline
that builds one index per part, `keras_rmac.beam`) is held as `S` indexes
of the same kind over disjoint rows. A query is searched in every shard
and the `S` lists of `k` results are merged by score (ties to the earlier
row, as `ExactIndex` breaks them), so a sharded exact index returns what
one `ExactIndex` over the same rows returns. The shards are searched in
concurrent threads (the gain needs ScaNN to release the GIL: unmeasured).

ScaNN shards built here are tuned together: the recall target (each
shard's `target_recall`, at `recall_k`) is met by the merged top-k, not
by each shard on its own (a shard's own top-k is not what the merged
list needs from it). `build` measures the merged results of a sample of
all rows against their exact neighbours for each common setting of
leaves searched and re-order depth, keeps the fastest reaching the
target as `operating_point` (saved in the manifest, printed by
`keras-rmac index` as for a `ScannIndex`), and searches every shard with
it unless the search is given its own knobs.

Saved layout (besides the manifest, ids and paths of
`keras_rmac.search.storage`): `shards/00000/`, `shards/00001/` ... each a
complete saved index. `load` reads only the manifest and the ids; each
shard is opened on its first search, with the parent's dimension and
model fingerprint required of it (`IndexMismatchError` otherwise).
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_rmac.fileio import link_or_copy
from keras_rmac.search import scann_policy
from keras_rmac.search import scann_tuning
from keras_rmac.search import storage
from keras_rmac.search.base import Index
from keras_rmac.search.base import load_index
from keras_rmac.search.scann_builds import rebuild_num_leaves
from keras_rmac.search.scann_tuning import OperatingPoint

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"

# The largest share of each shard's leaves the joint tuning searches (one
# `ScannIndex` tunes up to `scann_tuning.MAX_SEARCHED_SHARE`).
SHARD_SEARCHED_SHARE = 0.5

# Metadata keys naming the descriptor model: every shard must carry the
# parent's value (a shard described by another model is refused).
FINGERPRINT_KEYS = ("fingerprint", "weights_fingerprint")


def shard_name(number: int) -> str:
    """The folder name of shard `number` (`00003`)."""
    return f"{int(number):05d}"


class ShardedIndex(Index):
    """Rows split across `num_shards` indexes of one kind; results merged.

    Rows added before the first `search` or `save` are split into
    `num_shards` contiguous parts of (nearly) equal size; each part gets
    its own index (`make_index(shard_kind, dimension, **shard_options)`), the
    parts are built in parallel threads on the first search or save.
    Adding after that is refused: make a new index. ScaNN shards are
    tuned together at build (`operating_point`: the merged top-k's
    recall, see the module docstring). `from_shards` assembles shards
    built elsewhere (e.g. one per worker of a Beam pipeline), which
    `tune(x)` then tunes together. A loaded index opens each shard on
    first use.

    Args:
        dimension: int. Descriptor dimension D.
        shard_kind: str. The kind of each shard (`"exact"`, `"fast"` or
            `"compact"`, see `make_index`). Defaults to `"fast"`.
        num_shards: int >= 1. Number of shards. Defaults to 4.
        shard_options: dict or None. Options of each shard's index (e.g.
            `{"bytes_per_vector": 64}`). Defaults to None.
        build_threads: int >= 0. Shards built at once; 0 for one per
            shard. Defaults to 0.
        metadata: dict or None. Stored in the manifest and copied into
            every shard. Defaults to None.

    Example:

    >>> import numpy as np
    >>> x = np.eye(4, dtype=np.float32)
    >>> index = ShardedIndex(4, shard_kind="exact", num_shards=2)
    >>> index.add(x, ids=[10, 11, 12, 13])
    >>> index.search(x[2:3] + x[3:4] * 0.5, k=3)[0]
    array([[12, 13, 10]])
    >>> [len(shard) for shard in index.shards]
    [2, 2]
    """

    index_type = "sharded"

    def __init__(  # noqa: PLR0913 - public constructor, one keyword per knob
        self,
        dimension: int,
        shard_kind: str = "fast",
        num_shards: int = 4,
        shard_options: Mapping[str, Any] | None = None,
        build_threads: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ):
        from keras_rmac.search.factory import KINDS

        super().__init__(dimension, metadata)
        if shard_kind not in KINDS:
            raise ValueError(
                f"`shard_kind` must be one of {KINDS}. Received: "
                f"shard_kind={shard_kind!r}"
            )
        for name, value, low in (
            ("num_shards", num_shards, 1),
            ("build_threads", build_threads, 0),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < low
            ):
                raise ValueError(
                    f"`{name}` must be an int >= {low}. Received: "
                    f"{name}={value!r}"
                )
        self.shard_kind = shard_kind
        self.num_shards = int(num_shards)
        self.shard_options = dict(shard_options or {})
        self.build_threads = int(build_threads)
        probe = self._make_shard()  # Fails now on bad shard options.
        self.search_options = probe.search_options
        # The merged recall target (ScaNN shards), None for exact ones.
        self.target_recall = getattr(probe, "target_recall", None)
        self.recall_k = getattr(probe, "recall_k", None)
        self.operating_point: OperatingPoint | None = None
        self._chunks: list[np.ndarray] = []
        # Per shard: the index (built or loaded) or None (on disk, lazy).
        self._shards: list[Index | None] = []
        self._shard_dirs: list[str | None] = []
        self._offsets = np.zeros((1,), np.int64)  # Row starts of shards.

    # ------------------------------------------------------------------
    # Construction.

    @property
    def kind(self) -> str:
        """`"sharded"`: `make_index("sharded", **get_config())`."""
        return self.index_type

    def _options_config(self) -> dict[str, Any]:
        return {
            "shard_kind": self.shard_kind,
            "num_shards": self.num_shards,
            "shard_options": copy.deepcopy(self.shard_options),
            "build_threads": self.build_threads,
        }

    def _make_shard(
        self, rows: int | None = None, leaves_factor: int = 0, total=None
    ) -> Index:
        """A new shard; with `rows` and a recall target, one with the tree
        of `scann_policy.shard_num_leaves(rows, total)` (times
        `leaves_factor` if > 0, none below `MIN_TREE_SIZE`) and no tuning
        of its own (`build` tunes the merged results)."""
        from keras_rmac.search.factory import make_index

        options = copy.deepcopy(self.shard_options)
        if rows is not None and getattr(self, "target_recall", None):
            leaves = scann_policy.shard_num_leaves(
                rows, total or rows, self.shard_kind, options.get("num_leaves")
            )
            if leaves_factor:
                leaves = rebuild_num_leaves(rows, leaves, leaves_factor)
            options["num_leaves"] = leaves
            options["target_recall"] = None
        return make_index(
            self.shard_kind,
            self.dimension,
            **options,
            metadata=copy.deepcopy(self.metadata),
        )

    @classmethod
    def from_shards(
        cls,
        shards: Sequence[Index | str | os.PathLike],
        metadata: Mapping[str, Any] | None = None,
        shard_options: Mapping[str, Any] | None = None,
    ) -> "ShardedIndex":
        """A sharded index made of indexes built elsewhere.

        Args:
            shards: indexes, or directories of saved indexes (opened on
                first search), all of one kind and dimension, with
                disjoint ids, and all with paths or all without.
            metadata: dict or None. The parent's metadata; None takes the
                first shard's. Every shard must carry the same model
                fingerprint (`FINGERPRINT_KEYS`) as the parent.
            shard_options: dict or None. Updates the first shard's options
                as the index's `shard_options`, e.g. the `target_recall` of
                `tune` for ScaNN shards built without one. Defaults to None.

        Returns:
            A `ShardedIndex` (saving it copies, or hard-links, the shards).

        Raises:
            ValueError: no shards, mixed kinds or dimensions, duplicate
                ids, or paths on some shards only.
            IndexMismatchError: a shard's fingerprint differs.
        """
        if not shards:
            raise ValueError("`shards` is empty: give at least one index.")
        manifests, ids, paths, dirs = [], [], [], []
        for shard in shards:
            if isinstance(shard, Index):
                manifests.append(
                    {
                        "index_type": shard.index_type,
                        "dimension": shard.dimension,
                        "metadata": shard.metadata,
                        "params": shard.get_config(),
                        "kind": shard.kind,
                    }
                )
                ids.append(np.asarray(shard.ids))
                paths.append(shard.paths)
                dirs.append(None)
            else:
                directory = os.path.abspath(os.fspath(shard))
                manifest = storage.read_manifest(directory)
                manifest = dict(manifest, kind=_saved_kind(manifest))
                manifests.append(manifest)
                i, p = storage.load_ids_and_paths(directory, manifest)
                ids.append(i)
                paths.append(p)
                dirs.append(directory)
        first = manifests[0]
        for m in manifests[1:]:
            if (m["kind"], m["dimension"]) != (
                first["kind"],
                first["dimension"],
            ):
                raise ValueError(
                    "Shards must share one kind and dimension: got "
                    f"{first['kind']} x {first['dimension']} and "
                    f"{m['kind']} x {m['dimension']}."
                )
        if any(p is None for p in paths) and any(p is not None for p in paths):
            raise ValueError("Shards must all have paths, or none.")
        meta = dict(first["metadata"] if metadata is None else metadata)
        options = {
            k: v
            for k, v in first.get("params", {}).items()
            if k
            not in ("dimension", "metadata", "mode", "built", "operating_point")
        }
        options.update(shard_options or {})
        index = cls(
            first["dimension"],
            shard_kind=first["kind"],
            num_shards=len(manifests),
            shard_options=options,
            metadata=meta,
        )
        for number, m in enumerate(manifests):
            index._check_shard_metadata(number, m["metadata"])
        all_ids = np.concatenate(ids) if ids else np.empty((0,), np.int64)
        index._check_new_ids(all_ids, len(all_ids))  # Duplicates refused.
        index._ids = all_ids.astype(np.int64)
        index._paths = (
            None if paths[0] is None else [x for p in paths for x in p]
        )
        index._shards = [s if isinstance(s, Index) else None for s in shards]
        index._shard_dirs = dirs
        index._offsets = np.cumsum([0] + [len(i) for i in ids])
        return index

    @property
    def shards(self) -> list[Index]:
        """Every shard, built or opened (this builds or loads them all)."""
        self.build()
        return [self._shard(i) for i in range(len(self._shards))]

    @property
    def is_built(self) -> bool:
        return bool(self._shards) or (len(self) == 0 and not self._chunks)

    def _check_can_add(self):
        if self._shards:
            raise RuntimeError(
                "This ShardedIndex is already split into shards; make a new "
                "one with every descriptor (or use `from_shards`)."
            )

    def _add_vectors(self, x):
        self._chunks.append(x)

    def build(self) -> None:
        """Splits the added rows into shards and builds them (in threads).

        Called by the first `search` or `save`; does nothing afterwards.
        """
        if self._shards or len(self) == 0:
            return
        x = (
            np.concatenate(self._chunks)
            if len(self._chunks) > 1
            else (self._chunks[0])
        )
        bounds = np.linspace(0, len(x), self.num_shards + 1).astype(np.int64)
        bounds = np.unique(bounds)  # Fewer rows than shards: fewer shards.
        self._build_shards(x, bounds)
        self._chunks = []
        if self.target_recall is not None:
            self._measure(x, bounds)

    def tune(self, x: np.ndarray) -> OperatingPoint | None:
        """Measures the merged operating point of shards built elsewhere.

        `from_shards` keeps each shard's own setting; this measures the
        common setting whose merged top-`recall_k` reaches the shards'
        `target_recall` (as `build` does for shards built here, without
        its rebuild), saved with the index and used by `search`.

        Args:
            x: float32 `(N, D)`: every row of the index, in row order
                (the shards' rows one after another).

        Returns:
            The `OperatingPoint` (also `operating_point`), or None when
            the shards have no recall target (exact shards).
        """
        x = np.asarray(x, np.float32)
        if x.shape != (len(self), self.dimension):
            raise ValueError(
                f"`x` must hold the index's {len(self)} rows of dimension "
                f"{self.dimension}. Received: shape {x.shape}"
            )
        if self.target_recall is not None:
            self._measure(x)
        return self.operating_point

    def _measure(self, x, bounds=None) -> None:
        """Sets `operating_point` (rebuilding once with more leaves when
        the target is missed and `bounds` allows a rebuild here)."""
        if len(x) < 2:
            return
        start = time.perf_counter()
        rows, truth = scann_tuning.draw_sample(x, self.recall_k)
        sample = (rows, truth, x[rows])
        point = self._tune(sample)
        if (
            not point.reached
            and bounds is not None
            and self.shard_kind == "fast"
            and "num_leaves" not in self.shard_options
        ):
            # As a ScannIndex: more, smaller leaves (no tree when small),
            # once.
            self._build_shards(x, bounds, scann_tuning.REBUILD_LEAVES_FACTOR)
            point = self._tune(sample)
        if not point.reached:
            logger.warning(
                "ShardedIndex: recall target %g of the merged results not "
                "reached (%s); fewer shards or more leaves "
                "(`shard_options={'num_leaves': ...}`) raise it.",
                self.target_recall,
                point.describe(),
            )
        self.operating_point = dataclasses.replace(
            point, seconds=round(time.perf_counter() - start, 3)
        )
        logger.info("Operating point: %s", self.operating_point.describe())

    def _build_shards(self, x, bounds, leaves_factor: int = 0) -> None:
        parts = list(zip(bounds[:-1], bounds[1:]))

        def make(part):
            start, stop = part
            shard = self._make_shard(
                int(stop - start), leaves_factor, total=int(bounds[-1])
            )
            shard.add(
                x[start:stop],
                ids=self._ids[start:stop],
                paths=None if self._paths is None else self._paths[start:stop],
            )
            if hasattr(shard, "build"):
                shard.build()
            return shard

        threads = self.build_threads or len(parts)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            self._shards = list(pool.map(make, parts))
        self._shard_dirs = [None] * len(self._shards)
        self._offsets = bounds

    def _tune(self, sample) -> OperatingPoint:
        """The fastest common shard setting whose merged top-`recall_k`
        reaches `target_recall` on `sample` (`(rows, truth, queries)`,
        own rows excluded), as `ScannIndex` tunes itself."""
        rows, truth, queries = sample
        k = truth.shape[1]
        built = []
        for number in range(len(self._shards)):
            shard = self._shard(number)
            shard.build()  # A shard given unbuilt to `from_shards`.
            built.append(shard.built_params)
        # Settings common to all shards: the largest shard's grid (the
        # others clip leaves to their own tree).
        first = max(built, key=lambda b: b["num_leaves"])
        options = self.shard_options
        requested = options.get("num_leaves_to_search")
        leaves = scann_tuning.tuning_leaves_grid(first["num_leaves"], requested)
        if requested is None and first["num_leaves"]:
            # Up to `SHARD_SEARCHED_SHARE` of each shard's leaves: a shard's
            # tree, trained on 1/S of each neighbourhood, places it less
            # well than one tree over every row (200k x 512 clustered
            # rows: recall@10 0.946 at 1/4 of each shard's leaves, where
            # one index reaches 0.955).
            cap = max(1, int(SHARD_SEARCHED_SHARE * first["num_leaves"]))
            more = {min(cap, int(leaves[-1] * f)) for f in (1.5, 2, 3, 4)}
            leaves = sorted(set(leaves) | more)
        reorders = scann_tuning.tuning_reorder_grid(
            scann_policy.ScannParams(**first),
            k,
            options.get("reorder_num_neighbors"),
        )

        def run(leaves_to_search, reorder):
            found, _ = self._merged_rows(
                queries,
                k + 1,
                {
                    "leaves_to_search": leaves_to_search or None,
                    "reorder_num_neighbors": reorder,
                },
            )
            return scann_tuning.drop_own_rows(found, rows, k)

        return scann_tuning.tune(
            run, truth, leaves, reorders, self.target_recall
        )

    def _check_shard_metadata(self, number: int, metadata) -> None:
        for key in FINGERPRINT_KEYS:
            if key in self.metadata and metadata.get(key) != self.metadata[key]:
                raise storage.IndexMismatchError(
                    f"Shard {number} has metadata[{key!r}] = "
                    f"{metadata.get(key)!r}, but the sharded index has "
                    f"{self.metadata[key]!r}: its descriptors come from "
                    "another model. Rebuild the index."
                )

    def _shard(self, number: int) -> Index:
        shard = self._shards[number]
        if shard is None:
            directory = self._shard_dirs[number]
            shard = load_index(directory, expect={"dimension": self.dimension})
            self._check_shard_metadata(number, shard.metadata)
            want = self._offsets[number + 1] - self._offsets[number]
            if len(shard) != want:
                raise storage.IndexMismatchError(
                    f"Shard {directory} holds {len(shard)} vectors, the "
                    f"sharded index expects {want}: it is damaged; rebuild "
                    "it."
                )
            self._shards[number] = shard
        return shard

    @property
    def loaded_shards(self) -> int:
        """How many shards are in memory (lazily loaded ones count once
        opened)."""
        return sum(s is not None for s in self._shards)

    # ------------------------------------------------------------------
    # Searching.

    def _search_rows(self, q, k, **options):
        self.build()
        options = {k: v for k, v in options.items() if v is not None}
        point = self.operating_point
        if point is not None:
            # The merged operating point (or `setting_for(recall)`, as a
            # ScannIndex) for the knobs the caller did not fix.
            recall = options.pop("recall", None)
            leaves, reorder = (
                point.setting_for(recall)
                if recall is not None
                else (point.num_leaves_to_search, point.reorder_num_neighbors)
            )
            if leaves:
                options.setdefault("leaves_to_search", int(leaves))
            if reorder:
                options.setdefault("reorder_num_neighbors", int(reorder))
        return self._merged_rows(q, k, options)

    def _merged_rows(self, q, k, options):
        """Every shard's top-`k` (concurrently), merged by score."""

        def one(number):
            return self._shard(number).search(q, k, **options)

        count = len(self._shards)
        if count == 1:
            results = [one(0)]
        else:
            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                results = list(pool.map(one, range(count)))
        ids = np.concatenate([r[0] for r in results], axis=1)
        scores = np.concatenate([r[1] for r in results], axis=1)
        rows = np.where(ids >= 0, self.rows_of(ids), -1)
        # Best score first; ties to the earlier row; padding (-1) last.
        tie = np.where(rows >= 0, rows, np.iinfo(np.int64).max)
        order = np.lexsort((tie, -scores), axis=1)[:, :k]
        return (
            np.take_along_axis(rows, order, axis=1),
            np.take_along_axis(scores, order, axis=1),
        )

    def _vectors_at_rows(self, rows):
        self.build()
        out = np.zeros((len(rows), self.dimension), np.float32)
        which = np.searchsorted(self._offsets, rows, side="right") - 1
        for number in np.unique(which):
            mask = which == number
            out[mask] = self._shard(int(number)).get_vectors(
                self._ids[rows[mask]]
            )
        return out

    # ------------------------------------------------------------------
    # Saving.

    def _prepare_save(self):
        self.build()

    def _write_payload(self, directory):
        names = []
        for number, shard in enumerate(self._shards):
            name = shard_name(number)
            target = os.path.join(directory, SHARDS_DIR, name)
            if shard is not None:
                shard.metadata = {**shard.metadata, **self.metadata}
                shard.save(target)
            else:
                shutil.copytree(
                    self._shard_dirs[number], target, copy_function=link_or_copy
                )
            names.append(f"{SHARDS_DIR}/{name}")
        point = self.operating_point
        params = {
            **self._options_config(),
            "shard_counts": np.diff(self._offsets).astype(int).tolist(),
            "operating_point": point.to_dict() if point else None,
        }
        return params, {"shards": names}

    @classmethod
    def _from_saved(cls, directory, manifest):
        params = dict(manifest["params"])
        counts = params.pop("shard_counts")
        point = OperatingPoint.from_dict(params.pop("operating_point", None))
        index = cls(manifest["dimension"], **params)
        index.operating_point = point
        index.metadata = dict(manifest["metadata"])
        names = manifest["files"]["shards"]
        index._shards = [None] * len(names)
        index._shard_dirs = [os.path.join(directory, n) for n in names]
        index._offsets = np.cumsum([0] + list(counts)).astype(np.int64)
        if int(index._offsets[-1]) != int(manifest["count"]):
            raise storage.IndexMismatchError(
                f"{directory}: the shards hold {int(index._offsets[-1])} "
                f"vectors, the manifest {manifest['count']}; the index is "
                "damaged: rebuild it."
            )
        return index


def _saved_kind(manifest: Mapping[str, Any]) -> str:
    """The `make_index` kind of a saved index's manifest."""
    if manifest["index_type"] == "scann":
        return manifest["params"].get("mode", "fast")
    return manifest["index_type"]
