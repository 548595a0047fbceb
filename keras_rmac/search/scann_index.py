"""Approximate inner-product search with ScaNN (tree + PQ + re-ordering).

ScaNN (Guo et al., ICML 2020, arXiv 1908.10396) partitions the database
with a k-means tree, scores the candidates of the leaves nearest to the
query with asymmetric hashing (product quantisation of the residuals, 4-bit
codes looked up with SIMD "LUT16" tables, trained with the anisotropic
loss), and optionally re-scores the best candidates exactly.

Two modes:

- `mode="fast"`: tree + 4-bit PQ codes (2 dimensions per block by default,
  i.e. D/4 bytes) + exact re-ordering of the best `reorder_num_neighbors`
  candidates against the float32 (or int8) descriptors kept in memory.
  High recall; the float descriptors cost 4*D bytes per vector (twice in
  memory right after a build: ScaNN's re-ordering copy and the one this
  class keeps for rebuilds and `get_vectors`; once after `load`, where ours
  is memory-mapped from ScaNN's file).
- `mode="compact"`: tree + PQ codes only, `bytes_per_vector` bytes each
  (64 or 128 typically), no re-ordering. Scores are PQ estimates. By
  default the descriptors are first centred and projected on their top
  `4 * bytes_per_vector` principal directions, randomly rotated
  (`keras_rmac.search.projection`; one index-wide matrix and mean, saved
  as `.npy`), and coded with 8-bit codes (256 centres per block of 4
  dimensions); fewer than 256 vectors use 4-bit codes and fewer than 16
  keep their lossless projection on at most `bytes_per_vector // 4`
  dimensions as float32, since no codebook can be trained. Once the
  searcher is built the float descriptors are dropped: neither this object
  nor the ScaNN searcher nor the saved directory keeps a float copy (the
  saved directory holds the codes, packed two per byte, the codebooks, the
  tree centres and one int32 leaf id per vector).

Building: ScaNN trains its tree and codebooks on the data, so the searcher
is built lazily from all the vectors added so far, on the first `search`
or `save` (or an explicit `build()`). Adding after a build:

- fast mode: allowed; the float descriptors are kept, and the next search
  rebuilds the whole searcher (ScaNN has no cheap incremental add for every
  configuration), so add everything first when you can;
- compact mode: refused (`RuntimeError`), since the floats needed to
  retrain are gone; build a new index from all the descriptors instead.

Small collections: no tree below `MIN_TREE_SIZE` (20,000) vectors, or in
fast mode with a recall target `MIN_TARGET_TREE_SIZE` (1,000); a fast-mode
collection under `MAX_BRUTE_FORCE_SIZE` (2,000) without a tree is searched
by exact float32 brute force. These rules, and every default, are in
`keras_rmac.search.scann_policy`; the recall measurement is in
`keras_rmac.search.scann_tuning`, and the rebuilds of a fast-mode build
that misses its recall target (more leaves, then no tree) in
`keras_rmac.search.scann_builds`.

Saved layout (besides the manifest, ids and paths of
`keras_rmac.search.storage`): `scann/`, ScaNN's files with relative asset
paths and 4-bit codes packed two per byte (`keras_rmac.search.scann_assets`;
fast mode's floats are ScaNN's `dataset.npy`, or `vectors.npy` with int8
re-ordering), so the index directory can be moved freely.

Reference: Guo et al., "Accelerating Large-Scale Inference with
Anisotropic Vector Quantization", ICML 2020, https://arxiv.org/abs/1908.10396
"""

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_rmac.search import scann_assets
from keras_rmac.search import scann_builds
from keras_rmac.search import scann_policy
from keras_rmac.search import scann_tuning
from keras_rmac.search.base import Index
from keras_rmac.search.projection import PCAProjection
from keras_rmac.search.scann_policy import ScannOptions
from keras_rmac.search.scann_policy import ScannParams
from keras_rmac.search.scann_tuning import OperatingPoint

logger = logging.getLogger(__name__)

# Queries per search from which ScaNN's thread pool is used.
PARALLEL_QUERIES = 64

# benchmarks/search.py reaches ScaNN through this name.
_scann_pybind = scann_assets.scann_pybind


class ScannIndex(Index):
    """ScaNN index: k-means tree, 4-bit PQ codes, optional exact re-order.

    Knobs left as None are chosen from the collection size N by the rules
    of `keras_rmac.search.scann_policy` (the values are in `built_params`
    and the manifest). With a `target_recall` (the default, 0.95 at
    k=10) the build then measures the searcher on sample queries drawn
    from the indexed rows, their own rows excluded, and keeps the fastest
    leaves-searched / re-order setting reaching the target
    (`keras_rmac.search.scann_tuning`); the result is `operating_point`
    (recall@k on the sample, its size, queries per second at build),
    saved in the manifest. `target_recall=None` skips the measurement and
    keeps keras_rmac 0.2's fixed defaults (sqrt(N) leaves, 5% searched,
    200 re-ordered).

    `num_leaves_to_search` and `reorder_num_neighbors` only affect search
    and can be changed on a built or loaded index, or per call
    (`search(..., leaves_to_search=..., recall=...)`).

    Args:
        dimension: int. Descriptor dimension D.
        mode: str. `"fast"` or `"compact"` (see the module docstring).
            Defaults to `"fast"`.
        bytes_per_vector: int or None. Compact mode: size of a PQ code in
            bytes (typically 64 or 128). Defaults to 64 in compact mode;
            must be None in fast mode.
        num_leaves: int or None. Leaves of the partitioning tree; 0 for
            no tree.
        num_leaves_to_search: int or None. Leaves scored per query.
        dimensions_per_block: int or None. Dimensions per 4-bit PQ code.
        reorder_num_neighbors: int or None. Fast mode: candidates re-scored
            exactly (must be None in compact mode).
        reorder_dtype: str. Fast mode: `"float32"` (exact scores) or
            `"int8"` (a quarter of the memory, near-exact). Defaults to
            `"float32"`.
        training_sample_size: int or None. Vectors used to train the tree
            and the codebooks.
        spherical_tree: bool. Spherical k-means for the tree (centres of
            unit norm, fit for L2-normalised descriptors and inner
            product). Defaults to True.
        anisotropic_quantization_threshold: float or None. ScaNN's
            anisotropic (score-aware) quantisation threshold `T` for the PQ
            codes (ScaNN recommends 0.2 for normalised data), NaN for plain
            reconstruction loss (also spelt `"nan"`, as `get_config`
            writes it), None for the mode's default (see above). Defaults
            to None.
        hash_type: str or None. `"lut16"` (4-bit codes) or `"lut256"`
            (8-bit codes); None: lut256 in compact mode, lut16 in fast.
            Defaults to None.
        projection_dim: int or None. Compact mode: dimensions kept by the
            PCA + rotation before quantisation; 0 for none; None for
            `4 * bytes_per_vector` (capped at D; none when the code size
            is set by `dimensions_per_block`). Defaults to None.
        target_recall: float or None. Recall@`recall_k` the build tunes
            for (knobs given explicitly are kept); None for no
            measurement. Defaults to 0.95.
        recall_k: int. The k of `target_recall`. Defaults to 10.
        num_threads: int. Threads for training (0: all cores). Batched
            searches of at least 64 queries use ScaNN's thread pool.
            Defaults to 0.
        metadata: dict or None. Stored in the manifest. Defaults to None.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((500, 32)).astype(np.float32)
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> index = ScannIndex(32, mode="fast")
    >>> index.add(x)
    >>> ids, scores = index.search(x[:2], k=3)
    >>> ids[:, 0]
    array([0, 1])
    """

    index_type = "scann"

    def __init__(  # noqa: PLR0913 - public constructor, one keyword per knob
        self,
        dimension: int,
        mode: str = "fast",
        *,
        bytes_per_vector: int | None = None,
        num_leaves: int | None = None,
        num_leaves_to_search: int | None = None,
        dimensions_per_block: int | None = None,
        reorder_num_neighbors: int | None = None,
        reorder_dtype: str = "float32",
        training_sample_size: int | None = None,
        spherical_tree: bool = True,
        anisotropic_quantization_threshold: float | None = None,
        hash_type: str | None = None,
        projection_dim: int | None = None,
        target_recall: float | None = scann_policy.DEFAULT_TARGET_RECALL,
        recall_k: int = scann_policy.DEFAULT_RECALL_K,
        num_threads: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ):
        super().__init__(dimension, metadata)
        options = ScannOptions(
            dimension=self.dimension,
            mode=mode,
            bytes_per_vector=bytes_per_vector,
            num_leaves=num_leaves,
            num_leaves_to_search=num_leaves_to_search,
            dimensions_per_block=dimensions_per_block,
            reorder_num_neighbors=reorder_num_neighbors,
            reorder_dtype=reorder_dtype,
            training_sample_size=training_sample_size,
            spherical_tree=spherical_tree,
            anisotropic_quantization_threshold=(
                anisotropic_quantization_threshold
            ),
            hash_type=hash_type,
            projection_dim=projection_dim,
            target_recall=target_recall,
            recall_k=recall_k,
        )
        # One public attribute per knob, as validated (see `options`).
        for field in dataclasses.fields(ScannOptions):
            setattr(self, field.name, getattr(options, field.name))
        if (
            isinstance(num_threads, bool)
            or not isinstance(num_threads, (int, np.integer))
            or num_threads < 0
        ):
            raise ValueError(
                f"`num_threads` must be an int >= 0. Received: {num_threads!r}"
            )
        self.num_threads = int(num_threads)
        self._projection: PCAProjection | None = None
        # Float descriptors: pending chunks (both modes, until built) and,
        # in fast mode, every row (kept for rebuilds and get_vectors).
        self._chunks: list[np.ndarray] = []
        self._vectors: np.ndarray | None = (
            np.empty((0, self.dimension), np.float32)
            if mode == "fast"
            else None
        )
        self._searcher = None
        self._built_count = 0
        self.built_params: dict[str, Any] = {}
        self.operating_point: OperatingPoint | None = None

    # ------------------------------------------------------------------
    # Configuration.

    @property
    def kind(self) -> str:
        """`"fast"` or `"compact"`: the `make_index` kind of this index."""
        return self.mode

    @property
    def options(self) -> ScannOptions:
        """The knobs as a validated `ScannOptions` (from the attributes)."""
        return ScannOptions(
            **{
                field.name: getattr(self, field.name)
                for field in dataclasses.fields(ScannOptions)
            }
        )

    def _options_config(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.options)
        del config["dimension"]
        aniso = config["anisotropic_quantization_threshold"]
        if aniso is not None and math.isnan(aniso):
            # JSON has no NaN: an explicit "off" is written "nan".
            config["anisotropic_quantization_threshold"] = "nan"
        config["num_threads"] = self.num_threads
        return config

    # ------------------------------------------------------------------
    # Building.

    @property
    def is_built(self) -> bool:
        """Whether the searcher reflects every added vector."""
        return self._searcher is not None and self._built_count == len(self)

    def _check_can_add(self):
        if self.mode == "compact" and self._searcher is not None:
            raise RuntimeError(
                "This compact ScannIndex is built: it keeps only PQ codes, "
                "not the float descriptors its codebooks would need to be "
                "retrained with. Build a new ScannIndex from all the "
                "descriptors (old and new) instead."
            )

    def _add_vectors(self, x):
        self._chunks.append(x)

    def _consolidated(self) -> np.ndarray:
        """All float rows as one array (fast mode keeps it)."""
        if self.mode == "fast":
            if self._chunks:
                if len(self._vectors) == 0 and len(self._chunks) == 1:
                    self._vectors = self._chunks[0]  # no copy
                else:
                    self._vectors = np.concatenate(
                        [np.asarray(self._vectors)] + self._chunks
                    )
                self._chunks = []
            return self._vectors
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    def resolved_params(self, n: int) -> dict[str, Any]:
        """The build parameters this index would use for `n` vectors.

        `keras_rmac.search.scann_policy.resolve_params` as a dict (the
        form of `built_params` and of the manifest).
        """
        return scann_policy.resolve_params(self.options, n).to_dict()

    def build(self) -> None:
        """Builds (or rebuilds) the ScaNN searcher from all added vectors.

        Called by `search` and `save` when needed. In compact mode the float
        descriptors are dropped afterwards.

        Raises:
            RuntimeError: a built compact index (nothing to rebuild from).
        """
        n = len(self)
        if self.is_built:
            return
        if n == 0:
            self._searcher, self._built_count = None, 0
            return
        if self.mode == "compact" and not self._chunks:
            raise RuntimeError(
                "This compact ScannIndex has no float descriptors left to "
                "build from; build a new index from all the descriptors."
            )
        x = self._consolidated()
        start = time.perf_counter()
        options, sample = self.options, None
        if self.target_recall is not None and n > 1:
            rows, truth = scann_tuning.draw_sample(x, self.recall_k)
            sample = (rows, truth, time.perf_counter() - start)
        params = scann_policy.resolve_params(options, n)
        self._build_searcher(x, params)
        self.operating_point = None
        if sample is not None:
            self._tune(x, params, sample)
        if self.mode == "compact":
            # Only the PQ codes remain (inside the searcher).
            self._chunks = []
        logger.info(
            "Built ScaNN %s index of %d vectors in %.1f s: %s",
            self.mode,
            n,
            time.perf_counter() - start,
            self.built_params,
        )
        if self.operating_point is not None:
            logger.info("Operating point: %s", self.operating_point.describe())

    def _build_searcher(self, x: np.ndarray, params: ScannParams) -> None:
        projection = scann_assets.fit_projection(x, params)
        if projection is not None:
            x = projection.project_database(x)
        self._searcher = scann_assets.build_searcher(
            x, params, self.num_threads
        )
        self._projection = projection
        self._built_count = len(x)
        self.built_params = params.to_dict()

    def _tune(self, x: np.ndarray, params: ScannParams, sample) -> None:
        """Measures the built searcher and keeps the fastest setting
        reaching `target_recall`; a fast-mode build missing it may be
        redone with more leaves, then without a tree
        (`scann_builds.tune_built_index`)."""
        may_rebuild = (
            self.mode == "fast"
            and params.num_leaves > 0
            and self.num_leaves is None
            and self.num_leaves_to_search is None
        )
        point, _ = scann_builds.tune_built_index(
            x,
            params,
            self.options,
            self._scann_search,
            # A rebuild takes the new params; the rows stay these.
            rebuild=(lambda p: self._build_searcher(x, p))
            if may_rebuild
            else None,
            sample=sample[:2],
        )
        # The sample's ground truth counts as measuring time too.
        point = dataclasses.replace(point, seconds=point.seconds + sample[2])
        self.operating_point = point
        self.built_params["num_leaves_to_search"] = point.num_leaves_to_search
        if point.reorder_num_neighbors:
            self.built_params["reorder_num_neighbors"] = (
                point.reorder_num_neighbors
            )

    def _prepare_save(self):
        self.build()

    # ------------------------------------------------------------------
    # Searching.

    search_options = ("leaves_to_search", "reorder_num_neighbors", "recall")

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        leaves_to_search: int | None = None,
        reorder_num_neighbors: int | None = None,
        recall: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns the `k` best database items for each query.

        As `Index.search`, with per-call settings that trade speed for
        recall without a rebuild (each None keeps the built setting, or
        the attribute of the same name when set).

        Args:
            queries: float array of shape `(Q, D)` (or `(D,)`).
            k: int >= 1. Number of results per query.
            leaves_to_search: int or None. Leaves scored per query
                (capped at the number of leaves).
            reorder_num_neighbors: int or None. Fast mode: candidates
                re-scored exactly.
            recall: float or None. A recall@`recall_k` level: the fastest
                setting measured at build (`operating_point.points`) that
                reached it on the sample queries with the target's margin
                (`OperatingPoint.setting_for`), else the most accurate.
                The two knobs above, when given, take precedence.

        Returns:
            `(ids, scores)`, both `(Q, k)`; see `Index.search`.
        """
        options = {
            "leaves_to_search": scann_policy.check_search_int(
                "leaves_to_search", leaves_to_search, allow_none=True
            ),
            "reorder_num_neighbors": scann_policy.check_search_int(
                "reorder_num_neighbors", reorder_num_neighbors, allow_none=True
            ),
            "recall": scann_policy.check_recall("recall", recall),
        }
        return super().search(queries, k, **options)

    def _search_rows(
        self,
        q,
        k,
        leaves_to_search=None,
        reorder_num_neighbors=None,
        recall=None,
    ):
        self.build()
        params = self.built_params
        if recall is not None:
            if self.operating_point is None or not self.operating_point.points:
                raise ValueError(
                    "`recall=` needs the operating points measured at build "
                    "time, and this index has none (built with "
                    "target_recall=None, or saved by keras_rmac < 0.3). "
                    "Pass `leaves_to_search=` instead, or rebuild it."
                )
            leaves, reorder = self.operating_point.setting_for(recall)
            leaves_to_search = leaves_to_search or leaves or None
            reorder_num_neighbors = reorder_num_neighbors or reorder
        leaves = scann_policy.leaves_to_search(
            params["num_leaves"],
            params["num_leaves_to_search"],
            leaves_to_search or self.num_leaves_to_search,
        )
        pre = scann_policy.pre_reorder_neighbors(
            k,
            params["reorder_num_neighbors"],
            reorder_num_neighbors or self.reorder_num_neighbors,
        )
        return self._scann_search(q, k, leaves, pre)

    def _scann_search(self, q, k, leaves, pre_reorder):
        """ScaNN's top-`k` rows and scores (padded) with these settings."""
        offset = None
        if self._projection is not None:
            offset = self._projection.score_offset(q)
            q = self._projection.project_queries(q)
        kwargs = dict(
            final_num_neighbors=k,
            pre_reorder_num_neighbors=pre_reorder,
            leaves_to_search=leaves or None,
        )
        if len(q) >= PARALLEL_QUERIES:
            idx, dist = self._searcher.search_batched_parallel(
                q, batch_size=max(16, min(256, len(q) // 4)), **kwargs
            )
        else:
            idx, dist = self._searcher.search_batched(q, **kwargs)
        rows = np.asarray(idx, np.int64).reshape(len(q), -1)
        scores = np.asarray(dist, np.float32).reshape(len(q), -1)
        if offset is not None:
            # Projected inner products + <q, mean>: the cosine scale.
            scores = scores + offset[:, None]
        return scann_assets.padded(rows, scores, k)

    def _vectors_at_rows(self, rows):
        if self.mode == "compact":
            return super()._vectors_at_rows(rows)
        return np.asarray(self._consolidated()[rows])

    # ------------------------------------------------------------------
    # Saving and loading.

    def _write_payload(self, directory):
        params = self._options_config()
        params["built"] = self.built_params
        point = self.operating_point
        params["operating_point"] = point.to_dict() if point else None
        files: dict[str, Any] = {}
        if self._searcher is None:  # empty index
            return params, files
        scann_dir = os.path.join(directory, scann_assets.SCANN_DIR)
        written = scann_assets.serialize_searcher(self._searcher, scann_dir)
        files["scann"] = scann_assets.SCANN_DIR
        if self._projection is not None:
            files["projection"] = scann_assets.save_projection(
                directory, self._projection
            )
        if self.built_params.get("hash_type", "lut16") == "lut16":
            packed = scann_assets.pack_saved_codes(scann_dir)
            if packed is not None:
                files["packed_codes"] = packed
        vectors = self._save_floats(directory, written)
        if vectors is not None:
            files["vectors"] = vectors
        return params, files

    def _save_floats(self, directory: str, written: set[str]) -> str | None:
        """Fast mode: where the float descriptors are saved (manifest name).

        ScaNN's float re-ordering copy (`scann/dataset.npy`) is the
        descriptors in row order and serves as is; with int8 re-ordering
        they are written to `vectors.npy`. Compact mode saves none.
        """
        floats = written & set(scann_assets.FLOAT_FILES)
        if self.mode == "compact":
            # A collection too small for codebooks keeps its projected
            # vectors (at most bytes_per_vector bytes each) instead.
            if floats and self.built_params.get("scoring") != "brute_force":
                raise RuntimeError(
                    f"Compact ScaNN index wrote float data {sorted(floats)}; "
                    "refusing to save (this is a bug)."
                )
            return None
        if scann_assets.DATASET_FILE in floats:
            return f"{scann_assets.SCANN_DIR}/{scann_assets.DATASET_FILE}"
        np.save(
            os.path.join(directory, scann_assets.VECTORS_FILE),
            np.ascontiguousarray(self._consolidated()),
            allow_pickle=False,
        )
        return scann_assets.VECTORS_FILE

    @classmethod
    def _from_saved(cls, directory, manifest):
        params = dict(manifest["params"])
        built = params.pop("built", {})
        point = OperatingPoint.from_dict(params.pop("operating_point", None))
        # Saved before recall targets (format_version <= 2): built with
        # the fixed knobs, which a rebuild keeps.
        params.setdefault("target_recall", None)
        if "hash_type" not in params:
            # format_version 1: 4-bit codes of the unprojected descriptors.
            params["hash_type"] = "lut16"
            built.setdefault("hash_type", "lut16")
            built.setdefault("projection_dim", 0)
        index = cls.from_config({"dimension": manifest["dimension"], **params})
        index.built_params = built
        index.operating_point = point
        count = int(manifest["count"])
        files = manifest.get("files", {})
        if count == 0:
            return index
        if "scann" not in files:
            raise ValueError(
                f"Index {directory} lists {count} vectors but no ScaNN "
                "files: the index is damaged; rebuild it."
            )
        packed = files.get("packed_codes", {})
        index._searcher = scann_assets.load_searcher(
            os.path.join(directory, files["scann"]),
            os.path.join(directory, packed["file"]) if packed else None,
            packed.get("num_codes"),
        )
        index._built_count = count
        index._projection = scann_assets.load_projection(
            directory, files, manifest["dimension"], built.get("projection_dim")
        )
        if index.mode == "fast":
            index._vectors = scann_assets.load_vectors(
                directory, files, (count, manifest["dimension"])
            )
        return index
