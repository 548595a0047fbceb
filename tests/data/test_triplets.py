"""The tf.data triplet pipeline: order, resume, bad files, boxes."""

import numpy as np
import pytest

from keras_rmac.data import triplets as T
from tests.data.helpers import write_image as _write


def test_moved_names_are_still_importable_from_triplets():
    # mining.py, training.py and the benchmarks import these from here.
    from keras_rmac import data
    from keras_rmac.data import bad_files
    from keras_rmac.data import labelled
    from keras_rmac.data import triplet_table

    assert T.LabelledImages is labelled.LabelledImages is data.LabelledImages
    assert T.read_image_list is labelled.read_image_list
    assert T.folder_per_class is labelled.folder_per_class
    assert T.BadFiles is bad_files.BadFiles
    assert T.validate_images is bad_files.validate_images
    for name in ("TripletTable", "check_trainable", "random_triplets"):
        assert getattr(T, name) is getattr(triplet_table, name)
        assert getattr(data, name) is getattr(triplet_table, name)
    assert data.image_dataset is T.image_dataset
    assert T.STREAMS is triplet_table.STREAMS is data.STREAMS
    assert data.STREAMS == ("query", "positive", "negative")
    assert set(data.__all__) <= set(dir(data))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        data.nothing  # noqa: B018


def _collect(ds):
    batches = list(ds.as_numpy_iterator())
    x = {k: np.concatenate([b[0][k] for b in batches]) for k in T.STREAMS}
    w = np.concatenate([b[2] for b in batches])
    return x, w


def test_pipeline_shapes_order_and_resume(folder):
    images = T.folder_per_class(folder)
    rows = T.random_triplets(images.labels, 10, seed=0)
    table = T.TripletTable(rows, seed=2)
    ds = T.triplet_dataset(images, table, image_size=8, batch_size=4)
    assert int(ds.cardinality()) == 2  # 10 // 4, remainder dropped
    x, w = _collect(ds)
    assert x["query"].shape == (8, 8, 8, 3) and x["query"].dtype == np.float32
    assert np.all(w == 1.0)
    # Without augmentation each image is a solid colour whose value names
    # the file: check the rows follow the epoch's permutation.
    plain = T.triplet_dataset(images, table, 8, 4, augment=False)
    x, _ = _collect(plain)
    values = np.array([int(images.paths[i][-5]) for i in range(9)])
    values += 40 * (images.labels + 1)
    want = rows[table.order(0)[:8]]
    for s, name in enumerate(T.STREAMS):
        np.testing.assert_allclose(
            x[name][:, 0, 0, 0], values[want[:, s]], atol=0.01
        )
    # Same epoch -> same batches (augmentation included); new epoch ->
    # another order; a resumed epoch (start=4) continues identically.
    a, _ = _collect(ds)
    b, _ = _collect(ds)
    np.testing.assert_array_equal(a["query"], b["query"])
    table.set_epoch(1)
    c, _ = _collect(ds)
    assert not np.array_equal(a["query"], c["query"])
    table.set_epoch(0)
    resumed = T.triplet_dataset(images, table, 8, 4, start=4)
    assert int(resumed.cardinality()) == 1
    r, _ = _collect(resumed)
    np.testing.assert_array_equal(r["positive"], a["positive"][4:8])


def test_bad_file_in_pipeline_gets_zero_weight(folder, tmp_path):
    images = T.folder_per_class(folder)
    table = T.TripletTable(np.array([[0, 1, 3], [4, 5, 6]]), seed=0)
    with open(images.paths[5], "wb") as f:  # breaks after validation
        f.write(b"\x89PNG\r\n\x1a\ntruncated")
    report = str(tmp_path / "bad.txt")
    bad = T.BadFiles(report)
    ds = T.triplet_dataset(images, table, 8, 1, augment=False, bad_files=bad)
    weights = {}
    for x, y, w in ds.as_numpy_iterator():
        weights[int(x["query"][0, 0, 0, 0])] = float(w[0])
    assert weights == {40: 1.0, 81: 0.0}  # image 0 ok; row with image 5 not
    assert list(bad.errors) == [images.paths[5]]
    with open(report) as f:
        assert f.read().startswith(images.paths[5] + "\t")


def test_longest_mode_and_boxes(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 50
    image[:, 20:] = 200
    paths = [
        _write(str(tmp_path / f"{i}.png"), image if i % 2 else image[:, ::-1])
        for i in range(4)
    ]
    boxes = np.array([[20, 0, 40, 20]] * 4, np.float32)  # right half
    boxes[1] = np.nan
    images = T.LabelledImages.from_labels(paths, [0, 0, 1, 1], boxes)
    table = T.TripletTable(np.array([[1, 3, 0], [2, 0, 1]]))
    ds = T.triplet_dataset(
        images, table, 10, 1, resize="longest", augment=False
    )
    (x, _, _), (x2, _, _) = list(ds.as_numpy_iterator())
    assert x["query"].shape == (1, 5, 10, 3)  # image 1: no box, 20x40
    assert x["positive"].shape == (1, 10, 10, 3)  # image 3: box 20x20
    np.testing.assert_allclose(x["positive"], 200.0, atol=0.01)
    np.testing.assert_allclose(x2["query"], 50.0, atol=0.01)  # flipped img
    with pytest.raises(ValueError, match="batch_size=1"):
        T.triplet_dataset(images, table, 10, 2, resize="longest")


# Boxes `(x0, y0, x1, y1)` on a 23 x 37 image and the slice each must give,
# worked out by hand: bounds are floored / ceiled to whole pixels, clipped
# to the image, and a box never shrinks below one pixel.
_BOX_CASES = [
    ((3, 5, 10, 12), (slice(5, 12), slice(3, 10))),  # interior, integer
    ((2.7, 1.4, 7.2, 9.6), (slice(1, 10), slice(2, 8))),  # fractional
    ((-4, -2, 100, 100), (slice(0, 23), slice(0, 37))),  # beyond the image
    ((30, 0, 40, 23), (slice(0, 23), slice(30, 37))),  # right edge
    ((0, 22, 37, 23), (slice(22, 23), slice(0, 37))),  # last row
    ((5, 6, 5, 6), (slice(6, 7), slice(5, 6))),  # empty: one pixel
    ((np.nan,) * 4, (slice(0, 23), slice(0, 37))),  # no box: whole image
]


@pytest.fixture
def box_images(tmp_path):
    """One random 23 x 37 image, listed once per `_BOX_CASES` box."""
    pixels = np.random.default_rng(5).integers(0, 256, (23, 37, 3), np.uint8)
    path = _write(str(tmp_path / "random.png"), pixels)
    boxes = np.array([box for box, _ in _BOX_CASES], np.float32)
    n = len(_BOX_CASES)
    images = T.LabelledImages.from_labels([path] * n, np.arange(n) % 2, boxes)
    return pixels, images


def test_box_crop_matches_hand_computed_slices(box_images):
    # The path of mining and of the feature cache (no resize, no augment).
    pixels, images = box_images
    ds = T.image_dataset(images, image_size=None)
    got = list(ds.as_numpy_iterator())
    assert [int(i) for _, i in got] == list(range(len(_BOX_CASES)))
    for (image, i), (box, (rows, cols)) in zip(got, _BOX_CASES):
        np.testing.assert_array_equal(image, pixels[rows, cols], str(box))


def test_training_triplets_are_cropped_to_their_boxes(box_images):
    # The training path: each stream of each triplet is its own crop.
    pixels, images = box_images
    n = len(_BOX_CASES)
    rows = np.stack([np.arange(n), (np.arange(n) + 2) % n, np.arange(n)], 1)
    table = T.TripletTable(rows[:, [0, 1, 2]], seed=4)
    ds = T.triplet_dataset(images, table, None, 1, augment=False)
    order = table.order(0)
    for position, (x, _, w) in enumerate(ds.as_numpy_iterator()):
        assert w[0] == 1.0
        for s, name in enumerate(T.STREAMS):
            box, (r, c) = _BOX_CASES[rows[order[position], s]]
            np.testing.assert_array_equal(x[name][0], pixels[r, c], str(box))


def test_square_training_images_resize_the_crop_not_the_image(tmp_path):
    # A crop of constant colour stays that colour after the square resize;
    # the whole image, resized, mixes in the random pixels around it.
    pixels = np.random.default_rng(6).integers(0, 256, (23, 37, 3), np.uint8)
    pixels[5:12, 3:10] = (10, 200, 90)
    path = _write(str(tmp_path / "patch.png"), pixels)
    boxes = np.array([[3, 5, 10, 12], [np.nan] * 4], np.float32)
    images = T.LabelledImages.from_labels([path] * 2, [0, 1], boxes)
    table = T.TripletTable(np.array([[0, 0, 1]]))
    ((x, _, _),) = T.triplet_dataset(images, table, 8, 1, augment=False)
    np.testing.assert_allclose(
        x["query"][0], np.broadcast_to([10, 200, 90], (8, 8, 3)), atol=0.01
    )
    assert np.abs(x["negative"][0] - [10, 200, 90]).max() > 50


def test_augmentation_changes_images_within_bounds(folder):
    images = T.folder_per_class(folder)
    table = T.TripletTable(T.random_triplets(images.labels, 4, 0), seed=1)
    aug = T.Augmentation(crop_area=(0.5, 0.6), brightness=0.3)
    x, _ = _collect(T.triplet_dataset(images, table, 8, 4, augment=aug))
    plain, _ = _collect(T.triplet_dataset(images, table, 8, 4, augment=False))
    assert not np.allclose(x["query"], plain["query"])
    assert x["query"].min() >= 0.0 and x["query"].max() <= 255.0


def test_image_dataset_skips_bad_files(folder):
    images = T.folder_per_class(folder)
    with open(images.paths[2], "wb") as f:
        f.write(b"")
    ds = T.image_dataset(images, [0, 2, 4], image_size=6)
    got = [(img.shape, int(i)) for img, i in ds.as_numpy_iterator()]
    assert got == [((6, 6, 3), 0), ((6, 6, 3), 4)]


def test_feature_triplet_dataset_follows_the_table():
    features = np.arange(7, dtype=np.float32)[:, None, None, None] * np.ones(
        (7, 2, 3, 4), np.float32
    )
    rows = np.array([[0, 1, 2], [3, 4, 5], [6, 0, 1], [2, 3, 4], [5, 6, 0]])
    table = T.TripletTable(rows, seed=9)
    table.set_epoch(2)
    ds = T.feature_triplet_dataset(features, table, batch_size=2)
    assert int(ds.cardinality()) == 2
    x, w = _collect(ds)
    assert x["query"].shape == (4, 2, 3, 4) and np.all(w == 1.0)
    want = rows[table.order(2)[:4]]
    for s, name in enumerate(T.STREAMS):
        np.testing.assert_array_equal(x[name][:, 0, 0, 0], want[:, s])
    r, _ = _collect(T.feature_triplet_dataset(features, table, 2, start=2))
    np.testing.assert_array_equal(r["negative"], x["negative"][2:4])
    with pytest.raises(ValueError, match="start"):
        T.feature_triplet_dataset(features, table, 2, start=6)
