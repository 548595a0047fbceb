"""ScaNN's parameter policy, rule by rule, apart from ScaNN and files."""

import json
import math
import pathlib

import pytest

from keras_rmac.search import ScannIndex
from keras_rmac.search import scann_policy as P
from keras_rmac.search.scann_policy import ScannOptions

EDGE_NS = [0, 1, 15, 16, 255, 256, 1999, 2000, 19999, 20000, 1_000_000]
GOLDEN = pathlib.Path(__file__).parent / "data" / "scann_params_0.2.0.json"


def fast(**kwargs):
    return ScannOptions(dimension=512, mode="fast", **kwargs)


def compact(dimension=1280, **kwargs):
    return ScannOptions(dimension=dimension, mode="compact", **kwargs)


# ----------------------------------------------------------------------
# The tree.


@pytest.mark.parametrize(
    "n, leaves",
    [(0, 0), (1, 0), (15, 0), (16, 0), (255, 0), (256, 0), (1999, 0)]
    + [(2000, 0), (19999, 0), (20000, 141), (1_000_000, 1000)],
)
def test_default_tree_from_20000_vectors(n, leaves):
    assert P.num_leaves_for(n) == leaves


@pytest.mark.parametrize(
    "rows, total, mode, leaves",
    [
        # One index of all rows: 2 sqrt(1M) = 2000 leaves, for each shard.
        (250_000, 1_000_000, "fast", 2000),
        (1_000_000, 1_000_000, "fast", 2000),  # one shard: its own tree
        # 40k rows: sqrt(40k) = 200 (below LARGE_TREE_SIZE), 10k per shard.
        (10_000, 40_000, "fast", 200),
        # Capped at a leaf per 32 rows: 1M in 100 shards of 10k.
        (10_000, 1_000_000, "fast", 312),
        (999, 1_000_000, "fast", 0),  # no tree for a shard this small
        (1000, 1_000_000, "fast", 31),
        (19_999, 1_000_000, "compact", 0),  # compact: trees from 20k
        (20_000, 80_000, "compact", 566),  # 2 sqrt(80k) = 565.7
    ],
)
def test_shard_leaves_are_one_index_tree(rows, total, mode, leaves):
    assert P.shard_num_leaves(rows, total, mode) == leaves


@pytest.mark.parametrize(
    "n, requested, leaves",
    [
        (1_000_000, 0, 0),  # 0 asks for no tree
        (1_000_000, 1, 0),  # one leaf is no tree
        (15, 2, 0),  # under 16 vectors
        (16, 2, 2),
        (31, 8, 0),  # fewer than 4 vectors per leaf
        (32, 8, 8),
        (255, 64, 0),
        (256, 64, 64),
        (19999, 300, 300),  # explicit knob: a tree below MIN_TREE_SIZE
        (1_000_000, 5000, 5000),
    ],
)
def test_explicit_tree_unless_too_few_vectors_per_leaf(n, requested, leaves):
    assert P.num_leaves_for(n, requested) == leaves


@pytest.mark.parametrize(
    "num_leaves, requested, searched",
    [
        (0, None, 0),
        (0, 5, 0),
        (5, None, 5),  # at least 8, but never more than the leaves
        (100, None, 8),
        (141, None, 8),
        (160, None, 8),
        (161, None, 9),  # 5% rounded up
        (1000, None, 50),
        (100, 3, 3),
        (100, 500, 100),
    ],
)
def test_leaves_searched(num_leaves, requested, searched):
    assert P.num_leaves_to_search_for(num_leaves, requested) == searched


# ----------------------------------------------------------------------
# Scoring and codes.


@pytest.mark.parametrize(
    "mode, n, leaves, scoring",
    [
        ("fast", 0, 0, "brute_force"),
        ("fast", 1999, 0, "brute_force"),
        ("fast", 2000, 0, "ah"),
        ("fast", 1999, 8, "ah"),  # a tree means codes
        ("fast", 1_000_000, 1000, "ah"),
        ("compact", 0, 0, "brute_force"),
        ("compact", 15, 0, "brute_force"),
        ("compact", 16, 0, "ah"),
        ("compact", 1999, 0, "ah"),
    ],
)
def test_scoring(mode, n, leaves, scoring):
    assert P.scoring_for(mode, n, leaves) == scoring


@pytest.mark.parametrize(
    "mode, n, requested, hash_type",
    [
        ("compact", 255, None, "lut16"),  # too few for 256 centres
        ("compact", 256, None, "lut256"),
        ("compact", 1_000_000, None, "lut256"),
        ("compact", 1_000_000, "lut16", "lut16"),
        ("fast", 1_000_000, None, "lut16"),
        ("fast", 1_000_000, "lut256", "lut256"),
        ("fast", 100, "lut256", "lut16"),
    ],
)
def test_hash_type(mode, n, requested, hash_type):
    assert P.hash_type_for(mode, n, requested) == hash_type


@pytest.mark.parametrize(
    "options, n, scoring, dim",
    [
        (fast(), 1_000_000, "ah", 0),
        (compact(bytes_per_vector=64), 1_000_000, "ah", 256),
        (compact(bytes_per_vector=16), 256, "ah", 64),
        (compact(512, bytes_per_vector=128), 1_000_000, "ah", 512),  # cap D
        (
            compact(512, bytes_per_vector=64, projection_dim=100),
            10**6,
            "ah",
            100,
        ),
        (compact(512, dimensions_per_block=8), 1_000_000, "ah", 0),
        # Under 16 vectors: the data's span (n - 1 dimensions), at most
        # bytes_per_vector // 4 float32 values, at least one.
        (compact(32, bytes_per_vector=64), 15, "brute_force", 14),
        (compact(32, bytes_per_vector=64), 5, "brute_force", 4),
        (compact(32, bytes_per_vector=8), 5, "brute_force", 2),
        (compact(32, bytes_per_vector=8), 1, "brute_force", 1),
        (compact(32, bytes_per_vector=8), 0, "brute_force", 1),
        (compact(32, dimensions_per_block=2), 15, "brute_force", 14),
        # projection_dim=0 asks for none, also for tiny collections.
        (
            compact(32, bytes_per_vector=8, projection_dim=0),
            5,
            "brute_force",
            0,
        ),
    ],
)
def test_projection_dim(options, n, scoring, dim):
    assert P.scoring_for(options.mode, n, 0) == scoring or n >= 16
    assert P.projection_dim_for(options, n, scoring) == dim


@pytest.mark.parametrize(
    "options, width, hash_type, dpb",
    [
        (fast(), 512, "lut16", 2),
        (fast(dimensions_per_block=4), 512, "lut16", 4),
        (compact(bytes_per_vector=64), 256, "lut256", 4),
        (compact(bytes_per_vector=64), 256, "lut16", 2),
        (compact(bytes_per_vector=8), 1280, "lut256", 160),
        (compact(bytes_per_vector=1000), 1280, "lut256", 2),
        (compact(bytes_per_vector=1000), 5, "lut256", 1),
        (compact(dimensions_per_block=3), 1280, "lut256", 3),
        (compact(dimensions_per_block=8), 5, "lut256", 5),  # capped
    ],
)
def test_dimensions_per_block(options, width, hash_type, dpb):
    assert P.dimensions_per_block_for(options, width, hash_type) == dpb


@pytest.mark.parametrize("dimension", [64, 1280])
@pytest.mark.parametrize("n", [16, 255, 256, 20000, 1_000_000])
def test_every_bytes_per_vector_fits_its_budget(dimension, n):
    for budget in range(1, 700):
        params = P.resolve_params(
            compact(dimension, bytes_per_vector=budget), n
        )
        assert params.scoring == "ah"
        assert params.code_bytes_per_vector <= budget, budget
        if P.PROJECTION_DIMS_PER_BYTE * budget <= dimension:
            # The default projection uses the budget exactly.
            assert params.code_bytes_per_vector == budget, budget
            assert params.projection_dim == 4 * budget


@pytest.mark.parametrize("n", [1, 2, 5, 15])
def test_tiny_compact_collections_fit_the_budget_as_float32(n):
    for budget in range(4, 300):
        params = P.resolve_params(compact(32, bytes_per_vector=budget), n)
        assert params.scoring == "brute_force"
        assert params.code_bytes_per_vector == 4 * params.projection_dim
        assert params.code_bytes_per_vector <= budget
    # Below 4 bytes one float32 value is the floor.
    tiny = P.resolve_params(compact(32, bytes_per_vector=3), n)
    assert tiny.code_bytes_per_vector == 4


@pytest.mark.parametrize(
    "n, leaves, requested, sample",
    [
        (0, 0, None, 0),
        (1, 0, None, 1),
        (20000, 141, None, 20000),
        (1_000_000, 0, None, 50_000),
        (1_000_000, 1000, None, 200_000),
        (1_000_000, 1000, 5000, 5000),
        (100, 0, 5000, 100),
    ],
)
def test_training_sample_size(n, leaves, requested, sample):
    assert P.training_sample_size_for(n, leaves, requested) == sample


def test_anisotropic_threshold_and_reordering():
    assert P.anisotropic_threshold_for("compact", "ah") == 0.2
    assert P.anisotropic_threshold_for("fast", "ah") is None
    assert P.anisotropic_threshold_for("compact", "brute_force") is None
    assert P.anisotropic_threshold_for("compact", "ah", math.nan) is None
    assert P.anisotropic_threshold_for("fast", "ah", 0.3) == 0.3
    assert P.reorder_num_neighbors_for("fast", "ah") == 200
    assert P.reorder_num_neighbors_for("fast", "ah", 50) == 50
    assert P.reorder_num_neighbors_for("fast", "brute_force", 50) is None
    assert P.reorder_num_neighbors_for("compact", "ah") is None


def test_search_time_overrides():
    assert P.leaves_to_search(0, 0, 5) == 0  # no tree: nothing to search
    assert P.leaves_to_search(100, 8) == 8
    assert P.leaves_to_search(100, 8, 3) == 3
    assert P.leaves_to_search(100, 8, 500) == 100
    assert P.pre_reorder_neighbors(10, None, 50) == 10  # no re-ordering
    assert P.pre_reorder_neighbors(10, 200) == 200
    assert P.pre_reorder_neighbors(300, 200) == 300
    assert P.pre_reorder_neighbors(10, 200, 50) == 50


# ----------------------------------------------------------------------
# All together.


@pytest.mark.parametrize("n", EDGE_NS)
def test_resolve_params_at_the_edges(n):
    fast_params = P.resolve_params(fast(target_recall=None), n)
    assert fast_params.num_leaves == (0 if n < 20000 else round(n**0.5))
    assert fast_params.scoring == ("brute_force" if n < 2000 else "ah")
    assert (fast_params.reorder_num_neighbors == 200) == (n >= 2000)
    assert fast_params.projection_dim == 0
    assert fast_params.training_sample_size == min(n, 200_000)
    # With a recall target (the default) the measured leaf rule applies.
    tuned = P.resolve_params(fast(), n)
    leaves = 0 if n < 1000 else round((1 if n < 50_000 else 2) * n**0.5)
    assert tuned.num_leaves == leaves
    assert tuned.training_sample_size == min(n, max(50_000, 200 * leaves))
    small = P.resolve_params(compact(bytes_per_vector=64), n)
    assert small.scoring == ("brute_force" if n < 16 else "ah")
    if n >= 16:
        assert small.hash_type == ("lut256" if n >= 256 else "lut16")
        assert small.code_bytes_per_vector == 64
        assert small.projection_dim == 256
        assert small.anisotropic_quantization_threshold == 0.2
    assert small.reorder_num_neighbors is None
    assert small.to_dict() == ScannIndex(
        1280, "compact", bytes_per_vector=64
    ).resolved_params(n)


def test_explicit_knobs_override_the_policy():
    options = fast(
        num_leaves=50,
        num_leaves_to_search=7,
        dimensions_per_block=4,
        reorder_num_neighbors=30,
        reorder_dtype="int8",
        training_sample_size=1000,
        spherical_tree=False,
        anisotropic_quantization_threshold=0.1,
        hash_type="lut256",
    )
    params = P.resolve_params(options, 1_000_000)
    assert (params.num_leaves, params.num_leaves_to_search) == (50, 7)
    assert params.dimensions_per_block == 4 and params.hash_type == "lut256"
    assert params.num_blocks == 128 and params.code_bytes_per_vector == 128
    assert params.reorder_num_neighbors == 30
    assert params.reorder_dtype == "int8"
    assert params.training_sample_size == 1000
    assert params.spherical_tree is False
    assert params.anisotropic_quantization_threshold == 0.1


def test_options_validate_and_default():
    assert compact(bytes_per_vector=None).bytes_per_vector == 64
    assert compact(dimensions_per_block=4).bytes_per_vector is None
    assert math.isnan(
        fast(
            anisotropic_quantization_threshold="nan"
        ).anisotropic_quantization_threshold
    )
    with pytest.raises(ValueError, match="mode"):
        ScannOptions(dimension=8, mode="exact")
    with pytest.raises(ValueError, match="num_leaves"):
        fast(num_leaves=-1)
    with pytest.raises(ValueError, match="exceeds"):
        compact(8, projection_dim=9)


def test_same_parameters_as_keras_rmac_0_2_0():
    # Regression: ScannIndex(...).resolved_params(n) over a grid of options
    # and sizes, as keras_rmac 0.2.0 computed them before the policy moved
    # to its own module.
    golden = json.loads(GOLDEN.read_text())
    keys = golden["params_keys"]
    assert len(golden["cases"]) > 200
    for dimension, options, n, values in golden["cases"]:
        # keras_rmac 0.2.0 had no recall target: target_recall=None keeps
        # its policy exactly.
        got = ScannIndex(
            dimension, target_recall=None, **options
        ).resolved_params(n)
        assert got == dict(zip(keys, values)), (dimension, options, n)
