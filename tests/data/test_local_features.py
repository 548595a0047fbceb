"""Local features and geometric verification: data.local_features."""

import numpy as np
import pytest

from keras_rmac.data import local_features as lf
from tests.data.helpers import rotation


def test_fit_affine_recovers_exact_map():
    rng = np.random.default_rng(0)
    affine = np.array([[1.2, -0.3, 5.0], [0.4, 0.9, -7.0]])
    src = rng.uniform(0, 100, (10, 2))
    dst = src @ affine[:, :2].T + affine[:, 2]
    np.testing.assert_allclose(lf.fit_affine(src, dst), affine, atol=1e-9)
    # Collinear points do not determine an affine map.
    line = np.stack([np.arange(5.0), 2 * np.arange(5.0)], axis=1)
    assert lf.fit_affine(line, line) is None
    assert lf.fit_affine(src[:2], dst[:2]) is None


@pytest.mark.parametrize(
    "linear,plausible",
    [
        ([[1, 0], [0, 1]], True),
        ([[0, -1], [1, 0]], True),  # 90-degree rotation
        ([[-1, 0], [0, 1]], False),  # mirror
        ([[9, 0], [0, 9]], False),  # scale 9 > 8
        ([[1 / 9, 0], [0, 1 / 9]], False),  # scale 1/9 < 1/8
        ([[4, 0], [0, 0.5]], False),  # anisotropy 8 > 4
        ([[2, 0], [0, 1]], True),  # anisotropy 2
        ([[0, 0], [0, 0]], False),  # degenerate
    ],
)
def test_affine_is_plausible(linear, plausible):
    affine = np.concatenate([np.asarray(linear, float), np.zeros((2, 1))], 1)
    assert lf.affine_is_plausible(affine, 8.0, 4.0) is plausible
    # The vectorised check used inside RANSAC agrees.
    batch = lf._plausible_batch(affine[None, :, :2], 8.0, 4.0)
    assert bool(batch[0]) is plausible


def test_three_distinct_is_uniform_over_triples():
    rng = np.random.default_rng(0)
    triples = lf._three_distinct(rng, 5, 60000)
    assert np.all(triples[:, 0] != triples[:, 1])
    assert np.all(triples[:, 0] != triples[:, 2])
    assert np.all(triples[:, 1] != triples[:, 2])
    assert triples.min() == 0 and triples.max() == 4
    # 5 * 4 * 3 = 60 ordered triples, each about 1000 times.
    codes = triples[:, 0] * 25 + triples[:, 1] * 5 + triples[:, 2]
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 60
    assert counts.min() > 850 and counts.max() < 1150


def test_ransac_affine_finds_inliers_among_outliers():
    rng = np.random.default_rng(1)
    affine = rotation(20, 1.1, (100, 100), (10, -5))
    src = rng.uniform(0, 200, (60, 2))
    dst = src @ affine[:, :2].T + affine[:, 2]
    dst[:40] += rng.normal(0, 0.5, (40, 2))  # inliers, with noise
    dst[40:] = rng.uniform(0, 200, (20, 2))  # outliers
    residual = np.linalg.norm(
        src @ affine[:, :2].T + affine[:, 2] - dst, axis=1
    )
    truth = residual <= 4.0
    settings = lf.RansacSettings(threshold=4.0)
    result = lf.ransac_affine(src, dst, settings, seed=0)
    np.testing.assert_array_equal(result.inliers, truth)
    assert result.num_inliers == truth.sum()
    np.testing.assert_allclose(result.affine[:, :2], affine[:, :2], atol=0.02)
    np.testing.assert_allclose(result.affine[:, 2], affine[:, 2], atol=2.0)
    # Deterministic for a given seed.
    again = lf.ransac_affine(src, dst, settings, seed=0)
    np.testing.assert_array_equal(again.affine, result.affine)


def test_ransac_affine_rejects_mirror_and_counts_duplicates_once():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (30, 2))
    mirrored = src * np.array([-1.0, 1.0]) + np.array([100.0, 0.0])
    result = lf.ransac_affine(
        src, mirrored, lf.RansacSettings(threshold=2.0), seed=0
    )
    assert result.num_inliers < 3  # no plausible map explains them
    # The same correspondence repeated (SIFT orientations) counts once.
    shift = src + 3.0
    dup_src = np.concatenate([src[:5], src[:5], src[:5]])
    dup_dst = np.concatenate([shift[:5], shift[:5], shift[:5]])
    result = lf.ransac_affine(
        dup_src, dup_dst, lf.RansacSettings(threshold=1.0), seed=0
    )
    assert result.inliers.all()
    assert result.num_inliers == 5
    too_few = lf.ransac_affine(src[:2], src[:2])
    assert too_few.affine is None and too_few.num_inliers == 0


def test_match_descriptors_against_brute_force():
    rng = np.random.default_rng(3)
    b = rng.normal(size=(40, 16)).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    a = b[rng.permutation(40)[:25]] + rng.normal(0, 0.15, (25, 16))
    # Near-duplicates compete for the same b (no exact ties).
    a = np.concatenate([a, a[:3] + rng.normal(0, 0.05, (3, 16))])
    a = (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
    ratio = 0.8
    got = lf.match_descriptors(a, b, ratio)
    # Oracle: explicit loops.
    candidates = {}
    for i in range(len(a)):
        d = sorted((np.linalg.norm(a[i] - b[j]), j) for j in range(len(b)))
        if d[0][0] < ratio * d[1][0]:
            j = d[0][1]
            if j not in candidates or d[0][0] < candidates[j][0]:
                candidates[j] = (d[0][0], i)
    expected = sorted((i, j) for j, (_, i) in candidates.items())
    assert [tuple(p) for p in got.tolist()] == expected
    assert len(expected) > 10
    assert lf.match_descriptors(a, b[:1]).shape == (0, 2)


def test_root_sift_is_hellinger():
    x = np.array([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    got = lf.root_sift(x)
    np.testing.assert_allclose(got[0], [0.5, np.sqrt(0.75), 0, 0], atol=1e-6)
    np.testing.assert_allclose(got[1], 0.0)


def test_working_size():
    assert lf.working_size(128, 128, 256, 1024) == (256, 256)
    assert lf.working_size(100, 300, 256, 1024) == (256, 768)
    assert lf.working_size(100, 400, 256, 800) == (200, 800)  # max wins
    assert lf.working_size(2000, 1000, 256, 1024) == (1024, 512)
    assert lf.working_size(300, 500, 256, 1024) == (300, 500)
    assert lf.working_size(128, 128, 0, 0) == (128, 128)


def test_to_original_inverts_resize_mapping():
    feats = lf.LocalFeatures(
        keypoints=np.zeros((0, 2), np.float32),
        descriptors=np.zeros((0, 128), np.float32),
        image_size=(100, 50),
        scale=(4.0, 2.0),
    )
    # x_work = (x + 0.5) * s - 0.5
    work = np.array([[(10 + 0.5) * 4 - 0.5, (20 + 0.5) * 2 - 0.5]])
    np.testing.assert_allclose(feats.to_original(work), [[10.0, 20.0]])


def test_ransac_settings_validation_and_defaults():
    with pytest.raises(ValueError, match="threshold must be positive"):
        lf.RansacSettings(threshold=0)
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 100, (25, 2))
    dst = src @ np.array([[1.1, 0.2], [-0.1, 0.9]]).T + 3.0
    default = lf.ransac_affine(src, dst, seed=3)
    explicit = lf.ransac_affine(src, dst, lf.RansacSettings(), seed=3)
    np.testing.assert_array_equal(default.affine, explicit.affine)
    assert default.num_inliers == 25
