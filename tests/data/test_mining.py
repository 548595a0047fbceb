"""Hard-negative mining on hand-built embeddings, and the mining callback."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_rmac.data import mining
from keras_rmac.data import triplets as T
from keras_rmac.search import ExactIndex


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _angles(degrees):
    rad = np.deg2rad(np.asarray(degrees, np.float64))
    return _unit(np.stack([np.cos(rad), np.sin(rad)], axis=1))


def test_exact_index_matches_brute_force():
    # Mining's exact search (NumpyIndex before keras_rmac.search): blocks of
    # scores, ties by position, -1 padding.
    rng = np.random.default_rng(0)
    data = _unit(rng.normal(size=(50, 6)))
    queries = _unit(rng.normal(size=(7, 6)))
    index = ExactIndex(6, block_bytes=4 * 3 * 7)
    index.add(data[:20], np.arange(100, 120))
    index.add(data[20:], np.arange(120, 150))
    ids, scores = index.search(queries, 5)
    sims = queries @ data.T
    want = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, want + 100)
    np.testing.assert_allclose(
        scores, np.take_along_axis(sims, want, 1), rtol=1e-6
    )
    ids, scores = index.search(queries, 60)  # more than stored: -1 padded
    assert (ids[:, 50:] == -1).all() and np.isneginf(scores[:, 50:]).all()


def test_hardest_negative_of_another_class_at_most_one_per_class():
    # Query at 0 deg, class 0. Pool (angle: label): the nearest images are
    # the query's own class, then two images of class 1, then class 2 ...
    pool_deg = [0, 5, 10, 12, 20, 30, 40, 90]
    pool_lab = [0, 0, 1, 1, 2, 2, 3, 4]
    queries = _angles([0, 31])
    pool = _angles(pool_deg)
    got = mining.mine_hard_negatives(
        queries, [0, 2], pool, pool_lab, num_negatives=3, index="exact"
    )
    # Query 0: class 1 at 10 deg (hardest), class 2 at 20 (12 deg is class 1
    # again: skipped), class 3 at 40.
    assert got[0].tolist() == [2, 4, 6]
    # Query 1 (31 deg, class 2): class 3 at 40, class 1 at 12, then class 0
    # at 5.
    assert got[1].tolist() == [6, 3, 1]
    # Only 4 other classes exist for query 0: padded with -1.
    got = mining.mine_hard_negatives(
        queries[:1], [0], pool, pool_lab, num_negatives=6, index="exact"
    )
    assert got[0].tolist() == [2, 4, 6, 7, -1, -1]


def test_search_widens_when_one_class_fills_the_neighbourhood():
    # 40 near-duplicates of class 1 around the query, one class-2 image far.
    pool = _angles(np.concatenate([np.linspace(1, 10, 40), [170.0]]))
    labels = np.array([1] * 40 + [2])
    got = mining.mine_hard_negatives(
        _angles([0]), [0], pool, labels, num_negatives=2, index="exact"
    )
    assert got[0].tolist() == [0, 40]


def test_exact_index_from_search_package_agrees():
    rng = np.random.default_rng(3)
    pool = _unit(rng.normal(size=(60, 8)))
    labels = rng.integers(0, 6, 60)
    queries = _unit(rng.normal(size=(9, 8)))
    qlabels = rng.integers(0, 6, 9)
    # A callable index (here an exact one scoring in blocks of 5 rows).
    want = mining.mine_hard_negatives(
        queries,
        qlabels,
        pool,
        labels,
        3,
        lambda dimension: ExactIndex(dimension, block_bytes=4 * 9 * 5),
    )
    got = mining.mine_hard_negatives(queries, qlabels, pool, labels, 3, "exact")
    np.testing.assert_array_equal(got, want)
    # Brute-force oracle for the first negative of every query.
    sims = queries @ pool.T
    sims[labels[None, :] == qlabels[:, None]] = -np.inf
    np.testing.assert_array_equal(want[:, 0], np.argmax(sims, axis=1))


def test_select_positives():
    labels = np.array([0, 0, 0, 1, 1])
    rng = np.random.default_rng(0)
    pos = mining.select_positives([0, 0, 0, 0, 3], labels, "random", rng)
    assert set(pos[:4]) <= {1, 2} and pos[4] == 4
    desc = _angles([0, 50, 10, 0, 0])
    pos = mining.select_positives(
        [0], labels, "most_similar", rng, np.arange(5), desc, desc[[0]]
    )
    assert pos.tolist() == [2]
    with pytest.raises(ValueError, match="only one"):
        mining.select_positives([0], np.array([0, 1]), "random", rng)


class ColourEmbedding(keras.Model):
    """Descriptor = L2-normalised mean colour (no weights)."""

    def call(self, images, training=False):
        mean = keras.ops.mean(images, axis=(1, 2))
        return mean / keras.ops.norm(mean, axis=1, keepdims=True)


def test_miner_callback_rewrites_table(tmp_path):
    # Class c: reddish images; class 1 is the closest colour to class 0.
    colours = {0: (200, 40, 40), 1: (190, 60, 40), 2: (40, 40, 200)}
    paths, labels = [], []
    for c, colour in colours.items():
        for i in range(4):
            path = str(tmp_path / f"{c}_{i}.png")
            image = np.zeros((8, 8, 3), np.uint8)
            image[:] = np.array(colour) + i
            Image.fromarray(image).save(path)
            paths.append(path)
            labels.append(c)
    images = T.LabelledImages.from_labels(paths, labels)
    table = T.TripletTable(T.random_triplets(images.labels, 12, 0))
    miner = mining.HardNegativeMiner(
        images,
        table,
        image_size=8,
        pool_size=12,
        embedding=ColourEmbedding(),
        index="exact",
        verbose=0,
    )
    miner.on_epoch_begin(0)
    rows = table.snapshot()
    assert rows.shape == (12, 3) and table.mined_epoch == 0
    q, p, n = rows.T
    lab = images.labels
    assert np.all(lab[q] == lab[p]) and np.all(q != p)
    # Oracle: each negative is the most similar image (cosine of the solid
    # colours) among all other-class images (the pool holds all 12).
    rgb = _unit([np.array(colours[c]) + i for c in colours for i in range(4)])
    for qi, ni in zip(q, n):
        assert lab[ni] != lab[qi]
        others = np.flatnonzero(lab != lab[qi])
        best = np.max(rgb[others] @ rgb[qi])
        np.testing.assert_allclose(rgb[ni] @ rgb[qi], best, rtol=1e-6)
    # Classes 0 and 1 (reddish) are each other's hardest negatives.
    assert all(lab[ni] == 1 - lab[qi] for qi, ni in zip(q, n) if lab[qi] < 2)
    # Restored table for this epoch: no second mining.
    version = table.version
    miner.on_epoch_begin(0)
    assert table.version == version
    miner.on_epoch_begin(1)
    assert table.version == version + 1 and table.mined_epoch == 1
    os.remove(paths[0])  # unreadable image: skipped, mining still works
    miner.on_epoch_begin(2)
    assert 0 not in table.snapshot()[:, 0]


def test_old_index_spellings_are_deprecated_aliases():
    pool = _angles([0, 10, 20, 90])
    with pytest.warns(DeprecationWarning, match="'exact'"):
        got = mining.mine_hard_negatives(
            pool[:1], [0], pool, [0, 1, 1, 2], 2, "numpy"
        )
    assert got.tolist() == [[1, 3]]
    images = T.LabelledImages.from_labels(["a", "b", "c", "d"], [0, 0, 1, 1])
    table = T.TripletTable(T.random_triplets(images.labels, 4, 0))
    with pytest.warns(DeprecationWarning, match="'fast'"):
        miner = mining.HardNegativeMiner(images, table, index="scann")
    assert miner.index == "fast"
    extract = object()
    with pytest.warns(DeprecationWarning, match="extract_fn"):
        miner = mining.HardNegativeMiner(images, table, embed_fn=extract)
    assert miner.extract_fn is extract
    with pytest.raises(TypeError, match="not both"):
        with pytest.warns(DeprecationWarning):
            mining.HardNegativeMiner(
                images, table, embed_fn=extract, extract_fn=extract
            )


def test_mean_cosine_matches_the_pairwise_mean():
    rng = np.random.default_rng(3)
    d = _unit(rng.normal(size=(7, 5)))
    gram = d.astype(np.float64) @ d.T.astype(np.float64)
    want = (gram.sum() - np.trace(gram)) / (7 * 6)
    np.testing.assert_allclose(mining.mean_cosine(d), want, rtol=1e-9)
    assert mining.mean_cosine(np.ones((4, 3)) / np.sqrt(3)) == pytest.approx(1)
    assert mining.mean_cosine(np.eye(3)) == 0
    assert np.isnan(mining.mean_cosine(np.ones((1, 3))))


class SwitchEmbedding(keras.Model):
    """`ColourEmbedding`, or every image to one unit vector (a collapsed
    model) once `collapsed` is set to 1 (a variable: the miner's traced
    function reads it)."""

    def __init__(self):
        super().__init__()
        self.collapsed = keras.Variable(0.0, trainable=False)

    def call(self, images, training=False):
        colour = ColourEmbedding()(images)
        one = keras.ops.ones_like(colour) / np.sqrt(3.0)
        return colour + self.collapsed * (one - colour)


def test_miner_warns_when_the_descriptors_collapse(tmp_path, caplog):
    paths, labels = [], []
    for c in range(3):
        for i in range(2):
            path = str(tmp_path / f"{c}_{i}.png")
            # Class c: channel c bright (distinct colours, cosine ~0.1).
            image = np.full((8, 8, 3), 10 + i, np.uint8)
            image[..., c] = 200
            Image.fromarray(image).save(path)
            paths.append(path)
            labels.append(c)
    images = T.LabelledImages.from_labels(paths, labels)

    def miner(embedding):
        return mining.HardNegativeMiner(
            images,
            T.TripletTable(T.random_triplets(images.labels, 6, 0)),
            image_size=8,
            pool_size=6,
            embedding=embedding,
            verbose=0,
        )

    embedding = SwitchEmbedding()
    sound_then_collapsed = miner(embedding)
    with caplog.at_level("WARNING", logger="keras_rmac.data.mining"):
        sound_then_collapsed.on_epoch_begin(0)
        assert "collapsing" not in caplog.text
        embedding.collapsed.assign(1.0)
        sound_then_collapsed.on_epoch_begin(1)
    first, second = sound_then_collapsed.history
    assert first["pool_similarity"] < 0.5
    assert second["pool_similarity"] == pytest.approx(1)
    assert "epoch 1" in caplog.text and "mean cosine of 1.00" in caplog.text
    assert "negatives='semihard'" in caplog.text
    # Similar from the first round (e.g. no shift + PCA): no alarm.
    caplog.clear()
    with caplog.at_level("WARNING", logger="keras_rmac.data.mining"):
        miner(embedding).on_epoch_begin(0)
    assert "collapsing" not in caplog.text


def _semihard_oracle(queries, qlabels, pool, labels, count, bound):
    """Brute force: per query, the pool images of other classes sorted by
    similarity; first those below the bound (most similar first, one per
    class), then those at or above it (least similar first, one per class
    not yet taken)."""
    out = np.full((len(queries), count), -1, np.int64)
    sims = queries.astype(np.float64) @ pool.T.astype(np.float64)
    for q in range(len(queries)):
        order = np.argsort(-sims[q], kind="stable")
        order = order[labels[order] != qlabels[q]]
        below = [j for j in order if sims[q, j] < bound[q]]
        above = [j for j in order if sims[q, j] >= bound[q]][::-1]
        used, found = set(), []
        for j in below + above:
            if labels[j] not in used and len(found) < count:
                used.add(labels[j])
                found.append(j)
        out[q, : len(found)] = found
    return out


def test_semihard_negatives_by_hand():
    # Query at 0 deg (class 0), positive at 30 deg: its bound is cos 30.
    pool = _angles([0, 10, 20, 30, 50, 60, 90])
    labels = [0, 1, 2, 0, 3, 1, 4]
    bound = [np.cos(np.deg2rad(30))]
    got = mining.mine_hard_negatives(
        _angles([0]), [0], pool, labels, 2, "exact", max_similarity=bound
    )
    # Below the bound: class 3 at 50, class 1 at 60 (its 10 deg image is
    # harder than the positive, so the class is still free).
    assert got.tolist() == [[4, 5]]
    # Five negatives: below the bound 50 (3), 60 (1), 90 (4); then the
    # fill from just above the bound outwards: 20 (class 2); class 1 is
    # taken; no sixth class: -1.
    got = mining.mine_hard_negatives(
        _angles([0]), [0], pool, labels, 5, "exact", max_similarity=bound
    )
    assert got.tolist() == [[4, 5, 6, 2, -1]]
    # A negative exactly at the bound is not semi-hard (ties go to the
    # fill): bound cos 50 leaves 60 and 90 below it.
    got = mining.mine_hard_negatives(
        _angles([0]),
        [0],
        pool,
        labels,
        3,
        "exact",
        max_similarity=[pool[4] @ _angles([0])[0]],
    )
    assert got.tolist() == [[5, 6, 4]]


@pytest.mark.parametrize("index", ["exact", "fast"])
@pytest.mark.parametrize("count", [1, 3, 9])
def test_semihard_negatives_match_brute_force(index, count):
    rng = np.random.default_rng(count)
    if index == "exact":
        # Unit vectors of four +-0.5 and four zeros: every inner product
        # is a multiple of 1/4, exact in any order, so similarities tie
        # with each other and with the bounds exactly (the exact index
        # breaks ties by position, as the oracle).
        def quarters(n):
            signs = rng.choice([-0.5, 0.5], (n, 8))
            keep = np.argsort(rng.random((n, 8)), axis=1) < 4
            return (signs * keep).astype(np.float32)

        pool, queries = quarters(300), quarters(25)
    else:  # ScaNN orders ties its own way: no ties here.
        pool = _unit(rng.normal(size=(300, 8)))
        queries = _unit(rng.normal(size=(25, 8)))
    labels = rng.integers(0, 7, 300)
    qlabels = rng.integers(0, 7, 25)
    # Bounds from everything-is-semi-hard to nothing-is, and in between.
    bound = rng.uniform(-1.0, 1.0, 25) * np.abs(queries @ pool.T).max()
    bound[:2] = [np.inf, -np.inf]
    if index == "exact":  # bounds equal to some pool similarities
        bound[2:8] = (queries[2:8] @ pool[rng.integers(0, 300, 6)].T)[0]
    got = mining.mine_hard_negatives(
        queries, qlabels, pool, labels, count, index, max_similarity=bound
    )
    want = _semihard_oracle(queries, qlabels, pool, labels, count, bound)
    np.testing.assert_array_equal(got, want)
    # No bound is the hardest mining (the first query's bound is inf).
    hardest = mining.mine_hard_negatives(
        queries, qlabels, pool, labels, count, index
    )
    np.testing.assert_array_equal(got[0], hardest[0])


def test_semihard_bound_needs_one_value_per_query():
    pool = _angles([0, 10, 20, 90])
    with pytest.raises(ValueError, match="One `max_similarity` per query"):
        mining.mine_hard_negatives(
            pool[:2], [0, 1], pool, [0, 1, 1, 2], 1, max_similarity=[0.5]
        )
    empty = mining.mine_hard_negatives(
        pool[:0], [], pool, [0, 1, 1, 2], 2, max_similarity=[]
    )
    assert empty.shape == (0, 2)


def test_miner_semihard_negatives_are_farther_than_the_positive(tmp_path):
    # Two colour clusters per class: a class's images are each other's
    # positives, but the nearest image is often another class's.
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for c in range(4):
        for i in range(5):
            path = str(tmp_path / f"{c}_{i}.png")
            colour = rng.integers(20, 235, 3)
            Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(path)
            paths.append(path)
            labels.append(c)
    images = T.LabelledImages.from_labels(paths, labels)
    rgb = _unit([np.asarray(Image.open(p))[0, 0] for p in paths])
    lab = images.labels

    def mined(negatives, pool_size, rows, stats=False):
        table = T.TripletTable(T.random_triplets(lab, rows, 0))
        miner = mining.HardNegativeMiner(
            images,
            table,
            image_size=8,
            pool_size=pool_size,
            negatives_per_query=2,
            negatives=negatives,
            embedding=ColourEmbedding(),
            verbose=0,
        )
        miner.on_epoch_begin(0)
        if stats:
            return table.snapshot(), miner.history[0]
        return table.snapshot()

    def check(rows, pool):
        # Oracle: the rule on the true colours, over the pool. A query's
        # rows are consecutive; its first negatives are below the bound,
        # as many as classes of the pool have images there, the rest
        # (the fill) at or above it.
        for q, p in {(q, p): None for q, p, _ in rows}:
            negatives = rows[(rows[:, 0] == q) & (rows[:, 1] == p), 2]
            assert np.all(lab[negatives] != lab[q])
            assert np.isin(negatives, pool).all()
            pos = rgb[q] @ rgb[p]
            others = pool[lab[pool] != lab[q]]
            below = others[rgb[others] @ rgb[q] < pos - 1e-6]
            k = min(len(set(lab[below])), len(negatives))
            sims = rgb[negatives] @ rgb[q]
            assert np.all(sims[:k] < pos + 1e-6)
            assert np.all(sims[k:] >= pos - 1e-6)

    hard, hard_stats = mined("hardest", 20, 20, stats=True)
    semi, semi_stats = mined("semihard", 20, 20, stats=True)
    # The share of rows whose negative is as similar as the positive, on
    # the true colours (every row mined, the pool is the whole set).
    for rows, stats in ((hard, hard_stats), (semi, semi_stats)):
        q, p, n = rows.T
        harder = np.sum(rgb[q] * rgb[n], 1) >= np.sum(rgb[q] * rgb[p], 1)
        assert stats["harder_than_positive"] == pytest.approx(harder.mean())
    assert (
        semi_stats["harder_than_positive"] < hard_stats["harder_than_positive"]
    )
    # Same queries and positives (the positive is drawn before the
    # negatives in both modes).
    np.testing.assert_array_equal(hard[:, :2], semi[:, :2])
    check(semi, np.arange(20))
    first = {}
    for q, p, n in semi:  # the first of each query's two is the hardest
        if q not in first:
            first[q] = n
            pos = rgb[q] @ rgb[p]
            sims = rgb[lab != lab[q]] @ rgb[q]
            if np.any(sims < pos - 1e-6):
                best = np.max(sims[sims < pos - 1e-6])
                np.testing.assert_allclose(rgb[n] @ rgb[q], best, atol=1e-6)
    # On this data hardest negatives are often closer than the positive.
    assert np.any(hard[:, 2] != semi[:, 2])
    # A pool of 10 of the 20 images and 8 queries: positives outside the
    # pool are extracted; the pool is the miner's draw for (seed 0,
    # epoch 0).
    pool = np.sort(np.random.default_rng([0, 0, 7]).choice(20, 10, False))
    semi = mined("semihard", 10, 16)
    assert len(set(lab[pool])) >= 3  # every query finds 2 negatives
    assert any(p not in pool for p in semi[:, 1])
    check(semi, pool)


def test_miner_rejects_unknown_negatives(tmp_path):
    images = T.LabelledImages.from_labels(["a", "b", "c", "d"], [0, 0, 1, 1])
    table = T.TripletTable(T.random_triplets(images.labels, 4, 0))
    with pytest.raises(ValueError, match="negatives='hard'"):
        mining.HardNegativeMiner(images, table, negatives="hard")
