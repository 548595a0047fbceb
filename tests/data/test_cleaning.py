"""Tests for keras_rmac.data.cleaning and keras_rmac.data.local_features."""

import argparse
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image
from PIL import ImageDraw

from keras_rmac.data import cleaning
from keras_rmac.data import local_features as lf

# ----------------------------------------------------------------- helpers


def _textured(seed, size=160):
    """A random picture of many coloured shapes: plenty of SIFT corners."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x0, y0 = rng.integers(0, size - 8, 2)
        w, h = rng.integers(6, size // 3, 2)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        if rng.random() < 0.5:
            draw.rectangle(shape, fill=color)
        else:
            draw.ellipse(shape, fill=color)
    return np.asarray(image)


def _warp(image, affine, out_size):
    """Warps with a 2x3 affine (original -> output pixel centres)."""
    cv2 = lf.require_cv2()
    return cv2.warpAffine(
        image,
        np.asarray(affine, np.float64),
        (out_size[1], out_size[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def _rotation(degrees, scale, center, shift):
    t = np.deg2rad(degrees)
    linear = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    center = np.asarray(center, np.float64)
    offset = center + np.asarray(shift, np.float64) - linear @ center
    return np.concatenate([linear, offset[:, None]], axis=1)


def _save(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def _view(base, k, out=200):
    """k-th view of a textured object pasted on black, slightly rotated."""
    rng = np.random.default_rng(1000 + k)
    affine = _rotation(
        rng.uniform(-12, 12),
        rng.uniform(0.9, 1.1),
        (80, 80),
        (20 + rng.uniform(-8, 8), 20 + rng.uniform(-8, 8)),
    )
    return _warp(base, affine, (out, out))


# --------------------------------------------------- pure NumPy components


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
    affine = _rotation(20, 1.1, (100, 100), (10, -5))
    src = rng.uniform(0, 200, (60, 2))
    dst = src @ affine[:, :2].T + affine[:, 2]
    dst[:40] += rng.normal(0, 0.5, (40, 2))  # inliers, with noise
    dst[40:] = rng.uniform(0, 200, (20, 2))  # outliers
    residual = np.linalg.norm(
        src @ affine[:, :2].T + affine[:, 2] - dst, axis=1
    )
    truth = residual <= 4.0
    result = lf.ransac_affine(src, dst, threshold=4.0, seed=0)
    np.testing.assert_array_equal(result.inliers, truth)
    assert result.num_inliers == truth.sum()
    np.testing.assert_allclose(result.affine[:, :2], affine[:, :2], atol=0.02)
    np.testing.assert_allclose(result.affine[:, 2], affine[:, 2], atol=2.0)
    # Deterministic for a given seed.
    again = lf.ransac_affine(src, dst, threshold=4.0, seed=0)
    np.testing.assert_array_equal(again.affine, result.affine)


def test_ransac_affine_rejects_mirror_and_counts_duplicates_once():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (30, 2))
    mirrored = src * np.array([-1.0, 1.0]) + np.array([100.0, 0.0])
    result = lf.ransac_affine(src, mirrored, threshold=2.0, seed=0)
    assert result.num_inliers < 3  # no plausible map explains them
    # The same correspondence repeated (SIFT orientations) counts once.
    shift = src + 3.0
    dup_src = np.concatenate([src[:5], src[:5], src[:5]])
    dup_dst = np.concatenate([shift[:5], shift[:5], shift[:5]])
    result = lf.ransac_affine(dup_src, dup_dst, threshold=1.0, seed=0)
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


# -------------------------------------------------------------- box step


def test_estimate_box_union_hand_computed():
    points = np.array([[10.2, 5.0], [40.6, 30.4], [25.0, 12.0]])
    # Columns floor(x + 0.5): 10, 41, 25 -> x0 = 10, x1 = 42.
    # Rows floor(y + 0.5): 5, 30, 12 -> y0 = 5, y1 = 31.
    assert cleaning.estimate_box(points, (60, 80)) == (10, 5, 42, 31)
    # Clipped to the image (height 20, width 30).
    assert cleaning.estimate_box(points, (20, 30)) == (10, 5, 30, 20)
    # A point left of the image.
    outside = np.array([[-3.0, 2.0], [4.0, 6.0]])
    assert cleaning.estimate_box(outside, (20, 30)) == (0, 2, 5, 7)
    # One point: a one-pixel box.
    assert cleaning.estimate_box(np.array([[3.0, 4.0]]), (9, 9)) == (
        3,
        4,
        4,
        5,
    )


def test_estimate_box_percentile_ignores_stray_points():
    # 0..99 on both axes plus one far stray point.
    grid = np.stack([np.arange(100.0), np.arange(100.0)], axis=1)
    points = np.concatenate([grid, [[990.0, 990.0]]])
    union = cleaning.estimate_box(points, (1000, 1000))
    assert union == (0, 0, 991, 991)
    box = cleaning.estimate_box(points, (1000, 1000), "percentile", 5.0)
    # np.percentile of 101 values [0..99, 990] at 5% and 95%, linear:
    # index 5.0 -> 5.0, index 95.0 -> 95.0.
    assert box == (5, 5, 96, 96)
    with pytest.raises(ValueError, match="box method"):
        cleaning.estimate_box(points, (10, 10), "median")


# ------------------------------------------------------------ graph step


def test_connected_components_hand_built():
    edges = [(0, 1), (1, 2), (4, 5), (6, 7), (7, 8), (8, 6)]
    comps = cleaning.connected_components(10, edges)
    assert comps == [[0, 1, 2], [6, 7, 8], [4, 5], [3], [9]]
    with pytest.raises(ValueError, match="out of range"):
        cleaning.connected_components(3, [(0, 3)])


def test_select_images_largest_component_and_reasons():
    # 0-1-2-3 chain, 5-6 pair, 4 isolated, 7 unreadable.
    edges = [(0, 1, 20), (1, 2, 15), (2, 3, 12), (5, 6, 30)]
    kept, reasons = cleaning.select_images(8, edges, 3, unreadable=[7])
    assert kept == [0, 1, 2, 3]
    assert reasons == {
        4: cleaning.NO_VERIFIED_MATCH,
        5: cleaning.NOT_IN_LARGEST_COMPONENT,
        6: cleaning.NOT_IN_LARGEST_COMPONENT,
        7: cleaning.UNREADABLE,
    }
    # Same graph with min_class_size 5: the whole class goes.
    kept, reasons = cleaning.select_images(8, edges, 5, unreadable=[7])
    assert kept == []
    assert [reasons[i] for i in range(4)] == [cleaning.CLASS_TOO_SMALL] * 4
    assert reasons[5] == cleaning.NOT_IN_LARGEST_COMPONENT
    # Tie between two components of 2: the one with the earliest image.
    kept, reasons = cleaning.select_images(5, [(3, 4, 9), (1, 2, 9)], 2)
    assert kept == [1, 2]
    assert reasons[0] == cleaning.NO_VERIFIED_MATCH
    # No edges at all: nothing kept, even with min_class_size 2.
    kept, reasons = cleaning.select_images(3, [], 2)
    assert kept == [] and set(reasons.values()) == {cleaning.NO_VERIFIED_MATCH}


def test_shortlist_pairs_against_brute_force():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(23, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = 3
    expected = set()
    for i in range(len(x)):
        sims = [(-(x[i] @ x[j]), j) for j in range(len(x)) if j != i]
        for _, j in sorted(sims)[:k]:
            expected.add((min(i, j), max(i, j)))
    for block in (1024, 5):  # blocked computation gives the same pairs
        got = cleaning.shortlist_pairs(x, k, block_size=block)
        assert {tuple(p) for p in got.tolist()} == expected
    # k >= n - 1: all pairs.
    assert len(cleaning.shortlist_pairs(x[:5], 4)) == 10
    # A NaN row (image the embedder could not read) is paired with all.
    y = x.copy()
    y[2] = np.nan
    got = {tuple(p) for p in cleaning.shortlist_pairs(y, k).tolist()}
    assert {(min(2, j), max(2, j)) for j in range(23) if j != 2} <= got


# --------------------------------------------------------------- CSV I/O


def test_csv_round_trip(tmp_path):
    noisy = tmp_path / "noisy.csv"
    noisy.write_text("path,label\na.jpg,x\n\n'b c.png',y\n")
    rows = cleaning.read_labelled_list(noisy)
    assert rows == [
        cleaning.LabelledImage("a.jpg", "x"),
        cleaning.LabelledImage("'b c.png'", "y"),
    ]
    no_header = tmp_path / "plain.csv"
    no_header.write_text("a.jpg,x\n")
    assert cleaning.read_labelled_list(no_header)[0].path == "a.jpg"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.jpg\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        cleaning.read_labelled_list(bad)

    out = tmp_path / "clean.csv"
    rows = [
        cleaning.CleanImage("dir/a,1.jpg", "x", (1, 2, 30, 40)),
        cleaning.CleanImage("b.jpg", "lab el", (0, 0, 5, 6)),
    ]
    cleaning.write_clean_list(out, rows)
    text = out.read_text()
    assert text.splitlines()[0] == "path,label,x0,y0,x1,y1"
    assert '"dir/a,1.jpg",x,1,2,30,40' in text
    assert cleaning.read_clean_list(out) == rows
    # A clean list also reads as a labelled list (extra columns ignored).
    assert [r.path for r in cleaning.read_labelled_list(out)] == [
        "dir/a,1.jpg",
        "b.jpg",
    ]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_missing_opencv_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 fails
    with pytest.raises(ImportError, match=r"pip install keras-rmac\[clean\]"):
        lf.require_cv2()
    with pytest.raises(ImportError, match="keras-rmac"):
        cleaning.clean_dataset([("a.png", "x")], tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_clean_class_rejects_pairs_out_of_range():
    with pytest.raises(ValueError, match="pairs must index its 2 images"):
        cleaning.clean_class("x", ["a.png", "b.png"], pairs=[[0, 5]])


def test_config_validation():
    with pytest.raises(ValueError, match="min_class_size"):
        cleaning.CleaningConfig(min_class_size=1)
    with pytest.raises(ValueError, match="box_method"):
        cleaning.CleaningConfig(box_method="mean")
    with pytest.raises(ValueError, match="ratio"):
        cleaning.CleaningConfig(ratio=1.5)


# ---------------------------------------------- SIFT (needs OpenCV) tests


def test_synthetic_affine_warp_verified_and_boxed():
    pytest.importorskip("cv2")
    # A textured 160 x 160 square on a black 200 x 200 canvas, warped by
    # a known rotation + scale + shift into a larger black frame.
    base = np.zeros((200, 200, 3), np.uint8)
    base[20:180, 20:180] = _textured(0)
    affine = _rotation(15, 0.9, (100, 100), (50, 30))
    warped = _warp(base, affine, (260, 300))
    config = cleaning.CleaningConfig()
    fa = cleaning._extract(base, config)
    fb = cleaning._extract(warped, config)
    assert len(fa) > 50 and len(fb) > 50
    count, pts_a, pts_b = cleaning.verify_pair(fa, fb, config, seed=0)
    assert count >= 30
    # Every inlier obeys the known map to within the RANSAC threshold
    # (4 working pixels = 3.1 original pixels at the 1.28x upsampling).
    predicted = pts_a @ affine[:, :2].T + affine[:, 2]
    err = np.linalg.norm(predicted - pts_b, axis=1)
    assert np.median(err) < 1.0 and err.max() < 3.2
    # In the base image the box is the textured square.
    x0, y0, x1, y1 = cleaning.estimate_box(pts_a, (200, 200))
    assert 18 <= x0 and 18 <= y0 and x1 <= 182 and y1 <= 182
    overlap = (min(x1, 180) - max(x0, 20)) * (min(y1, 180) - max(y0, 20))
    union = (x1 - x0) * (y1 - y0) + 160 * 160 - overlap
    assert overlap / union > 0.85
    # In the warped image it lies inside the box of the warped square,
    # holds its centre and covers most of it.
    corners = np.array([[20, 20], [179, 20], [20, 179], [179, 179]], float)
    warped_corners = corners @ affine[:, :2].T + affine[:, 2]
    lo = np.floor(warped_corners.min(0) + 0.5) - 2
    hi = np.floor(warped_corners.max(0) + 0.5) + 3
    x0, y0, x1, y1 = cleaning.estimate_box(pts_b, (260, 300))
    assert x0 >= lo[0] and y0 >= lo[1] and x1 <= hi[0] and y1 <= hi[1]
    centre = affine[:, :2] @ [99.5, 99.5] + affine[:, 2]
    assert x0 < centre[0] < x1 and y0 < centre[1] < y1
    assert (x1 - x0) * (y1 - y0) > 0.6 * np.prod(hi - lo)
    # An unrelated texture does not verify.
    other = cleaning._extract(_textured(99), config)
    count, _, _ = cleaning.verify_pair(fa, other, config, seed=0)
    assert count < config.min_inliers


@pytest.mark.slow
def test_coil_views_verify_and_other_objects_do_not(coil_dir):
    pytest.importorskip("cv2")
    from keras_rmac.data.image_io import load_image

    config = cleaning.CleaningConfig()

    def feats(obj, deg):
        return cleaning._extract(
            load_image(coil_dir / f"obj{obj}__{deg}.png"), config
        )

    for obj in (3, 7, 13, 20):
        a = feats(obj, 0)
        for deg in (5, 10):
            count, _, _ = cleaning.verify_pair(a, feats(obj, deg), config)
            assert count >= config.min_inliers, (obj, deg, count)
    for obj_a, obj_b in ((3, 7), (7, 13), (13, 20), (20, 3), (29, 40)):
        count, _, _ = cleaning.verify_pair(
            feats(obj_a, 0), feats(obj_b, 0), config
        )
        assert count < config.min_inliers, (obj_a, obj_b, count)


# ------------------------------------------------- whole-dataset behaviour


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Two classes of 5 views plus noise, and an unreadable file."""
    pytest.importorskip("cv2")
    root = tmp_path_factory.mktemp("tiny")
    rows = []
    for c, label in enumerate(("alpha", "beta")):
        base = _textured(10 + c)
        for k in range(5):
            name = f"{label}_{k}.png"
            _save(root / name, _view(base, 10 * c + k))
            rows.append((name, label))
        _save(root / f"{label}_noise.png", _textured(50 + c, 200))
        rows.append((f"{label}_noise.png", label))
    (root / "broken.png").write_bytes(b"not a png at all")
    rows.append(("broken.png", "alpha"))
    (root / "noisy.csv").write_text(
        "path,label\n" + "".join(f"{p},{c}\n" for p, c in rows)
    )
    return root


def _clean_rows(path):
    return [(r.path, r.label, r.box) for r in cleaning.read_clean_list(path)]


def test_clean_list_keeps_views_drops_noise_and_unreadable(tiny_dataset):
    out = tiny_dataset / "serial" / "clean.csv"
    out.parent.mkdir()
    report = cleaning.clean_list(tiny_dataset / "noisy.csv", out, verbose=0)
    rows = _clean_rows(out)
    # Written relative to the clean list's folder (one level down).
    assert [(p, c) for p, c, _ in rows] == [
        (os.path.join("..", f"{label}_{k}.png"), label)
        for label in ("alpha", "beta")
        for k in range(5)
    ]
    for path, _, (x0, y0, x1, y1) in rows:
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200, path
    reasons = {d["path"]: d["reason"] for d in report.dropped}
    assert reasons == {
        "alpha_noise.png": cleaning.NO_VERIFIED_MATCH,
        "beta_noise.png": cleaning.NO_VERIFIED_MATCH,
        "broken.png": cleaning.UNREADABLE,
    }
    broken = next(d for d in report.dropped if d["path"] == "broken.png")
    assert "broken.png" in broken["detail"]
    assert report.num_images == 13 and report.num_kept == 10
    saved = json.loads((out.parent / "clean.csv.report.json").read_text())
    assert saved["dropped_counts"][cleaning.UNREADABLE] == 1
    assert "unreadable: 1" in (out.parent / "clean.csv.report.txt").read_text()


def test_resume_skips_finished_classes(tiny_dataset, monkeypatch):
    out = tiny_dataset / "resume" / "clean.csv"
    out.parent.mkdir()
    csv_path = tiny_dataset / "noisy.csv"
    first = cleaning.clean_list(csv_path, out, verbose=0)
    work = sorted(os.listdir(str(out) + ".work"))
    assert len(work) == 2 and all(w.endswith(".json") for w in work)
    expected = _clean_rows(out)

    # Spoil the result of "beta" only (as if it had never been written):
    # a rerun recomputes just that one.
    beta = cleaning._work_file(str(out) + ".work", "beta")
    with open(beta, "w") as f:
        f.write('{"fingerprint": ')
    calls = []
    real = cleaning.clean_class

    def spy(label, *args, **kwargs):
        calls.append(label)
        return real(label, *args, **kwargs)

    monkeypatch.setattr(cleaning, "clean_class", spy)
    second = cleaning.clean_list(csv_path, out, verbose=0)
    assert calls == ["beta"]
    assert _clean_rows(out) == expected
    assert [c["resumed"] for c in second.classes] == [True, False]
    assert second.dropped == first.dropped

    # Nothing left to do: no class is computed at all.
    calls.clear()
    cleaning.clean_list(csv_path, out, verbose=0)
    assert calls == []
    # Other settings invalidate the saved results.
    cleaning.clean_list(
        csv_path,
        out,
        verbose=0,
        config=cleaning.CleaningConfig(min_inliers=11),
    )
    assert sorted(calls) == ["alpha", "beta"]


def test_parallel_matches_serial_and_shortlist(tiny_dataset):
    serial = tiny_dataset / "serial" / "clean.csv"
    if not serial.exists():
        cleaning.clean_list(tiny_dataset / "noisy.csv", serial, verbose=0)
    out = tiny_dataset / "parallel" / "clean.csv"
    out.parent.mkdir()
    cleaning.clean_list(
        tiny_dataset / "noisy.csv", out, num_workers=2, verbose=0
    )
    assert _clean_rows(out) == _clean_rows(serial)

    # Shortlist with an embedding that ranks true views first: k=4 still
    # links every view; the report shows fewer pairs were verified.
    def embed(paths):
        vectors = []
        for p in paths:
            name = os.path.basename(p)
            v = np.zeros(4)
            v[0 if name.startswith("alpha") else 1] = 1.0
            if "noise" in name or "broken" in name:
                v = np.array([0.0, 0.0, 1.0, 0.0])
            vectors.append(v)
        return np.stack(vectors)

    short = tiny_dataset / "short" / "clean.csv"
    short.parent.mkdir()
    report = cleaning.clean_list(
        tiny_dataset / "noisy.csv",
        short,
        embed=embed,
        config=cleaning.CleaningConfig(shortlist_k=2),
        verbose=0,
    )
    assert [r[:2] for r in _clean_rows(short)] == [
        r[:2] for r in _clean_rows(serial)
    ]
    alpha = next(c for c in report.classes if c["label"] == "alpha")
    # 7 images, 6 readable: all pairs would be 15 among the readable ones.
    assert alpha["num_pairs"] < 15


def test_cli_run(tiny_dataset, capsys, monkeypatch):
    from keras_rmac.cli import clean as clean_cli

    parser = argparse.ArgumentParser(prog="keras-rmac")
    sub = parser.add_subparsers()
    clean_cli.add_parser(sub)
    out = tiny_dataset / "cli" / "clean.csv"
    out.parent.mkdir()
    args = parser.parse_args(
        [
            "clean",
            str(tiny_dataset / "noisy.csv"),
            "--out",
            str(out),
            "--min-inliers",
            "12",
            "--box",
            "percentile",
        ]
    )
    assert args.run is clean_cli.run
    assert clean_cli.run(args) == 0
    assert len(cleaning.read_clean_list(out)) == 10
    assert "Images: 13 in, 10 kept" in capsys.readouterr().out
    saved = json.loads(
        (tiny_dataset / "cli" / "clean.csv.report.json").read_text()
    )
    assert saved["config"]["min_inliers"] == 12
    assert saved["config"]["box_method"] == "percentile"
    # A missing list is an error status, not a traceback.
    args = parser.parse_args(
        ["clean", str(tiny_dataset / "missing.csv"), "--out", str(out)]
    )
    assert clean_cli.run(args) == 1
    # --shortlist-k embeds each class with the chosen R-MAC network.
    seen = []

    class FakeModel:
        def extract(self, paths, **kwargs):
            seen.append(len(paths))
            return np.eye(len(paths))

    monkeypatch.setattr(clean_cli._common, "build_model", lambda s: FakeModel())
    out = tiny_dataset / "cli" / "short.csv"
    args = parser.parse_args(
        ["clean", str(tiny_dataset / "noisy.csv"), "--out", str(out)]
        + ["--shortlist-k", "3", "--quiet", "--weights", "none"]
    )
    assert clean_cli.run(args) == 0
    assert sorted(seen) == [6, 7]  # one call per class
    saved = json.loads(
        (tiny_dataset / "cli" / "short.csv.report.json").read_text()
    )
    assert saved["config"]["shortlist_k"] == 3
    # --help has an example.
    help_text = sub.choices["clean"].format_help()
    assert "keras-rmac clean landmarks.csv --out" in help_text


def _tiny_rmac(config):
    """An R-MAC model on a two-convolution backbone (trains in seconds)."""
    import keras

    from keras_rmac.models import RMACModel

    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="tail")(x)
    backbone = keras.Model(inputs, x, name="tiny")
    return RMACModel(backbone, weights=None, preprocessing="none", levels=2)


def test_clean_list_feeds_training_with_box_crops(tiny_dataset, tmp_path):
    from keras_rmac.data import triplets
    from keras_rmac.models.triplet_model import FeatureEmbedding
    from keras_rmac.training import TrainConfig
    from keras_rmac.training import cached_features
    from keras_rmac.training import load_training_images
    from keras_rmac.training import train

    serial = tiny_dataset / "serial" / "clean.csv"
    if not serial.exists():
        serial.parent.mkdir(exist_ok=True)
        cleaning.clean_list(tiny_dataset / "noisy.csv", serial, verbose=0)
    rows = _clean_rows(serial)
    config = TrainConfig(
        train_list=str(serial),
        use_boxes=True,
        output_dir=str(tmp_path / "run"),
        image_size=32,
        batch_size=2,
        steps_per_epoch=2,
        epochs=1,
        learning_rate=1e-3,
        pca_images=4,
        pool_size=10,
        checkpoint_every=2,
        num_workers=2,
        verbose=0,
    )
    # The training reader finds the files and the boxes of the clean list.
    images = load_training_images(config)
    files = [
        tiny_dataset / f"{c}_{k}.png"
        for c in ("alpha", "beta")
        for k in range(5)
    ]
    assert len(images) == len(files)
    assert all(os.path.samefile(a, b) for a, b in zip(images.paths, files))
    assert [images.class_names[i] for i in images.labels] == [
        c for _, c, _ in rows
    ]
    np.testing.assert_array_equal(images.boxes, [box for _, _, box in rows])
    # The boxes really crop (a view is a 160-pixel square on 200 x 200).
    assert all(
        (x1 - x0) * (y1 - y0) < 200 * 200 for _, _, (x0, y0, x1, y1) in rows
    )
    # What training decodes is the box's pixels, cut here with NumPy.
    seen = triplets.image_dataset(images, image_size=None).as_numpy_iterator()
    for image, i in seen:
        x0, y0, x1, y1 = rows[i][2]
        pixels = np.asarray(Image.open(files[i]).convert("RGB"))
        np.testing.assert_array_equal(image, pixels[y0:y1, x0:x1])
    off = dataclasses.replace(config, use_boxes=False)
    assert load_training_images(off).boxes is None
    # And `train` runs on the file as written.
    result = train(config, embedding_fn=_tiny_rmac)
    assert len(result.history["loss"]) == 1
    assert os.path.exists(result.model_path)
    # The feature cache tells cropped from whole images in one folder.
    head = FeatureEmbedding(_tiny_rmac(config), "tail")
    work = str(tmp_path / "cache")
    os.makedirs(work)
    whole = cached_features(head, load_training_images(off), config, work)
    cropped = cached_features(head, images, config, work)
    assert len(os.listdir(work)) == 2
    assert not np.allclose(whole, cropped)
    os.makedirs(tmp_path / "fresh")
    fresh = cached_features(head, images, config, str(tmp_path / "fresh"))
    np.testing.assert_allclose(cropped, fresh, atol=1e-6)
