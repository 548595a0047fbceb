import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.layers import RegionProposal
from keras_rmac.layers import functional
from tests.helpers import run_layer_test
from tests.layers.grid_oracle import oracle_regions

SIZES = [(h, w) for h in range(1, 41) for w in range(1, 41)]


@tf.function(
    input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)]
)
def _traced_regions(h, w):
    return functional.rmac_regions(h, w)


def test_static_grid_matches_oracle_for_every_map_up_to_40x40():
    bad = [
        (h, w)
        for h, w in SIZES
        if functional.rmac_regions_numpy(h, w).tolist() != oracle_regions(h, w)
    ]
    assert bad == []


def test_traced_grid_matches_oracle_for_every_map_up_to_40x40():
    bad = [
        (h, w)
        for h, w in SIZES
        if _traced_regions(h, w).numpy().tolist() != oracle_regions(h, w)
    ]
    assert bad == []


@pytest.mark.parametrize(
    "levels,overlap,include_global",
    [
        (1, 0.4, True),
        (2, 0.4, False),
        (4, 0.4, True),
        (3, 0.25, True),
        (3, 0.6, False),
        (0, 0.4, True),
    ],
)
def test_other_grid_arguments_match_oracle(levels, overlap, include_global):
    sizes = [
        (1, 1),
        (3, 7),
        (7, 3),
        (5, 9),
        (9, 5),
        (2, 32),
        (31, 17),
        (24, 32),
        (40, 40),
        (13, 1),
    ]
    for h, w in sizes:
        want = oracle_regions(h, w, levels, overlap, include_global)
        got = functional.rmac_regions_numpy(
            h, w, levels, overlap, include_global
        )
        assert got.reshape(-1, 4).tolist() == want, (h, w)
        traced = functional.rmac_regions(h, w, levels, overlap, include_global)
        assert np.asarray(traced).reshape(-1, 4).tolist() == want, (h, w)


def test_tie_on_5x9_is_broken_by_float32_towards_one_extra_region():
    # min side 5, long side 9: with 1 extra region the step is 4 and the
    # overlap (25 - 5 * 4) / 25 = 0.2; with 2 extra regions the step is 2
    # and the overlap is 0.6. Both are 0.2 away from 0.4 in exact
    # arithmetic; in float32 |0.2f - 0.4f| < |0.6f - 0.4f|, so the first
    # candidate wins: 2 regions of side 5 at level 1, at x = 0 and 4.
    regions = functional.rmac_regions_numpy(5, 9)
    level1 = regions[1:3].tolist()
    assert level1 == [[0, 0, 5, 5], [4, 0, 5, 5]]
    assert regions[3:4].tolist() == [[0, 0, 3, 3]]


def test_offsets_near_an_integer_on_2x32_follow_float32():
    # 2x32: 6 extra regions along the width. Level 2 has side 1 (wl2 = -1)
    # and 8 columns with step 31 / 7 = 4.4285712 in float32. The last
    # offset is floor(-1 + f32(7 * 4.4285712)) + 1 where the float32
    # product is 30.999998, not 31: the region starts at 30, not 31.
    regions = functional.rmac_regions_numpy(2, 32).tolist()
    level2 = [r for r in regions if r[2] == 1][:16]
    xs = [r[0] for r in level2[:8]]
    assert xs == [0, 4, 8, 13, 17, 22, 26, 30]
    assert {r[1] for r in level2[:8]} == {0}
    assert {r[1] for r in level2[8:16]} == {1}


def test_1x1_map_has_global_region_and_one_level_one_region():
    # Level 1 side floor(2 / 2) = 1; levels 2, 3 have side 0 and are skipped.
    assert functional.rmac_regions_numpy(1, 1).tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ]


def test_regions_stay_inside_the_map():
    for h, w in SIZES:
        r = functional.rmac_regions_numpy(h, w)
        assert (r[:, 0] >= 0).all() and (r[:, 1] >= 0).all()
        assert (r[:, 0] + r[:, 2] <= w).all() and (r[:, 1] + r[:, 3] <= h).all()


def test_layer_serialization_and_traced_call():
    x = np.random.default_rng(0).random((2, 5, 9, 3)).astype("float32")
    out = run_layer_test(
        RegionProposal,
        {"levels": 3, "overlap": 0.4},
        x,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        expected_output=np.asarray(oracle_regions(5, 9)),
    )
    assert out.dtype == np.int32


def test_layer_output_shape_known_for_static_maps():
    layer = RegionProposal()
    assert layer.compute_output_shape((None, 5, 9, 3)) == (21, 4)
    assert layer.compute_output_shape((None, None, 9, 3)) == (None, 4)


@pytest.mark.parametrize(
    "kwargs",
    [{"levels": -1}, {"levels": 2.5}, {"overlap": 1.0}, {"overlap": -0.1}],
)
def test_invalid_arguments_name_the_value(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[0]):
        RegionProposal(**kwargs)


def test_empty_map_is_rejected():
    with pytest.raises(ValueError, match="0x4"):
        functional.rmac_regions_numpy(0, 4)
