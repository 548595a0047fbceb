"""train_rpn: anchor labels and sampling against NumPy, and a tiny run."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_rmac.data.labelled import LabelledImages
from keras_rmac.data.labelled import read_image_list
from keras_rmac.data.labelled import write_image_list
from keras_rmac.models import RMACModel
from keras_rmac.training import rpn
from keras_rmac.training.rpn_features import backbone_key
from tests.layers.test_box_ops import oracle_iou


def oracle_labels(anchors, boxes, pos=0.7, neg=0.3):
    iou = oracle_iou(anchors, boxes)
    labels = np.full(len(anchors), -1)
    best = iou.max(1) if boxes.size else np.zeros(len(anchors))
    labels[best < neg] = 0
    labels[best >= pos] = 1
    for g in range(len(boxes)):
        top = iou[:, g].max()
        if top > 0:
            labels[iou[:, g] == top] = 1
    return labels


def test_anchor_labels_match_oracle_with_ties_borders_and_no_box():
    rng = np.random.default_rng(0)
    anchors = rpn.box_ops.make_anchors(4, 5, (1.0, 2.0), (1.0,)).numpy()
    cases = [
        np.zeros((0, 4), np.float32),
        np.array([[0, 0, 5, 4]], np.float32),  # the whole map
        np.array([[2, 2, 2, 3]], np.float32),  # degenerate: no positive
        np.array([[0, 0, 2, 2], [3, 2, 5, 4]], np.float32),
    ]
    for _ in range(10):
        xy = rng.uniform(0, 4, (3, 2))
        cases.append(np.concatenate([xy, xy + rng.uniform(0.5, 3, (3, 2))], 1))
    for boxes in cases:
        boxes = boxes.astype(np.float32)
        labels, targets = rpn.anchor_labels(anchors, boxes)
        np.testing.assert_array_equal(
            labels.numpy(), oracle_labels(anchors, boxes), err_msg=boxes
        )
        assert np.all(np.isfinite(targets.numpy()))


def test_sample_keeps_at_most_half_positives_and_fills_with_negatives():
    labels = tf.constant([1] * 10 + [0] * 30 + [-1] * 5)
    pos, neg = rpn.sample_anchors(labels, 16, 0.5, tf.constant([0, 1]))
    pos, neg = pos.numpy(), neg.numpy()
    assert pos.sum() == 8 and neg.sum() == 8
    assert pos[10:].sum() == 0 and neg[:10].sum() == 0 and neg[40:].sum() == 0
    few = tf.constant([1] * 2 + [0] * 3)
    pos, neg = rpn.sample_anchors(few, 16, 0.5, tf.constant([0, 1]))
    assert pos.numpy().sum() == 2 and neg.numpy().sum() == 3


def test_smooth_l1_against_hand_values():
    got = rpn.smooth_l1(tf.constant([0.0, 0.05, -1.0]), beta=0.1).numpy()
    np.testing.assert_allclose(got, [0.0, 0.5 * 0.0025 / 0.1, 0.95])


def tiny_backbone():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    return keras.Model(inputs, keras.layers.ReLU()(x))


def _write_rectangles(folder, count, seed, classes=1):
    """Noise images with one bright rectangle each; its box is known."""
    rng = np.random.default_rng(seed)
    paths, boxes = [], []
    for i in range(count):
        image = rng.uniform(0, 60, (48, 48, 3))
        w, h = rng.integers(12, 28, 2)
        x0, y0 = rng.integers(0, 48 - w), rng.integers(0, 48 - h)
        image[y0 : y0 + h, x0 : x0 + w] = 230
        path = os.path.join(folder, f"{i}.png")
        Image.fromarray(image.astype(np.uint8)).save(path)
        paths.append(path)
        boxes.append([x0, y0, x0 + w, y0 + h])
    csv = os.path.join(folder, "boxes.csv")
    write_image_list(
        csv,
        LabelledImages.from_labels(
            paths, [i % classes for i in range(count)], boxes=boxes
        ),
    )
    return csv


def _model(config):
    return RMACModel(
        tiny_backbone(),
        weights=None,
        preprocessing="tf",
        regions="rpn",
        rpn_options=config.rpn_options(),
    )


def _small_rpn(csv, output_dir, **overrides):
    """A tiny RPN's `RPNConfig`: one anchor shape, top 3, 1 epoch."""
    settings = dict(
        image_size=48,
        sizes=(3.0,),
        ratios=(1.0,),
        top_n=3,
        hidden=4,
        epochs=1,
        num_workers=0,
    )
    return rpn.RPNConfig(csv, str(output_dir), **{**settings, **overrides})


def test_rpn_learns_the_boxes_of_synthetic_images_and_resumes(tmp_path):
    csv = _write_rectangles(str(tmp_path), 12, seed=0)
    config = rpn.RPNConfig(
        csv,
        str(tmp_path / "run"),
        image_size=48,
        sizes=(3.0, 5.0),
        ratios=(0.5, 1.0, 2.0),
        top_n=4,
        hidden=16,
        epochs=25,
        learning_rate=3e-3,
        anchors_per_image=64,
        checkpoint_every=7,
        num_workers=0,
    )
    untrained = _model(config)
    images = read_image_list(csv)
    items, bad = rpn.cache_boxed_features(untrained, images, config)
    assert not bad and items[0][0].shape[1:3] == (12, 12)
    before = rpn.feature_recall(untrained.pool, items, top_n=4)

    result = rpn.train_rpn(config, model=_model(config))
    trained = keras.models.load_model(result.model_path)
    assert not trained.pool.trainable_weights  # Saved frozen.
    after = rpn.feature_recall(trained.pool, items, top_n=4)
    assert after >= before + 0.3, (before, after)
    assert result.losses[-1] < result.losses[0]
    assert not os.path.exists(os.path.join(config.output_dir, rpn.BACKUP))

    # Killed after 30 steps (checkpoint at step 28), then run again: it
    # resumes and ends with the weights of the uninterrupted run.
    again = rpn.RPNConfig(**{**vars(config), "output_dir": str(tmp_path / "b")})
    real_run = rpn._Trainer.run

    def crash_at_30(self, features, boxes):
        if self.step == 30:
            raise KeyboardInterrupt
        return real_run(self, features, boxes)

    rpn._Trainer.run = crash_at_30
    try:
        with pytest.raises(KeyboardInterrupt):
            rpn.train_rpn(again, model=_model(again))
    finally:
        rpn._Trainer.run = real_run
    assert os.path.exists(os.path.join(again.output_dir, rpn.BACKUP))
    resumed = rpn.train_rpn(again, model=_model(again))
    assert resumed.resumed_from == 28
    reloaded = keras.models.load_model(resumed.model_path)
    for got, want in zip(reloaded.pool.weights, trained.pool.weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_train_rpn_refuses_a_list_without_boxes(tmp_path):
    csv = os.path.join(tmp_path, "plain.csv")
    write_image_list(csv, LabelledImages.from_labels(["a.png"], [0]))
    config = rpn.RPNConfig(csv, str(tmp_path / "run"), weights=None)
    with pytest.raises(ValueError, match="no box columns"):
        rpn.train_rpn(config, model=_model(config))


@pytest.mark.parametrize("cache", [False, True])
def test_descriptor_trains_on_the_learned_regions_with_the_rpn_frozen(
    tmp_path, cache
):
    from keras_rmac.models.regions import region_boxes
    from keras_rmac.training import TrainConfig
    from keras_rmac.training import train

    csv = _write_rectangles(str(tmp_path), 12, seed=1, classes=3)
    config = _small_rpn(csv, tmp_path / "rpn")
    rpn_path = rpn.train_rpn(config, model=_model(config)).model_path
    trained_rpn = keras.models.load_model(rpn_path)
    layers = [layer.name for layer in trained_rpn.backbone.layers]
    # Whole backbone trained: the RPN's copy is the whole backbone; from
    # the second convolution (features cached before it): from there.
    cut = layers[3] if cache else layers[1]
    result = train(
        TrainConfig(
            train_list=csv,
            rpn_model=rpn_path,
            trainable_from=cut if cache else None,
            cache_features=cache,
            output_dir=str(tmp_path / "descriptor"),
            image_size=48,
            batch_size=2,
            steps_per_epoch=2,
            epochs=1,
            learning_rate=1e-2,
            pca_images=6,
            mining=False,
            augment=False,
            num_workers=0,
            verbose=0,
        )
    )
    model = keras.models.load_model(result.model_path)
    assert model.regions == "rpn" and model.rpn_options["top_n"] == 3
    for got, want in zip(model.pool.weights, trained_rpn.pool.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    changed = [
        not np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(model.backbone.weights, trained_rpn.backbone.weights)
    ]
    assert any(changed)  # The descriptor's backbone was trained.
    # ... and the proposals are still the trained RPN's own.
    images = read_image_list(csv)
    for path in images.paths[:4]:
        image = np.asarray(Image.open(path).convert("RGB"), np.float32)
        np.testing.assert_array_equal(
            region_boxes(model, image), region_boxes(trained_rpn, image)
        )
    assert model.proposal_from == cut
    assert rpn.rpn_embedding(rpn_path).proposal_from is None


def test_rpn_embedding_refuses_a_grid_model(tmp_path):
    path = os.path.join(tmp_path, "grid.keras")
    RMACModel(tiny_backbone(), None, preprocessing="tf").save(path)
    with pytest.raises(ValueError, match="regions='rpn'"):
        rpn.rpn_embedding(path)
    with pytest.raises(FileNotFoundError, match="train-rpn"):
        rpn.rpn_embedding(os.path.join(tmp_path, "missing.keras"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("image_size", 12.5),
        ("positive_fraction", 0.0),
        ("negative_iou", 0.8),
        ("sizes", (1.0, 0.0)),
        ("learning_rate", 0.0),
    ],
)
def test_rpn_config_refuses_bad_settings(field, value):
    config = rpn.RPNConfig("a.csv", "out", **{field: value})
    # check_int raises TypeError for a float, ValueError below 1.
    with pytest.raises((ValueError, TypeError), match=field):
        config.validate()


def test_train_rpn_with_a_proposal_copy_trains_on_the_copys_maps(tmp_path):
    # A model whose RPN reads a frozen copy of the backbone from its second
    # convolution, then a backbone that drifted (as after training the
    # descriptor): the RPN must learn on the copy's maps, those it reads
    # at inference. Oracle: the same run on a model without a copy whose
    # backbone still has the copy's weights (same maps, same seeds).
    csv = _write_rectangles(str(tmp_path), 6, seed=2)
    config = _small_rpn(csv, tmp_path / "copy", epochs=2, learning_rate=3e-3)
    oracle = _model(config)
    backbone = tiny_backbone()
    cut = backbone.layers[3].name
    model = RMACModel(
        backbone,
        weights=None,
        preprocessing="tf",
        regions="rpn",
        rpn_options=config.rpn_options(),
        proposal_from=cut,
    )
    for mine, theirs in zip(model.pool.weights, oracle.pool.weights):
        mine.assign(theirs)  # The same untrained RPN head.
    kernel = model.backbone.layers[3].kernel
    kernel.assign(kernel.numpy() * -2.0)
    items, _ = rpn.cache_boxed_features(model, read_image_list(csv), config)
    oracle_config = rpn.RPNConfig(
        **{**vars(config), "output_dir": str(tmp_path / "o")}
    )
    want, _ = rpn.cache_boxed_features(
        oracle, read_image_list(csv), oracle_config
    )
    assert len(items) == len(want) == 6
    for (got_map, _), (want_map, _) in zip(items, want):
        np.testing.assert_allclose(got_map, want_map, atol=1e-5)
    trained = keras.models.load_model(rpn.train_rpn(config, model).model_path)
    expected = keras.models.load_model(
        rpn.train_rpn(oracle_config, oracle).model_path
    )
    assert trained.proposal_from == cut
    for got, want_w in zip(trained.pool.weights, expected.pool.weights):
        np.testing.assert_allclose(got.numpy(), want_w.numpy(), atol=1e-5)
    # The cached maps are keyed by the copy: not those of the backbone.
    assert backbone_key(model, 48) != backbone_key(oracle, 48)


def test_fixed_proposals_switch_turns_the_proposal_copy_on_and_off(tmp_path):
    from keras_rmac.training import TrainConfig
    from keras_rmac.training import train

    csv = _write_rectangles(str(tmp_path), 9, seed=3, classes=3)
    config = _small_rpn(csv, tmp_path / "rpn")
    rpn_path = rpn.train_rpn(config, model=_model(config)).model_path
    first = keras.models.load_model(rpn_path).backbone.layers[1].name
    on = rpn.rpn_embedding(rpn_path, trainable_from=None)
    assert on.proposal_from == first and on.proposal_tail is not None
    off = rpn.rpn_embedding(rpn_path, None, None, fixed_proposals=False)
    assert off.proposal_from is None and off.proposal_tail is None
    # train(): False trains without the copy (the proposals follow the
    # backbone, as before the copy existed); True (default) with it.
    settings = dict(
        train_list=csv,
        rpn_model=rpn_path,
        image_size=48,
        batch_size=2,
        steps_per_epoch=1,
        epochs=1,
        pca_images=6,
        mining=False,
        augment=False,
        num_workers=0,
        verbose=0,
    )
    assert TrainConfig(**settings).fixed_proposals is True
    for fixed, want in [(False, None), (True, first)]:
        out = str(tmp_path / f"descriptor-{fixed}")
        result = train(
            TrainConfig(**settings, output_dir=out, fixed_proposals=fixed)
        )
        model = keras.models.load_model(result.model_path)
        assert model.proposal_from == want
        assert (model.proposal_tail is None) == (not fixed)
    with pytest.raises(ValueError, match="fixed_proposals"):
        TrainConfig(**settings, fixed_proposals="no").validate()


@pytest.mark.parametrize(
    "rpn_model, resize, image_size, cached, want",
    [
        (None, "longest", None, False, "auto"),
        ("rpn.keras", "square", 64, False, "auto"),
        ("rpn.keras", "longest", 64, True, "auto"),
        ("rpn.keras", "longest", 64, False, False),
        ("rpn.keras", "square", None, False, False),
    ],
)
def test_jit_compile_off_for_learned_regions_of_unfixed_height(
    rpn_model, resize, image_size, cached, want
):
    from keras_rmac.training import TrainConfig
    from keras_rmac.training.loop import jit_compile_setting

    config = TrainConfig(
        rpn_model=rpn_model, resize=resize, image_size=image_size
    )
    assert jit_compile_setting(config, cached) == want


def test_xla_refuses_the_box_pooling_gradient_of_an_unknown_height():
    # Why `jit_compile_setting` turns XLA off there: if this ever
    # compiles, the exception can go.
    from keras_rmac.layers import box_ops

    def gradient(x, boxes):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(box_ops.box_max_pool(x, boxes))
        return tape.gradient(loss, x)

    compiled = tf.function(
        gradient,
        jit_compile=True,
        input_signature=[
            tf.TensorSpec([1, None, None, 2]),
            tf.TensorSpec([1, None, 4]),
        ],
    )
    x = np.ones((1, 4, 4, 2), "f4")
    boxes = np.array([[[0, 0, 2, 2]]], "f4")
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="fixed tensor list size"
    ):
        compiled(x, boxes)
    # Known at trace, it compiles (and square training images give that).
    known = tf.function(gradient, jit_compile=True)
    assert known(x, boxes).numpy().sum() == 2.0
