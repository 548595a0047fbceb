"""The cluttered COIL-100 generator (benchmarks/cluttered_coil_data.py) and
the protocol files `benchmarks/cluttered_coil.py` writes, on tiny in-memory
objects and backgrounds."""

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks import cluttered_coil_data as clutter
from benchmarks import cluttered_coil_files as script

CONFIG = clutter.ClutterConfig(image_size=64)


def _view(colour, seed, size=32):
    """A COIL-like view: a bright blob with a dark hole on the turntable's
    dark grey, plus one bright speck."""
    rng = np.random.default_rng(seed)
    view = np.full((size, size, 3), 25, np.uint8)
    y0, x0 = rng.integers(2, 8, size=2)
    y1, x1 = rng.integers(size - 10, size - 3, size=2)
    view[y0:y1, x0:x1] = colour
    # A dark part inside (below the threshold, a hole of the bright mask),
    # still of the object's hue so that recolouring the object changes it.
    view[y0 + 3 : y0 + 5, x0 + 3 : x0 + 5] = np.asarray(colour) // 8
    view[size - 1, 0] = 255  # a speck
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return view, mask


def _photos():
    rng = np.random.default_rng(0)
    # Smooth random photos: no pure colour of the objects below.
    return [
        (rng.integers(0, 90, size=(60, 90, 3))).astype(np.uint8),
        (rng.integers(0, 90, size=(80, 70, 3))).astype(np.uint8),
    ]


def _extent(mask):
    """Independent oracle of a mask's box (exclusive ends)."""
    ys, xs = np.nonzero(mask)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.parametrize("seed", range(12))
def test_object_mask_fills_holes_and_drops_specks(seed):
    # Objects 2..7 pixels from the border (seed 3: 2 from the left).
    view, expected = _view((200, 150, 40), seed=seed)
    np.testing.assert_array_equal(clutter.object_mask(view), expected)
    dark = np.full((16, 16, 3), 25, np.uint8)
    assert not clutter.object_mask(dark).any()
    with pytest.raises(ValueError, match="RGB"):
        clutter.object_mask(dark[..., 0])


def test_mask_box_hand_cases():
    mask = np.zeros((5, 7), bool)
    assert clutter.mask_box(mask) is None
    mask[4, 6] = True  # touching the bottom-right border
    assert clutter.mask_box(mask) == (6, 4, 7, 5)
    mask[1, 2] = True
    assert clutter.mask_box(mask) == (2, 1, 7, 5)


def _composite(seed, colour, other_colour, tile=None):
    view, _ = _view(colour, seed=seed)
    other, _ = _view(other_colour, seed=seed + 100)
    rng = np.random.default_rng(seed)
    return clutter.composite(
        view,
        clutter.object_mask(view),
        _photos(),
        rng,
        CONFIG,
        (other, clutter.object_mask(other)),
        tile,
    )


@pytest.mark.parametrize("seed", range(24))
def test_object_is_inside_its_box_and_box_is_visible_extent(seed):
    # The same random draws with the object painted two colours: the
    # pixels that differ are exactly the object's visible pixels.
    a = _composite(seed, (255, 0, 255), (0, 255, 0))
    b = _composite(seed, (0, 255, 0), (0, 255, 0))
    assert a.info == b.info
    shown = np.any(a.image != b.image, axis=-1)
    np.testing.assert_array_equal(shown, a.visible)
    assert a.box == _extent(shown)
    x0, y0, x1, y1 = a.box
    outside = shown.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    assert 0 <= x0 < x1 <= CONFIG.image_size
    assert 0 <= y0 < y1 <= CONFIG.image_size
    fraction = a.info["visible_fraction"]
    if a.info["occluder"] == "none":
        assert fraction == 1.0
    else:
        assert CONFIG.min_visible <= fraction <= CONFIG.max_visible


def test_occluders_of_every_kind_occur():
    kinds = {
        _composite(seed, (255, 0, 255), (0, 255, 0)).info["occluder"]
        for seed in range(24)
    }
    assert kinds == set(clutter.OCCLUDERS)


def test_seeds_reproduce_images():
    view, _ = _view((255, 0, 255), seed=3)
    mask = clutter.object_mask(view)

    def make(*key):
        rng = clutter.image_rng(*key)
        return clutter.composite(view, mask, _photos(), rng, CONFIG).image

    np.testing.assert_array_equal(
        make(15, "train", 3, 10), make(15, "train", 3, 10)
    )
    for other in [(16, "train", 3, 10), (15, "test", 3, 10)]:
        assert np.any(make(*other) != make(15, "train", 3, 10))
    with pytest.raises(ValueError, match="split"):
        clutter.image_rng(15, "val", 3, 10)


def test_tiles_cover_photos_without_overlap_and_stay_inside():
    photos = _photos()
    tiles = clutter.photo_tiles(photos, 3)
    # 60x90 -> side 20, 4x3 tiles; 80x70 -> side 23, 3x3 tiles.
    assert len(tiles) == 12 + 9
    for index in range(2):
        h, w = photos[index].shape[:2]
        cover = np.zeros((h, w), int)
        for i, x, y, side in tiles:
            if i == index:
                cover[y : y + side, x : x + side] += 1
        assert cover.max() == 1
    order = clutter.object_tiles(len(tiles), 8, 15, "train", 7)
    assert len(set(order.tolist())) == 8
    with pytest.raises(ValueError, match="tiles"):
        clutter.object_tiles(len(tiles), 22, 15, "train", 7)
    view, _ = _view((255, 0, 255), seed=4)
    mask = clutter.object_mask(view)
    for tile in tiles[:6]:
        rng = np.random.default_rng(tile[1])
        info = clutter.composite(view, mask, photos, rng, CONFIG, None, tile)
        x, y, side = info.info["crop"]
        _, tx, ty, tside = tile
        assert tx <= x and x + side <= tx + tside
        assert ty <= y and y + side <= ty + tside


def test_split_views_follow_the_coil_protocol():
    names = [
        f"obj{o}__{d}.png" for o in range(1, 101) for d in range(0, 360, 5)
    ]
    views = clutter.split_views(names + ["notes.txt", "obj3__5.jpg"])
    train = {o for o, _, _ in views["train"]}
    test = {o for o, _, _ in views["test"]}
    assert train == set(range(1, 51)) and test == set(range(51, 101))
    assert not train & test
    assert len(views["train"]) == 50 * 72
    assert {d for _, d, _ in views["test"]} == set(range(0, 360, 15))


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """A generated set from 4 fake COIL objects (train 1 and 41, test 51
    and 52), 2 views each, 2 in-memory backgrounds per split."""
    coil = tmp_path_factory.mktemp("coil")
    colours = {1: (250, 0, 250), 41: (0, 250, 0), 51: (250, 250, 0)}
    colours[52] = (0, 250, 250)
    for obj, colour in colours.items():
        for deg in (0, 15):
            view, _ = _view(colour, seed=obj + deg, size=128)
            Image.fromarray(view).save(coil / f"obj{obj}__{deg}.png")
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 90, (300, 400, 3)).astype(np.uint8)] * 2
    rows = [{"file": f"photo{i}"} for i in range(2)]
    config = dataclasses.replace(CONFIG, tiles_per_side=9)
    backgrounds = {
        "train": (photos, rows),
        "test": ([p[::-1] for p in photos], rows),
    }
    outs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(name)
        script.generate(coil, out, backgrounds, config, verbose=0)
        outs.append(out)
    return coil, outs


def test_generate_writes_reproducible_lists_and_boxes(tiny_set):
    from keras_rmac.data.labelled import read_image_list

    _, (out, again) = tiny_set
    train = read_image_list(out / "train_boxes.csv")
    test = read_image_list(out / "test_boxes.csv")
    plain = read_image_list(out / "train.csv")
    assert plain.boxes is None and plain.paths == train.paths
    assert sorted(map(int, train.label_names())) == [1, 1, 41, 41]
    assert sorted(map(int, test.label_names())) == [51, 51, 52, 52]
    assert not set(train.label_names()) & set(test.label_names())
    records = [
        json.loads(line)
        for line in (out / "metadata.jsonl").read_text().splitlines()
    ]
    listed = dict(
        zip(train.paths + test.paths, np.concatenate([train.boxes, test.boxes]))
    )
    for record in records:
        name = record["image"].replace(".png", ".jpg")
        path = str(out / "images" / record["split"] / name)
        np.testing.assert_array_equal(listed[path], record["box"])
        image = np.asarray(Image.open(path))
        assert image.shape == (CONFIG.image_size, CONFIG.image_size, 3)
        other = again / "images" / record["split"] / name
        assert open(path, "rb").read() == open(other, "rb").read()
    # One object's images never share a background tile.
    for obj in (1, 41, 51, 52):
        crops = [r["crop"] for r in records if f"obj{obj}__" in r["image"]]
        assert len(crops) == 2
        (ax, ay, aside), (bx, by, bside) = crops
        same = [r["background"] for r in records if f"obj{obj}__" in r["image"]]
        if same[0] == same[1]:
            assert (
                ax + aside <= bx
                or bx + bside <= ax
                or ay + aside <= by
                or by + bside <= ay
            )


def test_load_protocol_splits(tiny_set):
    _, (out, _) = tiny_set
    fit, dataset, boxes = script.load_protocol(out, "test")
    assert sorted(set(fit.label_names())) == ["1", "41"]
    assert sorted(set(dataset.db_labels.tolist())) == [51, 52]
    assert [os.path.basename(p) for p in dataset.query_paths] == [
        "obj51__0.jpg",
        "obj52__0.jpg",
    ]
    assert boxes.shape == (4, 4)
    for q, g in zip(dataset.query_db_indices, dataset.gnd):
        assert g["junk"].tolist() == [q]
        assert dataset.db_labels[g["ok"]].tolist() == [dataset.db_labels[q]]
    fit, val, _ = script.load_protocol(out, "val")
    assert set(fit.label_names()) == {"1"}
    assert set(val.db_labels.tolist()) == {41}
    assert len(val.query_paths) == 1  # obj41__0 (15 is not a query angle)
    with pytest.raises(ValueError, match="split"):
        script.load_protocol(out, "train")


def test_box_iou_hand_cases():
    boxes = [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10], [3, 3, 3, 9]]
    iou = script.box_iou(boxes, boxes)
    expected = np.array(
        [
            [1, 50 / 150, 0, 0],  # half overlap; touching edges: 0
            [50 / 150, 1, 50 / 150, 0],
            [0, 50 / 150, 1, 0],
            [0, 0, 0, 0],  # a degenerate box overlaps nothing
        ]
    )
    np.testing.assert_allclose(iou, expected)
    assert script.box_iou(np.zeros((0, 4)), boxes).shape == (0, 4)


def test_grid_boxes_and_recall():
    # RegionProposal(levels=1) on a 3x5 map: [[0,0,5,3],[0,0,3,3],[2,0,3,3]]
    # (its docstring); on a 60x100 image a cell is 20x20 pixels.
    boxes = script.grid_boxes(3, 5, 60, 100, levels=1)
    np.testing.assert_array_equal(
        boxes, [[0, 0, 100, 60], [0, 0, 60, 60], [40, 0, 100, 60]]
    )
    truth = np.array([[0, 0, 60, 60], [60, 0, 100, 60], [0, 0, 10, 10]])
    # With the whole image only: IoUs 0.6, 0.4 and 100/6000. With all
    # three: 1.0, 40*60/(60*60) = 0.667 and 100/3600.
    assert script.recall_at(boxes, truth, 1) == pytest.approx(
        (1 / 3, (0.6 + 0.4 + 100 / 6000) / 3)
    )
    recall, mean = script.recall_at(boxes, truth, 3)
    assert recall == pytest.approx(2 / 3)
    assert mean == pytest.approx((1 + 2 / 3 + 100 / 3600) / 3)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIG.seed = 3
