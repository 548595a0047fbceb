"""The RPN trainer's feature maps on disk: equal to the in-memory maps,
reused by a second run, never reused across keys, resumed when cut."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_rmac.data.labelled import LabelledImages
from keras_rmac.data.labelled import read_image_list
from keras_rmac.data.labelled import write_image_list
from keras_rmac.training import rpn
from keras_rmac.training import rpn_features
from tests.test_train_rpn import _model
from tests.test_train_rpn import _write_rectangles


def _config(folder, out="run", **kwargs):
    options = dict(
        image_size=48,
        sizes=(3.0, 5.0),
        ratios=(0.5, 1.0, 2.0),
        top_n=4,
        hidden=8,
        epochs=2,
        learning_rate=3e-3,
        anchors_per_image=64,
        checkpoint_every=5,
        num_workers=0,
    )
    options.update(kwargs)
    return rpn.RPNConfig(
        os.path.join(folder, "boxes.csv"), os.path.join(folder, out), **options
    )


def _images(folder, count=6):
    """`count` rectangles, then a row without a box and a broken file."""
    _write_rectangles(folder, count, seed=3)
    good = read_image_list(os.path.join(folder, "boxes.csv"))
    broken = os.path.join(folder, "broken.png")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    boxes = np.concatenate([good.boxes, [[np.nan] * 4, [1.0, 1.0, 20.0, 20.0]]])
    return LabelledImages.from_labels(
        [*good.paths, good.paths[0], broken], [0] * (count + 2), boxes=boxes
    )


def _count_backbone_calls(monkeypatch, fail_after=None):
    """Counts the backbone runs of `cache_boxed_features` (and raises
    KeyboardInterrupt at run `fail_after + 1`, a killed caching pass)."""
    calls = []
    real = rpn_features._backbone_function

    def counted(model):
        run = real(model)

        def call(x):
            if fail_after is not None and len(calls) == fail_after:
                raise KeyboardInterrupt
            calls.append(1)
            return run(x)

        return call

    monkeypatch.setattr(rpn_features, "_backbone_function", counted)
    return calls


def _in_memory(model, images, config):
    """Today's in-memory items, computed independently of the cache:
    every boxed image decoded, resized, run through the backbone; its
    pixel box scaled by map size / original size per axis."""
    run = tf.function(  # As the in-memory trainer ran the backbone.
        lambda x: model.backbone(model.preprocess(x), training=False),
        input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)],
    )
    items = []
    for path, box in zip(images.paths, images.boxes):
        if np.isnan(box).any() or path.endswith("broken.png"):
            continue
        image = np.asarray(Image.open(path).convert("RGB"), np.float32)
        height, width = image.shape[:2]
        # Longest side 48 already: resizing is the identity here.
        assert max(height, width) == config.image_size
        features = run(tf.constant(image[None]))
        h, w = features.shape[1:3]
        scale = np.array([w / width, h / height, w / width, h / height])
        items.append((features, tf.constant(box[None] * scale, tf.float32)))
    return items


def _train_in_memory(items, config):
    """The training loop of `train_rpn` on in-memory items."""
    model = _model(config)
    trainer = rpn._Trainer(model.pool, config)
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(
            len(items)
        )
        trainer.losses.append(
            float(np.mean([trainer.run(*items[i]) for i in order]))
        )
    return model, trainer.losses


def test_disk_maps_train_exactly_as_in_memory_maps(tmp_path, monkeypatch):
    folder = str(tmp_path)
    images = _images(folder)
    config = _config(folder)
    model = _model(config)
    calls = _count_backbone_calls(monkeypatch)
    items, bad = rpn.cache_boxed_features(model, images, config)
    assert len(calls) == 6 and len(items) == 6
    assert len(bad) == 1 and "broken.png" in bad[0]
    # Only names and boxes in memory; one file per map on disk.
    assert isinstance(items, rpn_features.BoxedFeatures)
    assert items.names.dtype == np.dtype("S24") and items.boxes.shape == (6, 4)
    files = [items.path(i) for i in range(len(items))]
    assert all(os.path.isfile(f) for f in files) and len(set(files)) == 6
    assert all(
        f.startswith(os.path.join(config.output_dir, "rpn_features"))
        for f in files
    )

    memory = _in_memory(model, images, config)
    for (got_f, got_b), (want_f, want_b) in zip(items, memory):
        np.testing.assert_array_equal(got_f.numpy(), want_f.numpy())
        np.testing.assert_array_equal(got_b.numpy(), want_b.numpy())
        assert got_f.dtype == tf.float32 and got_b.shape == (1, 4)
    assert rpn.feature_recall(model.pool, items, top_n=4) == (
        rpn.feature_recall(model.pool, memory, top_n=4)
    )

    # train_rpn reads the same files (no backbone run) and ends with the
    # losses and weights of the loop on the in-memory maps.
    csv = os.path.join(folder, "with_bad.csv")
    write_image_list(csv, images)
    config.train_list = csv
    result = rpn.train_rpn(config, model=_model(config))
    assert len(calls) == 6 and result.images == 6 and len(result.bad_files) == 1
    want_model, want_losses = _train_in_memory(memory, config)
    assert result.losses == want_losses
    trained = keras.models.load_model(result.model_path)
    for got, want in zip(trained.pool.weights, want_model.pool.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_second_run_reuses_the_maps_and_only_reads_them(
    tmp_path, monkeypatch
):
    folder = str(tmp_path)
    images = _images(folder)
    config = _config(folder)
    calls = _count_backbone_calls(monkeypatch)
    first, _ = rpn.cache_boxed_features(_model(config), images, config)
    stamps = [os.stat(first.path(i)).st_mtime_ns for i in range(len(first))]
    decoded = []
    real_load = rpn_features.image_io.load_images

    def load(paths, **kwargs):
        paths = list(paths)
        decoded.extend(paths)
        return real_load(paths, **kwargs)

    monkeypatch.setattr(rpn_features.image_io, "load_images", load)
    again, bad = rpn.cache_boxed_features(_model(config), images, config)
    assert len(calls) == 6  # None more.
    # Only the broken file is tried again (and reported again).
    assert [os.path.basename(p) for p in decoded] == ["broken.png"]
    assert len(bad) == 1
    assert [again.path(i) for i in range(len(again))] == [
        first.path(i) for i in range(len(first))
    ]
    assert stamps == [
        os.stat(again.path(i)).st_mtime_ns for i in range(len(again))
    ]


def test_other_weights_size_or_image_never_reuse_a_map(
    tmp_path, monkeypatch, caplog
):
    folder = str(tmp_path)
    images = _images(folder)
    config = _config(folder)
    calls = _count_backbone_calls(monkeypatch)
    base, _ = rpn.cache_boxed_features(_model(config), images, config)
    assert len(calls) == 6

    # Other backbone weights: another key folder, every map computed.
    other = _model(config)
    other.backbone.weights[0].assign(other.backbone.weights[0] * 2.0)
    with caplog.at_level(logging.WARNING, rpn_features.__name__):
        changed, _ = rpn.cache_boxed_features(other, images, config)
    assert len(calls) == 12 and changed.folder != base.folder
    assert os.path.basename(base.folder) in caplog.text  # Named as stale.
    a, b = base[0][0].numpy(), changed[0][0].numpy()
    assert not np.array_equal(a, b)

    # Another image size: another folder, other map shapes.
    small = _config(folder, image_size=24)
    resized, _ = rpn.cache_boxed_features(_model(small), images, small)
    assert len(calls) == 18 and resized.folder not in (
        base.folder,
        changed.folder,
    )
    assert resized[0][0].shape[1:3] == (6, 6) and base[0][0].shape[1:3] == (
        12,
        12,
    )

    # One image replaced on disk (other content, size and time): only its
    # map is computed anew; the stale file is not read.
    path = images.paths[2]
    Image.fromarray(np.full((48, 40, 3), 200, np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    fresh, _ = rpn.cache_boxed_features(_model(config), images, config)
    assert len(calls) == 19 and fresh.folder == base.folder
    assert fresh.path(2) != base.path(2)
    assert fresh.path(1) == base.path(1)
    assert fresh[2][0].shape[1:3] == (12, 10)
    # Its box is scaled with the new image's size (40 x 48 pixels).
    np.testing.assert_allclose(
        fresh[2][1].numpy()[0],
        images.boxes[2] * np.array([10 / 40, 12 / 48] * 2),
    )


def test_an_interrupted_caching_pass_resumes_where_it_stopped(
    tmp_path, monkeypatch
):
    folder = str(tmp_path)
    images = _images(folder)
    config = _config(folder)
    calls = _count_backbone_calls(monkeypatch, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        rpn.cache_boxed_features(_model(config), images, config)
    key_folder = os.path.join(
        config.output_dir,
        "rpn_features",
        rpn_features.backbone_key(_model(config), config.image_size),
    )
    written = [name for _, _, names in os.walk(key_folder) for name in names]
    assert len(written) == 4  # No temporary file is left either.
    assert all(len(name) == len("0" * 24 + ".npz") for name in written)

    monkeypatch.undo()
    calls = _count_backbone_calls(monkeypatch)
    resumed, _ = rpn.cache_boxed_features(_model(config), images, config)
    assert len(calls) == 2  # The 2 maps missing, not the 4 written.
    whole = _config(folder, out="whole")
    full, _ = rpn.cache_boxed_features(_model(whole), images, whole)
    assert len(calls) == 8
    for (got, got_box), (want, want_box) in zip(resumed, full):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        np.testing.assert_array_equal(got_box.numpy(), want_box.numpy())


def test_an_unreadable_cached_map_names_its_file(tmp_path):
    folder = str(tmp_path)
    images = _images(folder, count=2)
    config = _config(folder)
    items, _ = rpn.cache_boxed_features(_model(config), images, config)
    with open(items.path(1), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match="delete it"):
        items[1]
    assert items[0][0].shape == (1, 12, 12, 8)


def test_a_list_of_only_unreadable_images_is_refused(tmp_path):
    broken = os.path.join(tmp_path, "broken.png")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    images = LabelledImages.from_labels([broken], [0], boxes=[[0, 0, 4, 4]])
    config = _config(str(tmp_path))
    with pytest.raises(ValueError, match="none of the 1 images"):
        rpn.cache_boxed_features(_model(config), images, config)
