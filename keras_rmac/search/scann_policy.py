"""ScaNN's parameter policy: which tree, codes and re-ordering for N vectors.

Pure functions of the collection size N, the descriptor dimension D and
what the user asked for (`ScannOptions`); no ScaNN, no files. `ScannIndex`
calls `resolve_params` once per build and hands the resulting
`ScannParams` to ScaNN's builder; at search time `leaves_to_search` and
`pre_reorder_neighbors` combine the built values with per-search
overrides. Each rule is its own function so that it can be tested, and
reused (`keras_rmac.search.scann_tuning` targets a recall), on its own.

Every knob left as None is chosen from N:

- tree: with a recall target (`num_leaves_for_target`) sqrt(N) leaves,
  2 sqrt(N) from `LARGE_TREE_SIZE`, from `MIN_TARGET_TREE_SIZE` vectors
  on, without one (`num_leaves_for`) sqrt(N) from `MIN_TREE_SIZE`; none
  with fewer than `MIN_POINTS_PER_LEAF` vectors per leaf (or under 16);
- leaves searched (`num_leaves_to_search_for`): `LEAVES_SEARCHED` of them,
  at least 8 (what a recall target's measurement starts from);
- scoring (`scoring_for`): exact float32 brute force for a fast index of
  fewer than `MAX_BRUTE_FORCE_SIZE` vectors without a tree, or a compact
  one of fewer than 16 (no codebook can be trained); product-quantisation
  codes ("ah", asymmetric hashing) otherwise;
- code type (`hash_type_for`): 8-bit codes in compact mode, 4-bit in fast
  mode, 4-bit whenever N < 256 (too few points for 256 centres);
- projection (`projection_dim_for`, compact mode): the top
  `PROJECTION_DIMS_PER_BYTE * bytes_per_vector` principal directions;
- block size (`dimensions_per_block_for`): 2 in fast mode; in compact mode
  the smallest giving at most `bytes_per_vector` bytes of codes;
- training sample (`training_sample_size_for`): all N up to
  max(50,000, 200 * num_leaves);
- anisotropic threshold (`anisotropic_threshold_for`): 0.2 in compact mode,
  off in fast mode;
- re-ordering (`reorder_num_neighbors_for`, fast mode): 200 candidates.

Example:

>>> options = ScannOptions(dimension=512, mode="compact", bytes_per_vector=64)
>>> params = resolve_params(options, 1_000_000)
>>> params.num_leaves, params.hash_type, params.code_bytes_per_vector
(2000, 'lut256', 64)
>>> num_leaves_for(19_999), num_leaves_for(20_000)
(0, 141)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from typing import Any

from keras_rmac.checks import check_int

logger = logging.getLogger(__name__)

SCANN_MODES = ("fast", "compact")
"""`ScannIndex` modes (the ScaNN kinds of `keras_rmac.search.KINDS`)."""
REORDER_DTYPES = ("float32", "int8")
# ScaNN's PQ code types: 16 centres per block (4-bit codes, SIMD lookup
# tables) or 256 centres per block (8-bit codes).
HASH_TYPES = ("lut16", "lut256")
CODE_BITS = {"lut16": 4, "lut256": 8}
CENTRES = {"lut16": 16, "lut256": 256}
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
# With a recall target a tree pays from fewer: 1.6x faster than brute
# force on 2k COIL-100 descriptors (the tuner falls back if need be).
MIN_TARGET_TREE_SIZE = 1000
# Leaves for a recall target (`num_leaves_for_target`): LEAVES_PER_SQRT_N
# * sqrt(N) below LARGE_TREE_SIZE vectors, LARGE_LEAVES_PER_SQRT_N *
# sqrt(N) from there. Measured (benchmarks/search.py --recall, QPS at
# recall 0.95 over 0.5-4 sqrt(N) leaves): 2 sqrt(N) was fastest or close
# in 7 of 8 rows from 100k on, sqrt(N) at 2k and 10k.
LEAVES_PER_SQRT_N = 1
LARGE_TREE_SIZE = 50_000
LARGE_LEAVES_PER_SQRT_N = 2
# Default share of the leaves searched per query, and the least searched.
LEAVES_SEARCHED = 0.05
MIN_LEAVES_SEARCHED = 8
# Below this many vectors fast mode scores every float vector exactly.
MAX_BRUTE_FORCE_SIZE = 2000
# ScaNN needs at least 16 training points for its 16-centre PQ codebooks
# when the tree's residuals are quantised; we ask for more per leaf.
MIN_POINTS_PER_LEAF = 4
# Tree and codebooks train on at least this many vectors (all of them when
# N is smaller), and on TRAINING_POINTS_PER_LEAF per leaf for big trees:
# k-means leaves trained on fewer than ~200 points each split the natural
# clusters and lose recall.
MIN_TRAINING_SAMPLE = 50_000
TRAINING_POINTS_PER_LEAF = 200
# A shard's tree (`shard_num_leaves`) keeps at least this many rows per
# leaf on average (one index at `MIN_TARGET_TREE_SIZE` has ~31).
MIN_SHARD_ROWS_PER_LEAF = 32
# Fast mode's defaults: dimensions per 4-bit code, candidates re-ordered.
FAST_DIMENSIONS_PER_BLOCK = 2
REORDER_NUM_NEIGHBORS = 200
# Compact mode's defaults: code size and anisotropic threshold (ScaNN's
# recommendation for normalised data).
COMPACT_BYTES_PER_VECTOR = 64
COMPACT_ANISOTROPIC_THRESHOLD = 0.2
# The default recall target and its k (`keras_rmac.search.scann_tuning`).
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_RECALL_K = 10


@dataclasses.dataclass(frozen=True)
class ScannOptions:
    """What the user asked of a `ScannIndex`; None leaves a knob to the policy.

    Validated on creation (errors name the argument and the value); see
    `ScannIndex` for the meaning of each field. In compact mode with neither
    `bytes_per_vector` nor `dimensions_per_block`, `bytes_per_vector`
    becomes `COMPACT_BYTES_PER_VECTOR`.

    Example:

    >>> ScannOptions(dimension=64, mode="compact").bytes_per_vector
    64
    """

    dimension: int
    mode: str = "fast"
    bytes_per_vector: int | None = None
    num_leaves: int | None = None
    num_leaves_to_search: int | None = None
    dimensions_per_block: int | None = None
    reorder_num_neighbors: int | None = None
    reorder_dtype: str = "float32"
    training_sample_size: int | None = None
    spherical_tree: bool = True
    anisotropic_quantization_threshold: float | None = None
    hash_type: str | None = None
    projection_dim: int | None = None
    target_recall: float | None = DEFAULT_TARGET_RECALL
    recall_k: int = DEFAULT_RECALL_K

    def __post_init__(self):
        self._check_mode()
        self._check_target()
        ints = {
            "bytes_per_vector": False,
            "num_leaves": True,  # 0 asks for no tree
            "num_leaves_to_search": False,
            "dimensions_per_block": False,
            "reorder_num_neighbors": False,
            "training_sample_size": False,
            "projection_dim": True,  # 0 asks for no projection
        }
        for name, allow_zero in ints.items():
            value = check_int(
                name, getattr(self, name), int(not allow_zero), allow_none=True
            )
            object.__setattr__(self, name, value)
        for name in ("dimensions_per_block", "projection_dim"):
            if (getattr(self, name) or 0) > self.dimension:
                raise ValueError(
                    f"`{name}` ({getattr(self, name)}) exceeds the dimension "
                    f"({self.dimension})."
                )
        if self.reorder_dtype not in REORDER_DTYPES:
            raise ValueError(
                f"`reorder_dtype` must be one of {REORDER_DTYPES}. "
                f"Received: reorder_dtype={self.reorder_dtype!r}"
            )
        if self.hash_type is not None and self.hash_type not in HASH_TYPES:
            raise ValueError(
                f"`hash_type` must be one of {HASH_TYPES}. Received: "
                f"hash_type={self.hash_type!r}"
            )
        object.__setattr__(self, "spherical_tree", bool(self.spherical_tree))
        aniso = self.anisotropic_quantization_threshold
        if aniso is not None:
            # float() also reads the JSON spelling "nan" (reconstruction
            # loss, no anisotropy).
            aniso = float(aniso)
            object.__setattr__(
                self, "anisotropic_quantization_threshold", aniso
            )

    def _check_target(self) -> None:
        object.__setattr__(
            self,
            "target_recall",
            check_recall("target_recall", self.target_recall),
        )
        object.__setattr__(
            self, "recall_k", check_search_int("recall_k", self.recall_k)
        )

    def _check_mode(self) -> None:
        if self.mode not in SCANN_MODES:
            raise ValueError(
                f"`mode` must be one of {SCANN_MODES}. Received: "
                f"mode={self.mode!r}"
            )
        if self.mode == "fast":
            if self.bytes_per_vector is not None:
                raise ValueError(
                    "`bytes_per_vector` sets the code size of "
                    'mode="compact"; fast mode keeps the float descriptors. '
                    f"Received: bytes_per_vector={self.bytes_per_vector!r} "
                    'with mode="fast".'
                )
            if self.projection_dim:
                raise ValueError(
                    "`projection_dim` is a compact-mode option (fast mode "
                    "re-orders with the original float descriptors). "
                    f"Received: projection_dim={self.projection_dim!r} with "
                    'mode="fast".'
                )
            return
        if self.reorder_num_neighbors is not None:
            raise ValueError(
                'mode="compact" keeps no floats to re-order with; use '
                f'mode="fast". Received: reorder_num_neighbors='
                f"{self.reorder_num_neighbors!r}"
            )
        if self.bytes_per_vector is not None and self.dimensions_per_block:
            raise ValueError(
                "Give `bytes_per_vector` or `dimensions_per_block`, not "
                "both: each fixes the code size."
            )
        if self.bytes_per_vector is None and self.dimensions_per_block is None:
            object.__setattr__(
                self, "bytes_per_vector", COMPACT_BYTES_PER_VECTOR
            )


@dataclasses.dataclass(frozen=True)
class ScannParams:
    """The parameters a ScaNN searcher is built with, resolved for N vectors.

    Stored in the manifest (as `to_dict()`, under `params.built`) and in
    `ScannIndex.built_params`. Fields that do not apply are None (e.g.
    `hash_type` when `scoring` is `"brute_force"`).

    Attributes:
        mode: `"fast"` or `"compact"`.
        scoring: `"ah"` (PQ codes) or `"brute_force"` (float32 vectors).
        num_leaves: leaves of the tree; 0 for no tree.
        num_leaves_to_search: default leaves searched per query (0: no
            tree).
        projection_dim: dimensions kept by the compact-mode PCA; 0 for none.
        hash_type: `"lut16"` or `"lut256"` (None without codes).
        dimensions_per_block: dimensions per PQ code (None without codes).
        num_blocks: PQ codes per vector (None without codes).
        code_bytes_per_vector: bytes of codes (or, compact brute force, of
            float32 projected vectors) per vector; None in fast brute force.
        training_sample_size: vectors the tree and codebooks train on.
        spherical_tree: spherical k-means for the tree (None: no tree).
        anisotropic_quantization_threshold: None when off.
        reorder_num_neighbors: fast mode with codes: candidates re-scored.
        reorder_dtype: fast mode with codes: `"float32"` or `"int8"`.
    """

    mode: str
    scoring: str
    num_leaves: int
    num_leaves_to_search: int
    projection_dim: int
    hash_type: str | None
    dimensions_per_block: int | None
    num_blocks: int | None
    code_bytes_per_vector: int | None
    training_sample_size: int
    spherical_tree: bool | None
    anisotropic_quantization_threshold: float | None
    reorder_num_neighbors: int | None
    reorder_dtype: str | None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (the manifest's form)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------
# One rule per function.


def check_recall(name: str, value: Any) -> float | None:
    """None, or `value` as a float in (0, 1]; raises `ValueError` naming
    the argument and the value otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real) and 0 < value <= 1
    ):
        raise ValueError(
            f"`{name}` must be a float in (0, 1] (or None). Received: "
            f"{name}={value!r}"
        )
    return float(value)


def check_search_int(name: str, value: Any, allow_none: bool = False):
    """`value` as an int >= 1 (None passes with `allow_none`); raises
    `ValueError` naming the argument and the value otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an int >= 1. Received: {value!r}")
    if value < 1:
        raise ValueError(f"`{name}` must be an int >= 1. Received: {value!r}")
    return int(value)


def num_leaves_for(n: int, requested: int | None = None) -> int:
    """Leaves of the partitioning tree for `n` vectors; 0 for no tree.

    Args:
        n: int. Collection size.
        requested: int or None. The user's count (0: no tree); None for
            round(sqrt(n)) from `MIN_TREE_SIZE` vectors on, else no tree.

    Returns:
        The count. An explicit count is dropped (0) when it is 1 or there
        are fewer than `MIN_POINTS_PER_LEAF` vectors per leaf (or under 16
        vectors in all): ScaNN cannot train such a tree.
    """
    if requested is None:
        return int(round(math.sqrt(n))) if n >= MIN_TREE_SIZE else 0
    if requested and (
        requested < 2 or n < max(16, MIN_POINTS_PER_LEAF * requested)
    ):
        logger.info(
            "ScannIndex: %d vectors are too few for %d leaves; searching "
            "without a tree.",
            n,
            requested,
        )
        return 0
    return int(requested)


def num_leaves_for_target(
    n: int, requested: int | None = None, mode: str = "fast"
) -> int:
    """Leaves of the tree of an index built for a target recall.

    `requested` if given (as `num_leaves_for`); none below
    `MIN_TARGET_TREE_SIZE` vectors in fast mode (`MIN_TREE_SIZE` in
    compact mode, whose recall is the codes': a small tree only lowers
    it); else `LEAVES_PER_SQRT_N` * sqrt(n), `LARGE_LEAVES_PER_SQRT_N` *
    sqrt(n) from `LARGE_TREE_SIZE` vectors on.
    """
    least = MIN_TARGET_TREE_SIZE if mode == "fast" else MIN_TREE_SIZE
    if requested is not None or n < least:
        return num_leaves_for(n, requested)
    per_root = (
        LARGE_LEAVES_PER_SQRT_N if n >= LARGE_TREE_SIZE else LEAVES_PER_SQRT_N
    )
    return int(round(per_root * math.sqrt(n)))


def shard_num_leaves(rows, total, mode="fast", requested=None) -> int:
    """Leaves of a shard of `rows` out of `total` vectors searched together
    (`ShardedIndex`): `requested` if given (as `num_leaves_for_target`),
    else the tree of one index of all `total` vectors, at most a leaf per
    `MIN_SHARD_ROWS_PER_LEAF` rows; 0 if a shard of `rows` gets no tree.

    A shard holds 1/S of every neighbourhood: with one index's tree, `t`
    leaves per shard cover what `t` leaves of one index cover. A tree of
    the shard's own size cuts S^(1/2) times more coarsely: 4 shards of 1M
    x 512 clustered rows with 1000 leaves each reached recall@10 0.883 at
    1 leaf per shard, with 2000 leaves 0.968; one index 0.976
    (`benchmarks/beam.py` part b).

    >>> shard_num_leaves(250_000, 1_000_000), shard_num_leaves(500, 2000)
    (2000, 0)
    """
    if requested is not None or not num_leaves_for_target(rows, None, mode):
        return num_leaves_for_target(rows, requested, mode)
    whole = num_leaves_for_target(max(total, rows), None, mode)
    return max(2, min(whole, rows // MIN_SHARD_ROWS_PER_LEAF))


def num_leaves_to_search_for(
    num_leaves: int, requested: int | None = None
) -> int:
    """Leaves searched per query by default: `LEAVES_SEARCHED`, at least 8.

    Args:
        num_leaves: int. Leaves of the tree (0: no tree, returns 0).
        requested: int or None. The user's count, capped at `num_leaves`.
    """
    if not num_leaves:
        return 0
    if requested is None:
        requested = max(
            MIN_LEAVES_SEARCHED, math.ceil(LEAVES_SEARCHED * num_leaves)
        )
    return min(requested, num_leaves)


def scoring_for(mode: str, n: int, num_leaves: int) -> str:
    """`"brute_force"` (float32 vectors) or `"ah"` (PQ codes).

    Fast mode scores a collection of fewer than `MAX_BRUTE_FORCE_SIZE`
    vectors without a tree exactly; compact mode keeps (projected) floats
    below 16 vectors, too few to train even 16-centre codebooks.
    """
    if mode == "fast" and n < MAX_BRUTE_FORCE_SIZE and not num_leaves:
        return "brute_force"
    if mode == "compact" and n < CENTRES["lut16"]:
        return "brute_force"
    return "ah"


def hash_type_for(mode: str, n: int, requested: str | None = None) -> str:
    """PQ code type: `requested`, else `"lut256"` in compact mode and
    `"lut16"` in fast mode; `"lut16"` whenever `n` < 256 (ScaNN trains no
    256-centre codebook on fewer points)."""
    hash_type = requested or ("lut256" if mode == "compact" else "lut16")
    if hash_type == "lut256" and n < CENTRES["lut256"]:
        return "lut16"
    return hash_type


def projection_dim_for(options: ScannOptions, n: int, scoring: str) -> int:
    """Dimensions kept by compact mode's PCA (+ rotation); 0 for none.

    - fast mode: 0 (the floats re-order the candidates as they are);
    - compact brute force (n < 16): the data's span, at most n - 1 and at
      most `bytes_per_vector // 4` dimensions (float32), so the vectors
      are kept losslessly within the code budget; 0 if the user asked for
      no projection (`projection_dim=0`);
    - compact with codes: `projection_dim` if given, else
      `PROJECTION_DIMS_PER_BYTE * bytes_per_vector`, or 0 when the code
      size is set by `dimensions_per_block` instead.

    Always capped at the dimension.
    """
    d = options.dimension
    requested = options.projection_dim
    if options.mode != "compact":
        return 0
    if scoring == "brute_force" and requested != 0:
        budget = (options.bytes_per_vector or 4 * d) // 4
        return max(1, min(d, n - 1, budget))
    if requested is not None:
        return min(requested, d)
    if options.bytes_per_vector is not None:
        return min(PROJECTION_DIMS_PER_BYTE * options.bytes_per_vector, d)
    return 0


def dimensions_per_block_for(
    options: ScannOptions, width: int, hash_type: str
) -> int:
    """Dimensions per PQ code, for vectors of `width` dimensions.

    `dimensions_per_block` if given; else `FAST_DIMENSIONS_PER_BLOCK` in
    fast mode and, in compact mode, the smallest block giving at most
    `bytes_per_vector` bytes of `hash_type` codes. Capped at `width`.
    """
    dpb = options.dimensions_per_block
    if dpb is None:
        if options.mode == "fast":
            dpb = FAST_DIMENSIONS_PER_BLOCK
        else:
            codes = options.bytes_per_vector * 8 // CODE_BITS[hash_type]
            dpb = max(1, math.ceil(width / codes))
    return min(dpb, width)


def training_sample_size_for(
    n: int, num_leaves: int, requested: int | None = None
) -> int:
    """Vectors the tree and codebooks train on: `requested`, else
    max(`MIN_TRAINING_SAMPLE`, `TRAINING_POINTS_PER_LEAF` * num_leaves);
    never more than `n`."""
    sample = requested or max(
        MIN_TRAINING_SAMPLE, TRAINING_POINTS_PER_LEAF * num_leaves
    )
    return int(min(n, sample))


def anisotropic_threshold_for(
    mode: str, scoring: str, requested: float | None = None
) -> float | None:
    """ScaNN's anisotropic threshold; None when off.

    `requested` if given (NaN: off); else 0.2 in compact mode, where PQ
    scores are the final ranking, and off in fast mode, where re-ordering
    makes it moot (and it doubles the encoding time). Off without codes.
    """
    if scoring != "ah":
        return None
    if requested is None:
        requested = (
            COMPACT_ANISOTROPIC_THRESHOLD if mode == "compact" else math.nan
        )
    return None if math.isnan(requested) else requested


def reorder_num_neighbors_for(
    mode: str, scoring: str, requested: int | None = None
) -> int | None:
    """Candidates re-scored exactly: fast mode with codes only; default
    `REORDER_NUM_NEIGHBORS`."""
    if mode != "fast" or scoring != "ah":
        return None
    return requested or REORDER_NUM_NEIGHBORS


def resolve_params(options: ScannOptions, n: int) -> ScannParams:
    """All build parameters for `n` vectors (see the module docstring).

    Args:
        options: `ScannOptions`. What the user asked for.
        n: int >= 0. Collection size (an index of 0 vectors builds nothing;
            the result is then only indicative).

    Returns:
        A `ScannParams`.
    """
    mode = options.mode
    leaves = (
        num_leaves_for(n, options.num_leaves)
        if options.target_recall is None
        else num_leaves_for_target(n, options.num_leaves, mode=mode)
    )
    scoring = scoring_for(mode, n, leaves)
    hash_type = hash_type_for(mode, n, options.hash_type)
    proj = projection_dim_for(options, n, scoring)
    width = proj or options.dimension
    dpb = dimensions_per_block_for(options, width, hash_type)
    num_blocks = math.ceil(width / dpb)
    ah = scoring == "ah"
    reorder = reorder_num_neighbors_for(
        mode, scoring, options.reorder_num_neighbors
    )
    if ah:
        code_bytes = math.ceil(num_blocks * CODE_BITS[hash_type] / 8)
    else:  # compact mode keeps float32 (projected) vectors
        code_bytes = 4 * width if mode == "compact" else None
    return ScannParams(
        mode=mode,
        scoring=scoring,
        num_leaves=leaves,
        num_leaves_to_search=num_leaves_to_search_for(
            leaves, options.num_leaves_to_search
        ),
        projection_dim=proj,
        hash_type=hash_type if ah else None,
        dimensions_per_block=dpb if ah else None,
        num_blocks=num_blocks if ah else None,
        code_bytes_per_vector=code_bytes,
        training_sample_size=training_sample_size_for(
            n, leaves, options.training_sample_size
        ),
        spherical_tree=options.spherical_tree if leaves else None,
        anisotropic_quantization_threshold=anisotropic_threshold_for(
            mode, scoring, options.anisotropic_quantization_threshold
        ),
        reorder_num_neighbors=reorder,
        reorder_dtype=options.reorder_dtype if reorder else None,
    )


# ----------------------------------------------------------------------
# Search time: the built values and per-search overrides.


def leaves_to_search(
    num_leaves: int, default: int, override: int | None = None
) -> int:
    """Leaves scored for one search; 0 when the index has no tree.

    Args:
        num_leaves: int. Leaves of the built tree (`ScannParams`).
        default: int. The built `num_leaves_to_search`.
        override: int or None. `ScannIndex.num_leaves_to_search` when set
            after the build. Capped at `num_leaves`.
    """
    if not num_leaves:
        return 0
    return min(int(override or default), num_leaves)


def pre_reorder_neighbors(
    k: int, default: int | None, override: int | None = None
) -> int:
    """Candidates kept before re-ordering for a top-`k` search.

    `k` when the index does not re-order (`default` None or 0); else the
    larger of `k` and `override or default`.
    """
    if not default:
        return k
    return max(k, override or default)
