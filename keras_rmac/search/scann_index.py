"""Approximate inner-product search with ScaNN (tree + PQ + re-ordering).

ScaNN (Guo et al., ICML 2020, arXiv 1908.10396) partitions the database
with a k-means tree, scores the candidates of the leaves nearest to the
query with asymmetric hashing (product quantisation of the residuals, 4-bit
codes looked up with SIMD "LUT16" tables, trained with the anisotropic
loss), and optionally re-scores the best candidates exactly.

Two operating points:

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

Small collections: below `MIN_TREE_SIZE` (20,000) vectors, unless
`num_leaves` asks for a tree, and whenever there are fewer than 4 vectors
per requested leaf, no tree is built and every code is scored; in fast
mode a collection under `MAX_BRUTE_FORCE_SIZE` (2,000) vectors without a
tree is searched by exact float32 brute force instead of PQ codes.

Saved layout (besides the manifest, ids and paths, see
`keras_rmac.search.storage`): `scann/`, ScaNN's own files written with
relative asset paths, with `hashed_dataset.npy` (one byte per 4-bit code)
replaced by `hashed_codes_packed.npy` (two codes per byte). In fast mode
ScaNN's `dataset.npy` doubles as the float descriptors (no second copy);
with int8 re-ordering they are saved as `vectors.npy`. `load` rebuilds a
ScaNN asset directory in a temporary folder (links + unpacked codes) and
loads from there, so the index directory can be moved freely.

Reference: Guo et al., "Accelerating Large-Scale Inference with
Anisotropic Vector Quantization", ICML 2020, https://arxiv.org/abs/1908.10396
"""

import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_rmac.search import storage
from keras_rmac.search.base import Index
from keras_rmac.search.projection import PCAProjection

logger = logging.getLogger(__name__)

MODES = ("fast", "compact")
REORDER_DTYPES = ("float32", "int8")
# ScaNN's PQ code types: 16 centres per block (4-bit codes, SIMD lookup
# tables) or 256 centres per block (8-bit codes).
HASH_TYPES = ("lut16", "lut256")
_CODE_BITS = {"lut16": 4, "lut256": 8}
_CENTRES = {"lut16": 16, "lut256": 256}
# Compact mode's default projection keeps this many principal directions
# per byte of code: 4 dimensions per 8-bit code (256 of 1280 at 64 B).
# Chosen on a COIL-100 validation split (benchmarks/search.py); a share of
# the variance was tried too and fails on whitened descriptors, whose
# spectrum is flat.
PROJECTION_DIMS_PER_BYTE = 4
# Below this many vectors no partitioning tree is built by default:
# scoring every PQ code costs well under a millisecond per query, and a
# tree on little (or weakly clustered) data loses recall.
MIN_TREE_SIZE = 20_000
# Default share of the leaves searched per query.
LEAVES_SEARCHED = 0.05
# Below this many vectors fast mode scores every float vector exactly.
MAX_BRUTE_FORCE_SIZE = 2000
# ScaNN needs at least 16 training points for its 16-centre PQ codebooks
# when the tree's residuals are quantised; we ask for more per leaf.
MIN_POINTS_PER_LEAF = 4

SCANN_DIR = "scann"
PACKED_CODES_FILE = "hashed_codes_packed.npy"
_HASHED_FILE = "hashed_dataset.npy"
_DATASET_FILE = "dataset.npy"
_FLOAT_FILES = ("dataset.npy", "int8_dataset.npy")
VECTORS_FILE = "vectors.npy"
PROJECTION_FILE = "projection_matrix.npy"
PROJECTION_MEAN_FILE = "projection_mean.npy"


def _scann_pybind():
    # Imported lazily: importing scann imports TensorFlow.
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Packs 4-bit codes `(N, B)` (values < 16) into `(N, ceil(B/2))` bytes.

    Code `2j` goes to the low nibble of byte `j`, code `2j+1` to the high.
    """
    codes = np.asarray(codes, np.uint8)
    if codes.size and codes.max() > 15:
        raise ValueError("pack_nibbles: codes must be < 16.")
    if codes.shape[1] % 2:
        codes = np.pad(codes, ((0, 0), (0, 1)))
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: np.ndarray, num_codes: int) -> np.ndarray:
    """Inverse of `pack_nibbles`: `(N, ceil(B/2))` bytes to `(N, B)` codes."""
    packed = np.asarray(packed, np.uint8)
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    codes[:, 0::2] = packed & 15
    codes[:, 1::2] = packed >> 4
    return np.ascontiguousarray(codes[:, :num_codes])


def _positive_int(name: str, value: Any):
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be a positive int. Received: {name}={value!r}"
        )
    return int(value)


class ScannIndex(Index):
    """ScaNN index: k-means tree, 4-bit PQ codes, optional exact re-order.

    Every knob left as None is chosen from the collection size N when the
    searcher is built (the chosen values are in `built_params` and the
    manifest):

    - `num_leaves`: about sqrt(N) (no tree below `MIN_TREE_SIZE`);
    - `num_leaves_to_search`: 5% of the leaves, at least 8;
    - `dimensions_per_block`: 2 in fast mode; in compact mode the smallest
      block size giving at most `bytes_per_vector` bytes of codes after the
      projection (4 with the defaults);
    - `reorder_num_neighbors` (fast mode): 200 candidates re-scored
      exactly;
    - `training_sample_size`: min(N, max(50,000, 200 * num_leaves))
      vectors for the tree and for the codebooks (k-means leaves trained on
      fewer than ~200 points each split the natural clusters and lose
      recall);
    - `anisotropic_quantization_threshold`: 0.2 in compact mode (PQ scores
      are the final ranking), off in fast mode (re-ordering makes it moot
      and it doubles the encoding time).

    `num_leaves_to_search` and `reorder_num_neighbors` only affect search
    and can be changed on a built or loaded index.

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
            reconstruction loss, None for the mode's default (see above).
            Defaults to None.
        hash_type: str or None. `"lut16"` (4-bit codes) or `"lut256"`
            (8-bit codes); None: lut256 in compact mode, lut16 in fast.
            Defaults to None.
        projection_dim: int or None. Compact mode: dimensions kept by the
            PCA + rotation before quantisation; 0 for none; None for
            `4 * bytes_per_vector` (capped at D; none when the code size
            is set by `dimensions_per_block`). Defaults to None.
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

    def __init__(
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
        num_threads: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ):
        super().__init__(dimension, metadata)
        if mode not in MODES:
            raise ValueError(
                f"`mode` must be one of {MODES}. Received: mode={mode!r}"
            )
        self.mode = mode
        if mode == "fast":
            if bytes_per_vector is not None:
                raise ValueError(
                    "`bytes_per_vector` sets the code size of "
                    'mode="compact"; fast mode keeps the float descriptors. '
                    f"Received: bytes_per_vector={bytes_per_vector!r} with "
                    'mode="fast".'
                )
        else:
            if reorder_num_neighbors is not None:
                raise ValueError(
                    'mode="compact" keeps no floats to re-order with; use '
                    f'mode="fast". Received: reorder_num_neighbors='
                    f"{reorder_num_neighbors!r}"
                )
            if bytes_per_vector is not None and dimensions_per_block:
                raise ValueError(
                    "Give `bytes_per_vector` or `dimensions_per_block`, not "
                    "both: each fixes the code size."
                )
            if bytes_per_vector is None and dimensions_per_block is None:
                bytes_per_vector = 64
        self.bytes_per_vector = _positive_int(
            "bytes_per_vector", bytes_per_vector
        )
        # num_leaves=0 asks for no tree.
        self.num_leaves = (
            0 if num_leaves == 0 else _positive_int("num_leaves", num_leaves)
        )
        self.num_leaves_to_search = _positive_int(
            "num_leaves_to_search", num_leaves_to_search
        )
        self.dimensions_per_block = _positive_int(
            "dimensions_per_block", dimensions_per_block
        )
        if (self.dimensions_per_block or 0) > self.dimension:
            raise ValueError(
                f"`dimensions_per_block` ({dimensions_per_block}) exceeds the "
                f"dimension ({dimension})."
            )
        self.reorder_num_neighbors = _positive_int(
            "reorder_num_neighbors", reorder_num_neighbors
        )
        if reorder_dtype not in REORDER_DTYPES:
            raise ValueError(
                f"`reorder_dtype` must be one of {REORDER_DTYPES}. "
                f"Received: reorder_dtype={reorder_dtype!r}"
            )
        self.reorder_dtype = reorder_dtype
        self.training_sample_size = _positive_int(
            "training_sample_size", training_sample_size
        )
        self.spherical_tree = bool(spherical_tree)
        self.anisotropic_quantization_threshold = (
            None
            if anisotropic_quantization_threshold is None
            else float(anisotropic_quantization_threshold)
        )
        if hash_type is not None and hash_type not in HASH_TYPES:
            raise ValueError(
                f"`hash_type` must be one of {HASH_TYPES}. Received: "
                f"hash_type={hash_type!r}"
            )
        self.hash_type = hash_type
        if mode == "fast" and projection_dim:
            raise ValueError(
                "`projection_dim` is a compact-mode option (fast mode "
                "re-orders with the original float descriptors). Received: "
                f'projection_dim={projection_dim!r} with mode="fast".'
            )
        self.projection_dim = (
            0
            if projection_dim == 0
            else _positive_int("projection_dim", projection_dim)
        )
        if (self.projection_dim or 0) > self.dimension:
            raise ValueError(
                f"`projection_dim` ({projection_dim}) exceeds the dimension "
                f"({dimension})."
            )
        self._projection: PCAProjection | None = None
        if not isinstance(num_threads, (int, np.integer)) or num_threads < 0:
            raise ValueError(
                f"`num_threads` must be an int >= 0. Received: {num_threads!r}"
            )
        self.num_threads = int(num_threads)
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
        """The build parameters this index would use for `n` vectors."""
        d = self.dimension
        compact = self.mode == "compact"
        if self.num_leaves is None:
            leaves = int(round(math.sqrt(n))) if n >= MIN_TREE_SIZE else 0
        else:
            leaves = self.num_leaves
            if leaves and (
                leaves < 2 or n < max(16, MIN_POINTS_PER_LEAF * leaves)
            ):
                logger.info(
                    "ScannIndex: %d vectors are too few for %d leaves; "
                    "searching without a tree.",
                    n,
                    leaves,
                )
                leaves = 0
        if leaves:
            to_search = self.num_leaves_to_search
            if to_search is None:
                to_search = max(8, math.ceil(LEAVES_SEARCHED * leaves))
            to_search = min(to_search, leaves)
        else:
            to_search = 0
        hash_type = self.hash_type or ("lut256" if compact else "lut16")
        if hash_type == "lut256" and n < _CENTRES["lut256"]:
            # ScaNN trains no 256-centre codebooks on fewer points.
            hash_type = "lut16"
        if self.mode == "fast" and n < MAX_BRUTE_FORCE_SIZE and not leaves:
            scoring = "brute_force"
        elif compact and n < _CENTRES["lut16"]:
            # Too few vectors for any codebook: keep the projected vectors
            # (rank <= n - 1, so the projection loses nothing) in no more
            # than `bytes_per_vector` bytes of float32.
            scoring = "brute_force"
        else:
            scoring = "ah"
        if not compact:
            proj = 0
        elif scoring == "brute_force":
            budget = (self.bytes_per_vector or 4 * d) // 4
            proj = max(1, min(d, n - 1, budget))
        elif self.projection_dim is not None:
            proj = self.projection_dim
        elif self.bytes_per_vector is not None:
            proj = PROJECTION_DIMS_PER_BYTE * self.bytes_per_vector
        else:  # code size set by dimensions_per_block: no projection
            proj = 0
        proj = min(proj, d)
        width = proj or d
        bits = _CODE_BITS[hash_type]
        dpb = self.dimensions_per_block
        if dpb is None:
            if self.mode == "fast":
                dpb = 2
            else:
                codes = self.bytes_per_vector * 8 // bits
                dpb = max(1, math.ceil(width / codes))
        dpb = min(dpb, width)
        num_blocks = math.ceil(width / dpb)
        sample = self.training_sample_size or max(50_000, 200 * leaves)
        aniso = self.anisotropic_quantization_threshold
        if aniso is None:
            aniso = 0.2 if compact else math.nan
        ah = scoring == "ah"
        params = {
            "mode": self.mode,
            "scoring": scoring,
            "num_leaves": leaves,
            "num_leaves_to_search": to_search,
            "projection_dim": proj,
            "hash_type": hash_type if ah else None,
            "dimensions_per_block": dpb if ah else None,
            "num_blocks": num_blocks if ah else None,
            "code_bytes_per_vector": (
                math.ceil(num_blocks * bits / 8)
                if ah
                else (4 * proj if compact else None)
            ),
            "training_sample_size": int(min(n, sample)),
            "spherical_tree": self.spherical_tree if leaves else None,
            "anisotropic_quantization_threshold": (
                None if math.isnan(aniso) or not ah else aniso
            ),
            "reorder_num_neighbors": None,
            "reorder_dtype": None,
        }
        if self.mode == "fast" and ah:
            params["reorder_num_neighbors"] = self.reorder_num_neighbors or 200
            params["reorder_dtype"] = self.reorder_dtype
        return params

    def _fit_projection(
        self, x: np.ndarray, params: dict[str, Any]
    ) -> PCAProjection | None:
        """The compact-mode PCA (+ rotation), learned on the training rows."""
        dim = params["projection_dim"]
        if self.mode != "compact" or self.projection_dim == 0 or not dim:
            return None
        rows = x
        if len(x) > params["training_sample_size"]:
            pick = np.random.default_rng(0).choice(
                len(x), params["training_sample_size"], replace=False
            )
            rows = x[np.sort(pick)]
        # Brute force keeps the projected vectors: no rotation needed.
        rotate = params["scoring"] != "brute_force"
        return PCAProjection.fit(rows, dim, rotate=rotate)

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
        params = self.resolved_params(n)
        projection = self._fit_projection(x, params)
        if projection is not None:
            x = projection.project_database(x)
        pybind = _scann_pybind()
        builder = pybind.builder(x, 10, "dot_product")
        if params["num_leaves"]:
            builder = builder.tree(
                num_leaves=params["num_leaves"],
                num_leaves_to_search=params["num_leaves_to_search"],
                training_sample_size=params["training_sample_size"],
                spherical=self.spherical_tree,
            )
        if params["scoring"] == "brute_force":
            builder = builder.score_brute_force()
        else:
            aniso = params["anisotropic_quantization_threshold"]
            builder = builder.score_ah(
                params["dimensions_per_block"],
                anisotropic_quantization_threshold=(
                    math.nan if aniso is None else aniso
                ),
                training_sample_size=params["training_sample_size"],
                hash_type=params["hash_type"],
            )
            if params["reorder_num_neighbors"]:
                builder = builder.reorder(
                    params["reorder_num_neighbors"],
                    quantize=(
                        pybind.scann_builder.ReorderType.INT8
                        if params["reorder_dtype"] == "int8"
                        else pybind.scann_builder.ReorderType.FLOAT32
                    ),
                )
        builder.set_n_training_threads(self.num_threads)
        self._searcher = builder.build()
        self._projection = projection
        self._built_count = n
        self.built_params = params
        if self.mode == "compact":
            # Only the PQ codes remain (inside the searcher).
            self._chunks = []
        logger.info(
            "Built ScaNN %s index of %d vectors in %.1f s: %s",
            self.mode,
            n,
            time.perf_counter() - start,
            params,
        )

    def _prepare_save(self):
        self.build()

    # ------------------------------------------------------------------
    # Searching.

    def _search_rows(self, q, k):
        self.build()
        params = self.built_params
        offset = None
        if self._projection is not None:
            offset = self._projection.score_offset(q)
            q = self._projection.project_queries(q)
        leaves = 0
        if params["num_leaves"]:
            leaves = self.num_leaves_to_search or params["num_leaves_to_search"]
            leaves = min(int(leaves), params["num_leaves"])
        pre = k
        if params["reorder_num_neighbors"]:
            pre = max(
                k, self.reorder_num_neighbors or params["reorder_num_neighbors"]
            )
        kwargs = dict(
            final_num_neighbors=k,
            pre_reorder_num_neighbors=pre,
            leaves_to_search=leaves or None,
        )
        if len(q) >= 64:
            idx, dist = self._searcher.search_batched_parallel(
                q, batch_size=max(16, min(256, len(q) // 4)), **kwargs
            )
        else:
            idx, dist = self._searcher.search_batched(q, **kwargs)
        rows = np.asarray(idx, np.int64).reshape(len(q), -1)
        scores = np.asarray(dist, np.float32).reshape(len(q), -1)
        out_rows = np.full((len(q), k), -1, np.int64)
        out_scores = np.full((len(q), k), -np.inf, np.float32)
        width = min(k, rows.shape[1])
        # ScaNN pads missing results with row 0 and a NaN score.
        valid = np.isfinite(scores[:, :width])
        out_rows[:, :width] = np.where(valid, rows[:, :width], -1)
        if offset is not None:
            # Projected inner products + <q, mean>: the cosine scale.
            scores = scores + offset[:, None]
        out_scores[:, :width] = np.where(valid, scores[:, :width], -np.inf)
        return out_rows, out_scores

    def _vectors_at_rows(self, rows):
        if self.mode == "compact":
            return super()._vectors_at_rows(rows)
        return np.asarray(self._consolidated()[rows])

    # ------------------------------------------------------------------
    # Saving and loading.

    def _write_payload(self, directory):
        files: dict[str, Any] = {}
        aniso_user = self.anisotropic_quantization_threshold
        params = {
            "mode": self.mode,
            "bytes_per_vector": self.bytes_per_vector,
            "num_leaves": self.num_leaves,
            "num_leaves_to_search": self.num_leaves_to_search,
            "dimensions_per_block": self.dimensions_per_block,
            "reorder_num_neighbors": self.reorder_num_neighbors,
            "reorder_dtype": self.reorder_dtype,
            "training_sample_size": self.training_sample_size,
            "spherical_tree": self.spherical_tree,
            # JSON has no NaN: an explicit "off" is stored as "nan".
            "anisotropic_quantization_threshold": (
                "nan"
                if aniso_user is not None and math.isnan(aniso_user)
                else aniso_user
            ),
            "hash_type": self.hash_type,
            "projection_dim": self.projection_dim,
            "num_threads": self.num_threads,
            "built": self.built_params,
        }
        if self._searcher is None:  # empty index
            return params, files
        scann_dir = os.path.join(directory, SCANN_DIR)
        os.makedirs(scann_dir)
        self._searcher.serialize(scann_dir, relative_path=True)
        written = set(os.listdir(scann_dir))
        if any(name.endswith(".pkl") for name in written):
            raise RuntimeError(
                f"ScaNN wrote a pickle in {scann_dir}; refusing to save."
            )
        files["scann"] = SCANN_DIR
        if self._projection is not None:
            np.save(
                os.path.join(directory, PROJECTION_FILE),
                self._projection.matrix,
                allow_pickle=False,
            )
            np.save(
                os.path.join(directory, PROJECTION_MEAN_FILE),
                self._projection.mean,
                allow_pickle=False,
            )
            files["projection"] = {
                "matrix": PROJECTION_FILE,
                "mean": PROJECTION_MEAN_FILE,
            }
        hashed = os.path.join(scann_dir, _HASHED_FILE)
        lut16 = self.built_params.get("hash_type", "lut16") == "lut16"
        if lut16 and os.path.exists(hashed):
            codes = np.load(hashed, allow_pickle=False)
            if (
                codes.dtype == np.uint8
                and codes.ndim == 2
                and (codes.size == 0 or codes.max() < 16)
            ):
                np.save(
                    os.path.join(scann_dir, PACKED_CODES_FILE),
                    pack_nibbles(codes),
                    allow_pickle=False,
                )
                os.remove(hashed)
                files["packed_codes"] = {
                    "file": f"{SCANN_DIR}/{PACKED_CODES_FILE}",
                    "num_codes": int(codes.shape[1]),
                }
        floats = written & set(_FLOAT_FILES)
        if self.mode == "compact":
            # A collection too small for codebooks keeps its projected
            # vectors (at most bytes_per_vector bytes each) instead.
            if floats and self.built_params.get("scoring") != "brute_force":
                raise RuntimeError(
                    f"Compact ScaNN index wrote float data {sorted(floats)}; "
                    "refusing to save (this is a bug)."
                )
        elif _DATASET_FILE in floats:
            # ScaNN's re-ordering copy is the float descriptors, row order.
            files["vectors"] = f"{SCANN_DIR}/{_DATASET_FILE}"
        else:
            np.save(
                os.path.join(directory, VECTORS_FILE),
                np.ascontiguousarray(self._consolidated()),
                allow_pickle=False,
            )
            files["vectors"] = VECTORS_FILE
        return params, files

    @classmethod
    def _from_saved(cls, directory, manifest):
        params = dict(manifest["params"])
        built = params.pop("built", {})
        aniso = params.pop("anisotropic_quantization_threshold")
        if "hash_type" not in params:
            # format_version 1: 4-bit codes of the unprojected descriptors.
            params["hash_type"] = "lut16"
            built.setdefault("hash_type", "lut16")
            built.setdefault("projection_dim", 0)
        index = cls(
            manifest["dimension"],
            params.pop("mode"),
            anisotropic_quantization_threshold=(
                None if aniso is None else float(aniso)
            ),
            **params,
        )
        index.built_params = built
        count = int(manifest["count"])
        files = manifest.get("files", {})
        if count == 0:
            return index
        if "scann" not in files:
            raise ValueError(
                f"Index {directory} lists {count} vectors but no ScaNN "
                "files: the index is damaged; rebuild it."
            )
        index._searcher = _load_searcher(
            os.path.join(directory, files["scann"]),
            os.path.join(directory, files["packed_codes"]["file"])
            if "packed_codes" in files
            else None,
            files.get("packed_codes", {}).get("num_codes"),
        )
        index._built_count = count
        if "projection" in files:
            matrix = storage.load_array(
                directory, files["projection"]["matrix"]
            )
            mean = storage.load_array(directory, files["projection"]["mean"])
            want = (manifest["dimension"], built.get("projection_dim"))
            if matrix.shape != want or mean.shape != want[:1]:
                raise ValueError(
                    f"{os.path.join(directory, PROJECTION_FILE)} holds "
                    f"{matrix.shape} and the mean {mean.shape}, expected "
                    f"{want} and {want[:1]}: the index is damaged; rebuild "
                    "it."
                )
            index._projection = PCAProjection(matrix, mean)
        elif built.get("projection_dim"):
            raise ValueError(
                f"Index {directory} was built with a projection to "
                f"{built['projection_dim']} dimensions but holds no "
                "projection files: the index is damaged; rebuild it."
            )
        if index.mode == "fast":
            name = files.get("vectors")
            if name is None:
                raise ValueError(
                    f"Fast-mode index {directory} lists no float vectors: "
                    "the index is damaged; rebuild it."
                )
            vectors = storage.load_array(directory, name, mmap_mode="r")
            expected = (count, manifest["dimension"])
            if vectors.dtype != np.float32 or vectors.shape != expected:
                raise ValueError(
                    f"{os.path.join(directory, name)} holds {vectors.dtype} "
                    f"{vectors.shape}, expected float32 {expected}: the index "
                    "is damaged; rebuild it."
                )
            index._vectors = vectors
        return index


_ASSET_PATH = re.compile(r'asset_path:\s*"([^"]*)"')


def _load_searcher(
    scann_dir: str, packed_codes: str | None, num_codes: int | None
):
    """Loads a ScaNN searcher from a directory written by `_write_payload`.

    ScaNN's `scann_assets.pbtxt` may hold absolute paths (older writers) and
    our codes are nibble-packed, so the assets are staged in a temporary
    directory (symbolic links, unpacked codes, a rewritten pbtxt with bare
    file names) and loaded from there; ScaNN reads everything into memory,
    so the staging directory is deleted afterwards.
    """
    assets = os.path.join(scann_dir, "scann_assets.pbtxt")
    if not os.path.isfile(assets):
        raise FileNotFoundError(
            f"{assets} is missing: the index is damaged; rebuild it."
        )
    if any(name.endswith(".pkl") for name in os.listdir(scann_dir)):
        raise ValueError(
            f"{scann_dir} holds a pickle file; keras_rmac never writes one "
            "and refuses to load it. Rebuild the index."
        )
    with open(assets, encoding="utf-8") as f:
        text = f.read()
    text = _ASSET_PATH.sub(
        lambda m: f'asset_path: "{os.path.basename(m.group(1))}"', text
    )
    stage = tempfile.mkdtemp(prefix="keras_rmac_scann_")
    try:
        for name in os.listdir(scann_dir):
            if name in ("scann_assets.pbtxt", PACKED_CODES_FILE):
                continue
            os.symlink(
                os.path.abspath(os.path.join(scann_dir, name)),
                os.path.join(stage, name),
            )
        if packed_codes is not None:
            packed = np.load(packed_codes, allow_pickle=False)
            np.save(
                os.path.join(stage, _HASHED_FILE),
                unpack_nibbles(packed, num_codes),
                allow_pickle=False,
            )
        with open(os.path.join(stage, "scann_assets.pbtxt"), "w") as f:
            f.write(text)
        searcher = _scann_pybind().load_searcher(
            stage, assets_backcompat_shim=False
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return searcher
