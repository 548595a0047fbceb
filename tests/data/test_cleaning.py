"""Tests for keras_rmac.data.cleaning (local features: test_local_features)."""

import argparse
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_rmac.data import cleaning
from keras_rmac.data import local_features as lf
from keras_rmac.data.cleaning import resume
from keras_rmac.data.cleaning import workers
from keras_rmac.data.labelled import LabelledImages
from keras_rmac.data.labelled import read_image_list
from keras_rmac.data.labelled import write_image_list
from tests.data.helpers import rotation
from tests.data.helpers import save
from tests.data.helpers import textured
from tests.data.helpers import view
from tests.data.helpers import warp

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


def test_clean_lists_are_labelled_lists(tmp_path, monkeypatch):
    # The input and the output of the cleaning use the one labelled-list
    # reader and writer (keras_rmac.data.labelled).
    monkeypatch.chdir(tmp_path)
    noisy = tmp_path / "noisy.csv"
    noisy.write_text("path,label\na.jpg,x\n\n'b c.png',y\n")
    rows = read_image_list(noisy, root="")
    assert rows.paths == ["a.jpg", "'b c.png'"]
    assert rows.label_names() == ["x", "y"]
    no_header = tmp_path / "plain.csv"
    no_header.write_text("a.jpg,x\n")
    assert read_image_list(no_header, root="").paths[0] == "a.jpg"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.jpg\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        read_image_list(bad)

    out = tmp_path / "clean.csv"
    rows = LabelledImages.from_labels(
        ["dir/a,1.jpg", "b.jpg"],
        ["x", "lab el"],
        np.array([(1, 2, 30, 40), (0, 0, 5, 6)]),
    )
    write_image_list(out, rows)
    text = out.read_text()
    assert text.splitlines()[0] == "path,label,x0,y0,x1,y1"
    assert '"dir/a,1.jpg",x,1,2,30,40' in text
    assert _clean_rows(out) == [
        ("dir/a,1.jpg", "x", (1, 2, 30, 40)),
        ("b.jpg", "lab el", (0, 0, 5, 6)),
    ]
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


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
    base[20:180, 20:180] = textured(0)
    affine = rotation(15, 0.9, (100, 100), (50, 30))
    warped = warp(base, affine, (260, 300))
    config = cleaning.CleaningConfig()
    fa = cleaning.extract_features(base, config)
    fb = cleaning.extract_features(warped, config)
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
    other = cleaning.extract_features(textured(99), config)
    count, _, _ = cleaning.verify_pair(fa, other, config, seed=0)
    assert count < config.min_inliers


@pytest.mark.slow
def test_coil_views_verify_and_other_objects_do_not(coil_dir):
    pytest.importorskip("cv2")
    from keras_rmac.data.image_io import load_image

    config = cleaning.CleaningConfig()

    def feats(obj, deg):
        return cleaning.extract_features(
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
        base = textured(10 + c)
        for k in range(5):
            name = f"{label}_{k}.png"
            save(root / name, view(base, 10 * c + k))
            rows.append((name, label))
        save(root / f"{label}_noise.png", textured(50 + c, 200))
        rows.append((f"{label}_noise.png", label))
    (root / "broken.png").write_bytes(b"not a png at all")
    rows.append(("broken.png", "alpha"))
    (root / "noisy.csv").write_text(
        "path,label\n" + "".join(f"{p},{c}\n" for p, c in rows)
    )
    return root


def _clean_rows(path):
    """`(path as written, label, int box)` of each row of a clean list."""
    images = read_image_list(path, root="")
    return [
        (p, label, tuple(int(v) for v in box))
        for p, label, box in zip(
            images.paths, images.label_names(), images.boxes
        )
    ]


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
    beta = resume.work_file(str(out) + ".work", "beta")
    with open(beta, "w") as f:
        f.write('{"fingerprint": ')
    calls = []
    real = cleaning.clean_class

    def spy(label, *args, **kwargs):
        calls.append(label)
        return real(label, *args, **kwargs)

    monkeypatch.setattr(workers, "clean_class", spy)
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
    assert len(read_image_list(out)) == 10
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
