"""ScannIndex: recall against ExactIndex, tiny collections, both modes."""

import os

import numpy as np
import pytest

from keras_rmac.search import ExactIndex
from keras_rmac.search import ScannIndex
from keras_rmac.search.nibbles import pack_nibbles
from keras_rmac.search.nibbles import unpack_nibbles
from tests.search.helpers import clustered
from tests.search.helpers import oracle_top_k
from tests.search.helpers import recall_at_k
from tests.search.helpers import unit_rows

N, D, CENTRES = 6000, 64, 300


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = clustered(rng, N + 200, D, CENTRES)
    return x[:N], x[N:]


@pytest.fixture(scope="module")
def truth(data):
    db, q = data
    exact = ExactIndex(D)
    exact.add(db)
    return exact.search(q, 10)


@pytest.fixture(scope="module")
def fast(data):
    index = ScannIndex(D, mode="fast", num_leaves=60, num_leaves_to_search=6)
    index.add(data[0])
    index.build()
    return index


@pytest.fixture(scope="module")
def compact(data):
    index = ScannIndex(
        D,
        mode="compact",
        bytes_per_vector=16,
        num_leaves=60,
        num_leaves_to_search=12,
    )
    index.add(data[0])
    index.build()
    return index


def test_fast_mode_recall_and_exact_scores(data, truth, fast):
    db, q = data
    ids, scores = fast.search(q, 10)
    assert fast.built_params["num_leaves"] == 60
    assert recall_at_k(ids, truth[0]) >= 0.93
    # Re-ordering with float32 gives the exact inner products.
    np.testing.assert_allclose(
        scores, np.einsum("qd,qkd->qk", q, db[ids]), atol=1e-5
    )
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_compact_mode_recall(data, truth, compact):
    _, q = data
    ids, scores = compact.search(q, 10)
    assert compact.built_params["code_bytes_per_vector"] == 16
    # 16-byte codes of 64-d vectors: the tree + PQ still find most of the
    # cluster neighbours; a broken index would be near 10 / N.
    assert recall_at_k(ids, truth[0]) >= 0.5
    assert (ids >= 0).all() and np.isfinite(scores).all()


def test_compact_mode_keeps_no_floats(data, compact, tmp_path):
    db, _ = data
    # No float copy left on the object once built ...
    for name, value in vars(compact).items():
        if isinstance(value, np.ndarray):
            assert value.dtype != np.float32 or value.size < N, name
        if isinstance(value, list):
            assert not value, name
    with pytest.raises(ValueError, match="keeps no float"):
        compact.get_vectors([0])
    # ... nor in the saved directory: codes packed two per byte.
    compact.save(tmp_path / "c")
    files = {
        os.path.relpath(os.path.join(r, f), tmp_path / "c")
        for r, _, fs in os.walk(tmp_path / "c")
        for f in fs
    }
    assert not {"scann/dataset.npy", "scann/int8_dataset.npy"} & files
    assert "vectors.npy" not in files
    # Default compact codes: 8-bit (one byte per block) after a projection.
    assert compact.built_params["hash_type"] == "lut256"
    codes = np.load(tmp_path / "c" / "scann" / "hashed_dataset.npy")
    assert codes.shape == (N, 16) and codes.dtype == np.uint8
    # The index-wide projection is one (D, d') matrix and one mean.
    proj = np.load(tmp_path / "c" / "projection_matrix.npy")
    assert proj.shape == (D, compact.built_params["projection_dim"])
    total = sum(os.path.getsize(tmp_path / "c" / f) for f in files)
    assert total < N * D * 4 / 4  # far below one float32 copy
    assert not any(f.endswith(".pkl") for f in files)


def test_compact_add_after_build_is_refused(compact):
    with pytest.raises(RuntimeError, match="Build a new ScannIndex"):
        compact.add(unit_rows(np.random.default_rng(5), 2, D))


def test_fast_add_after_build_rebuilds(data):
    db, _ = data
    index = ScannIndex(D, mode="fast", num_leaves=20)
    index.add(db[:3000])
    index.search(db[:1], 1)
    assert index.is_built
    index.add(db[3000:4000], ids=np.arange(10_000, 11_000))
    assert not index.is_built
    ids, scores = index.search(db[3500:3510], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(10_500, 10_510))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(index.get_vectors([10_500]), db[[3500]])


@pytest.mark.parametrize("mode", ["fast", "compact"])
@pytest.mark.parametrize("n", [1, 2, 5, 50])
def test_tiny_collections(mode, n):
    rng = np.random.default_rng(n)
    db = unit_rows(rng, n, 32)
    q = unit_rows(rng, 4, 32)
    # 20 leaves for 50 vectors is too many: no tree either.
    index = ScannIndex(32, mode=mode, num_leaves=20 if n == 50 else None)
    index.add(db, ids=np.arange(100, 100 + n))
    ids, scores = index.search(np.concatenate([db[:1], q]), 10)
    assert ids.shape == scores.shape == (5, 10)
    found = min(n, 10)
    assert (ids[:, :found] >= 100).all() and (ids[:, found:] == -1).all()
    assert np.isneginf(scores[:, found:]).all()
    assert ids[0, 0] == 100  # a database vector finds itself
    assert index.built_params["num_leaves"] == 0  # too small for a tree
    if mode == "fast":  # brute force: exact
        want, want_scores = oracle_top_k(db, q, found)
        np.testing.assert_array_equal(ids[1:, :found], want + 100)
        np.testing.assert_allclose(scores[1:, :found], want_scores, atol=1e-5)
    else:
        for row in ids:
            assert len(set(row[:found])) == found


@pytest.mark.parametrize("mode", ["fast", "compact"])
def test_small_tree(mode):
    rng = np.random.default_rng(7)
    db = unit_rows(rng, 64, 32)
    index = ScannIndex(32, mode=mode, num_leaves=8, num_leaves_to_search=8)
    index.add(db)
    ids, _ = index.search(db[:10], 3)
    assert index.built_params["num_leaves"] == 8
    np.testing.assert_array_equal(ids[:, 0], np.arange(10))


def test_empty_index_searches_to_padding():
    index = ScannIndex(8, mode="compact")
    ids, scores = index.search(np.eye(8, dtype=np.float32)[:2], 3)
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_auto_parameters_follow_n():
    index = ScannIndex(512, mode="compact", bytes_per_vector=128)
    small = index.resolved_params(1000)
    assert small["num_leaves"] == 0 and small["scoring"] == "ah"
    big = index.resolved_params(1_000_000)
    assert big["num_leaves"] == 2000  # 2 sqrt(N) with a recall target
    legacy = ScannIndex(512, "compact", target_recall=None)
    assert legacy.resolved_params(1_000_000)["num_leaves"] == 1000
    # 8-bit codes of 4 dims after a PCA to 4 dims per byte (all 512).
    assert big["hash_type"] == "lut256"
    assert big["projection_dim"] == 512
    assert big["dimensions_per_block"] == 4
    assert big["code_bytes_per_vector"] == 128
    small64 = ScannIndex(1280, mode="compact").resolved_params(10_000)
    assert small64["projection_dim"] == 256
    assert small64["dimensions_per_block"] == 4
    assert small64["code_bytes_per_vector"] == 64
    lut16 = ScannIndex(
        512, mode="compact", bytes_per_vector=128, hash_type="lut16"
    ).resolved_params(1_000_000)
    assert lut16["dimensions_per_block"] == 2
    assert lut16["code_bytes_per_vector"] == 128
    # Too few vectors for 256-centre codebooks: 4-bit codes instead.
    assert index.resolved_params(100)["hash_type"] == "lut16"
    assert index.resolved_params(15)["scoring"] == "brute_force"
    assert big["reorder_num_neighbors"] is None
    fast = ScannIndex(512).resolved_params(1_000_000)
    assert fast["reorder_num_neighbors"] and fast["scoring"] == "ah"
    assert ScannIndex(512).resolved_params(100)["scoring"] == "brute_force"
    c64 = ScannIndex(2048, mode="compact", bytes_per_vector=64)
    assert c64.resolved_params(10**5)["code_bytes_per_vector"] == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="slow"), "mode"),
        (dict(bytes_per_vector=64), "compact"),
        (dict(mode="compact", reorder_num_neighbors=10), "re-order"),
        (
            dict(mode="compact", bytes_per_vector=64, dimensions_per_block=2),
            "not both",
        ),
        (dict(num_leaves=-3), "num_leaves"),
        (dict(reorder_dtype="float16"), "reorder_dtype"),
        (dict(dimensions_per_block=100), "exceeds"),
        (dict(mode="compact", hash_type="lut64"), "hash_type"),
        (dict(projection_dim=8), "compact-mode option"),
        (dict(mode="compact", projection_dim=65), "exceeds"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScannIndex(64, **kwargs)


def test_nibble_packing_round_trip():
    rng = np.random.default_rng(3)
    for width in (1, 2, 7, 128):
        codes = rng.integers(0, 16, (5, width)).astype(np.uint8)
        packed = pack_nibbles(codes)
        assert packed.shape == (5, (width + 1) // 2)
        # Byte j holds code 2j (low nibble) and 2j+1 (high nibble).
        assert packed[0, 0] == codes[0, 0] + 16 * (
            codes[0, 1] if width > 1 else 0
        )
        np.testing.assert_array_equal(unpack_nibbles(packed, width), codes)


def test_compact_lut16_without_projection_packs_nibbles(data, tmp_path):
    db, q = data
    index = ScannIndex(
        D, "compact", bytes_per_vector=16, hash_type="lut16", projection_dim=0
    )
    index.add(db[:2000])
    index.save(tmp_path / "c")
    assert index.built_params["dimensions_per_block"] == 2
    codes = np.load(tmp_path / "c" / "scann" / "hashed_codes_packed.npy")
    assert codes.shape == (2000, 16)
    assert not (tmp_path / "c" / "projection_matrix.npy").exists()
    loaded = ScannIndex.load(tmp_path / "c")
    for a, b in zip(loaded.search(q, 5), index.search(q, 5)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [1, 2, 5, 15])
def test_compact_tiny_collections_are_exact_and_save(n, tmp_path):
    # Fewer than 16 vectors: no codebook can be trained; the index keeps
    # the vectors projected on their (n-1)-d span, which is lossless, in
    # at most bytes_per_vector bytes each.
    rng = np.random.default_rng(n)
    db = unit_rows(rng, n, 32)
    q = unit_rows(rng, 3, 32)
    index = ScannIndex(32, mode="compact", bytes_per_vector=64)
    index.add(db)
    index.save(tmp_path / "t")
    loaded = ScannIndex.load(tmp_path / "t")
    assert loaded.built_params["scoring"] == "brute_force"
    assert loaded.built_params["code_bytes_per_vector"] <= 64
    stored = np.load(tmp_path / "t" / "scann" / "dataset.npy")
    assert stored.nbytes <= 64 * n
    k = min(n, 4)
    ids, scores = loaded.search(q, k)
    want, want_scores = oracle_top_k(db, q, k)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    np.testing.assert_array_equal(ids, want)


def test_compact_projection_against_numpy_reconstruction(tmp_path):
    # 20 distinct unit vectors, each repeated 15 times: 256-centre
    # codebooks reproduce them exactly, so the only approximations left
    # are the projection (lossless here: a 19-d affine span) and ScaNN's
    # int8 lookup tables. Scores must match the NumPy inner products.
    rng = np.random.default_rng(4)
    distinct = unit_rows(rng, 20, 48)
    db = np.repeat(distinct, 15, axis=0)
    q = unit_rows(rng, 6, 48)
    index = ScannIndex(
        48, mode="compact", bytes_per_vector=24, projection_dim=19
    )
    index.add(db)
    index.save(tmp_path / "p")
    loaded = ScannIndex.load(tmp_path / "p")
    params = loaded.built_params
    assert params["hash_type"] == "lut256" and params["projection_dim"] == 19
    # The saved projection, checked against an SVD of the centred data.
    matrix = np.load(tmp_path / "p" / "projection_matrix.npy")
    mean = np.load(tmp_path / "p" / "projection_mean.npy")
    centred = db.astype(np.float64) - db.mean(axis=0)
    np.testing.assert_allclose(mean, db.mean(axis=0), atol=1e-6)
    residual = centred - centred @ matrix @ matrix.T
    assert np.abs(residual).max() < 1e-4  # the span is kept whole
    ids, scores = loaded.search(q, 30)
    exact = q.astype(np.float64) @ db.astype(np.float64).T
    np.testing.assert_allclose(
        scores, np.take_along_axis(exact, ids, axis=1), atol=0.02
    )
    # The best distinct vector comes first (ties among its 15 copies).
    best = np.argmax(q @ distinct.T, axis=1)
    np.testing.assert_array_equal(ids[:, 0] // 15, best)


def test_tiny_compact_without_projection_saves_and_loads(tmp_path):
    # projection_dim=0 on fewer than 16 vectors: the float32 vectors are
    # kept as they are (the 0.2.0 manifest recorded a projection it never
    # fitted, and the saved index failed to load).
    rng = np.random.default_rng(2)
    db, q = unit_rows(rng, 5, 32), unit_rows(rng, 3, 32)
    index = ScannIndex(32, "compact", bytes_per_vector=8, projection_dim=0)
    index.add(db)
    index.save(tmp_path / "t")
    loaded = ScannIndex.load(tmp_path / "t")
    assert loaded.built_params["projection_dim"] == 0
    assert loaded.built_params["code_bytes_per_vector"] == 4 * 32
    ids, scores = loaded.search(q, 5)
    want, want_scores = oracle_top_k(db, q, 5)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
