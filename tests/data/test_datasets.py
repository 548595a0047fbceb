"""Tests for the dataset loaders, on tiny fake layouts and on COIL-100."""

import logging
import pathlib
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from keras_rmac.data.datasets import RetrievalDataset
from keras_rmac.data.datasets import crop_box
from keras_rmac.data.datasets import load_coil100
from keras_rmac.data.datasets import load_folder_per_instance
from keras_rmac.data.datasets import load_holidays
from keras_rmac.data.datasets import load_oxford5k
from keras_rmac.data.datasets import load_paris6k
from keras_rmac.data.datasets import load_revisited


def write_image(path, size=(6, 4), value=0):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def names(paths):
    return [pathlib.Path(p).stem for p in paths]


# --------------------------------------------------------------- crop_box


@pytest.mark.parametrize(
    "box",
    [
        (0, 0, 7, 5),
        (1.5, 2.5, 4.5, 4.5),  # halves round to even: (2, 2, 4, 4)
        (0.49, 0.51, 6.5, 3.5),
        (2.2, 1.7, 2.4, 3.1),  # zero width after rounding
        (-2.0, -1.4, 3.0, 2.0),  # partly outside: zero padding
        (5.0, 3.0, 9.6, 7.5),
        (10, 10, 12, 13),  # fully outside
    ],
)
@pytest.mark.parametrize("channels", [None, 3])
def test_crop_box_matches_pil(box, channels):
    rng = np.random.default_rng(0)
    shape = (5, 7) if channels is None else (5, 7, channels)
    img = rng.integers(1, 255, size=shape, dtype=np.uint8)
    want = np.asarray(Image.fromarray(img).crop(box))
    got = crop_box(img, box)
    assert got.dtype == img.dtype
    np.testing.assert_array_equal(got, want)


def test_crop_box_hand_case():
    # x from round(1.5) = 2 to round(3.5) = 4, y from 1 to 3.
    img = np.arange(20).reshape(4, 5)
    np.testing.assert_array_equal(
        crop_box(img, (1.5, 1.0, 3.5, 3.0)), [[7, 8], [12, 13]]
    )


def test_crop_box_rejects_bad_boxes():
    img = np.zeros((4, 4))
    with pytest.raises(ValueError, match="right"):
        crop_box(img, (3, 0, 1, 2))
    with pytest.raises(ValueError, match="x0"):
        crop_box(img, (1, 2, 3))


# ----------------------------------------------------- revisited Oxford


def make_revisited(root, name="roxford5k"):
    folder = pathlib.Path(root) / name
    imlist = [f"img_{i}" for i in range(6)]
    qimlist = ["q_0", "q_1"]
    for n in imlist + qimlist:
        write_image(folder / "jpg" / f"{n}.jpg")
    gnd = [
        {
            "easy": np.array([0, 2]),
            "hard": np.array([5]),
            "junk": np.array([1]),
            "bbx": np.array([1.5, 0.5, 5.0, 3.25]),
        },
        {
            "easy": np.array([], dtype=np.int64),
            "hard": np.array([3, 4]),
            "junk": np.array([], dtype=np.int64),
            "bbx": np.array([0.0, 0.0, 2.0, 2.0]),
        },
    ]
    cfg = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    with open(folder / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump(cfg, f)
    return folder


@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_load_revisited(tmp_path, name):
    folder = make_revisited(tmp_path, name)
    for root in (folder, tmp_path):  # dataset folder or its parent
        ds = load_revisited(root, name)
        assert ds.name == name and ds.is_revisited
        assert names(ds.db_paths) == [f"img_{i}" for i in range(6)]
        assert names(ds.query_paths) == ["q_0", "q_1"]
        assert all(pathlib.Path(p).is_file() for p in ds.db_paths)
        assert ds.query_boxes == [(1.5, 0.5, 5.0, 3.25), (0.0, 0.0, 2.0, 2.0)]
        assert ds.gnd[0]["easy"].tolist() == [0, 2]
        assert ds.gnd[0]["hard"].tolist() == [5]
        assert ds.gnd[0]["junk"].tolist() == [1]
        assert ds.gnd[1]["hard"].tolist() == [3, 4]
        assert ds.gnd[1]["easy"].dtype == np.int64
        assert ds.num_db == 6 and ds.num_queries == 2
        assert ds.query_db_indices is None


def test_load_revisited_errors(tmp_path):
    with pytest.raises(ValueError, match="roxford5k"):
        load_revisited(tmp_path, "oxford105k")
    with pytest.raises(FileNotFoundError, match="gnd_rparis6k.pkl"):
        load_revisited(tmp_path, "rparis6k")
    folder = make_revisited(tmp_path)
    (folder / "jpg" / "img_3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img_3.jpg"):
        load_revisited(folder, "roxford5k")
    ds = load_revisited(folder, "roxford5k", check_files=False)
    assert ds.num_db == 6


# ------------------------------------------------- original Oxford / Paris


def write_lines(path, lines):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def make_oxford_text(root):
    root = pathlib.Path(root)
    imgs = ["all_souls_000001", "all_souls_000002", "all_souls_000003"]
    imgs += ["balliol_000001", "balliol_000002", "other_000001"]
    for n in imgs:
        write_image(root / "oxbuild_images" / f"{n}.jpg")
    gt = root / "gt_files_170407"
    write_lines(
        gt / "all_souls_1_query.txt",
        ["oxc1_all_souls_000002 1.5 2.0 5.5 3.5"],
    )
    write_lines(gt / "all_souls_1_good.txt", ["all_souls_000002"])
    write_lines(gt / "all_souls_1_ok.txt", ["all_souls_000003", "gone"])
    write_lines(gt / "all_souls_1_junk.txt", ["other_000001"])
    write_lines(gt / "balliol_1_query.txt", ["oxc1_balliol_000001 0 0 4 4"])
    write_lines(gt / "balliol_1_good.txt", ["balliol_000002"])
    write_lines(gt / "balliol_1_ok.txt", [])
    write_lines(gt / "balliol_1_junk.txt", [])
    return root


def test_load_oxford5k_text_layout(tmp_path, caplog):
    root = make_oxford_text(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = load_oxford5k(root)
    # Database: every image, sorted by name.
    db = names(ds.db_paths)
    assert db == sorted(db) and len(db) == 6
    idx = {n: i for i, n in enumerate(db)}
    # Queries: sorted by query file (all_souls_1, balliol_1); oxc1_ removed.
    assert names(ds.query_paths) == ["all_souls_000002", "balliol_000001"]
    assert ds.query_boxes == [(1.5, 2.0, 5.5, 3.5), (0.0, 0.0, 4.0, 4.0)]
    # ok = good + ok; junk = junk; unknown names dropped with a warning.
    assert ds.gnd[0]["ok"].tolist() == sorted(
        [idx["all_souls_000002"], idx["all_souls_000003"]]
    )
    assert ds.gnd[0]["junk"].tolist() == [idx["other_000001"]]
    assert ds.gnd[1]["ok"].tolist() == [idx["balliol_000002"]]
    assert ds.gnd[1]["junk"].tolist() == []
    assert "gone" in caplog.text
    assert not ds.is_revisited


def test_load_paris6k_nested_images(tmp_path):
    root = tmp_path
    for n in ["paris_defense_000001", "paris_defense_000002"]:
        write_image(root / "paris" / "defense" / f"{n}.jpg")
    for n in ["paris_louvre_000001", "paris_louvre_000002"]:
        write_image(root / "paris" / "louvre" / f"{n}.jpg")
    gt = root / "gt"
    write_lines(gt / "defense_1_query.txt", ["paris_defense_000001 1 2 3.25 4"])
    write_lines(gt / "defense_1_good.txt", ["paris_defense_000002"])
    write_lines(gt / "defense_1_ok.txt", ["paris_defense_000001"])
    write_lines(gt / "defense_1_junk.txt", ["paris_louvre_000002"])
    ds = load_paris6k(root)
    assert names(ds.db_paths) == [
        "paris_defense_000001",
        "paris_defense_000002",
        "paris_louvre_000001",
        "paris_louvre_000002",
    ]
    assert ds.query_paths[0].endswith("defense/paris_defense_000001.jpg")
    assert ds.query_boxes == [(1.0, 2.0, 3.25, 4.0)]
    assert ds.gnd[0]["ok"].tolist() == [0, 1]
    assert ds.gnd[0]["junk"].tolist() == [3]


@pytest.mark.parametrize("query_key", ["qimlist", "qidx"])
def test_load_oxford5k_pickle_layout(tmp_path, query_key):
    imlist = ["a", "b", "c", "d"]
    for n in imlist:
        write_image(tmp_path / "jpg" / f"{n}.jpg")
    cfg = {
        "imlist": imlist,
        "gnd": [
            {"ok": np.array([1, 2]), "junk": np.array([3]), "bbx": [1, 2, 3, 4]}
        ],
    }
    cfg[query_key] = ["b"] if query_key == "qimlist" else np.array([1])
    with open(tmp_path / "gnd_oxford5k.pkl", "wb") as f:
        pickle.dump(cfg, f)
    ds = load_oxford5k(tmp_path)
    assert names(ds.db_paths) == imlist
    assert names(ds.query_paths) == ["b"]
    assert ds.query_boxes == [(1.0, 2.0, 3.0, 4.0)]
    assert ds.gnd[0]["ok"].tolist() == [1, 2]
    assert ds.gnd[0]["junk"].tolist() == [3]


def test_load_oxford5k_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="gt_dir"):
        load_oxford5k(tmp_path)


# --------------------------------------------------------------- Holidays


def test_load_holidays(tmp_path, caplog):
    for n in ["100000", "100001", "100100", "100101", "100102", "100200"]:
        write_image(tmp_path / "jpg" / f"{n}.jpg")
    (tmp_path / "jpg" / "README.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        ds = load_holidays(tmp_path)
    assert names(ds.db_paths) == [
        "100000",
        "100001",
        "100100",
        "100101",
        "100102",
        "100200",
    ]
    assert names(ds.query_paths) == ["100000", "100100", "100200"]
    assert ds.query_db_indices.tolist() == [0, 2, 5]
    assert ds.db_labels.tolist() == [1000, 1000, 1001, 1001, 1001, 1002]
    assert [g["ok"].tolist() for g in ds.gnd] == [[1], [3, 4], []]
    # The query is in the database and junk for its own ranking.
    assert [g["junk"].tolist() for g in ds.gnd] == [[0], [2], [5]]
    assert ds.query_boxes is None
    assert "README.txt" in caplog.text


# ---------------------------------------------------- folder per instance


def test_load_folder_per_instance(tmp_path):
    write_image(tmp_path / "mug" / "b.png")
    write_image(tmp_path / "mug" / "a.png")
    write_image(tmp_path / "mug" / "c.JPG")
    write_image(tmp_path / "book" / "x.png")
    write_image(tmp_path / "book" / "y.png")
    write_image(tmp_path / "lonely" / "only.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "mug" / "notes.txt").write_text("skip me")
    (tmp_path / "top.png").write_bytes(b"")  # not in an instance folder
    ds = load_folder_per_instance(tmp_path, name="toy")
    assert ds.name == "toy"
    assert ds.label_names == ["book", "lonely", "mug"]
    assert [pathlib.Path(p).name for p in ds.db_paths] == [
        "x.png",
        "y.png",
        "only.png",
        "a.png",
        "b.png",
        "c.JPG",
    ]
    assert ds.db_labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert ds.query_db_indices.tolist() == [0, 2, 3]
    assert [pathlib.Path(p).name for p in ds.query_paths] == [
        "x.png",
        "only.png",
        "a.png",
    ]
    assert [g["ok"].tolist() for g in ds.gnd] == [[1], [], [4, 5]]
    assert [g["junk"].tolist() for g in ds.gnd] == [[0], [2], [3]]


def test_load_folder_per_instance_empty(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match="No images"):
        load_folder_per_instance(tmp_path)


# --------------------------------------------------------------- COIL-100


def test_load_coil100_fake(tmp_path):
    for obj in (1, 2, 51, 52):
        for deg in (0, 5, 10, 15, 30, 45):
            write_image(tmp_path / f"obj{obj}__{deg}.png", size=(2, 2))
    (tmp_path / "obj51__15.png").unlink()  # a missing view
    ds = load_coil100(tmp_path)
    db = [pathlib.Path(p).name for p in ds.db_paths]
    assert db == [
        "obj51__0.png",
        "obj51__30.png",
        "obj51__45.png",
        "obj52__0.png",
        "obj52__15.png",
        "obj52__30.png",
        "obj52__45.png",
    ]
    assert ds.db_labels.tolist() == [51, 51, 51, 52, 52, 52, 52]
    assert ds.query_db_indices.tolist() == [0, 3]
    assert [g["ok"].tolist() for g in ds.gnd] == [[1, 2], [4, 5, 6]]
    assert [g["junk"].tolist() for g in ds.gnd] == [[0], [3]]
    assert len(ds.train_paths) == 12
    assert sorted(set(ds.train_labels.tolist())) == [1, 2]


@pytest.mark.slow
def test_load_coil100_real(coil_dir):
    ds = load_coil100(coil_dir)
    pattern = re.compile(r"obj(\d+)__(\d+)\.png$")

    def parse(p):
        m = pattern.search(p)
        return int(m.group(1)), int(m.group(2))

    db = [parse(p) for p in ds.db_paths]
    assert ds.num_db == 1200 and ds.num_queries == 50
    assert {o for o, _ in db} == set(range(51, 101))
    assert all(d % 15 == 0 for _, d in db)
    assert ds.db_labels.tolist() == [o for o, _ in db]
    # Train: objects 1-50, every view, labels = object, no overlap.
    train = [parse(p) for p in ds.train_paths]
    assert {o for o, _ in train} == set(range(1, 51))
    assert ds.train_labels.tolist() == [o for o, _ in train]
    assert len(train) > 3000
    assert not set(ds.train_paths) & set(ds.db_paths)
    # Queries: the 0-degree view of each test object, found in the db.
    for q, (path, g, qi) in enumerate(
        zip(ds.query_paths, ds.gnd, ds.query_db_indices)
    ):
        obj, deg = parse(path)
        assert (obj, deg) == (51 + q, 0)
        assert ds.db_paths[qi] == path
        want_ok = [i for i, (o, _) in enumerate(db) if o == obj and i != qi]
        assert g["ok"].tolist() == want_ok
        assert len(want_ok) == 23
        assert g["junk"].tolist() == [qi]


def test_dataset_validates_lengths():
    with pytest.raises(ValueError, match="ground-truth"):
        RetrievalDataset(["a"], ["q"], None, [], "x")
    with pytest.raises(ValueError, match="db_labels"):
        RetrievalDataset(["a"], ["q"], None, [{"ok": []}], "x", db_labels=[])
