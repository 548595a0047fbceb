"""TripletModel: shared weights, training, frozen BN, accumulation, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.losses import TripletMarginLoss
from keras_rmac.models.rmac_model import RMACModel
from keras_rmac.models.triplet_model import FeatureEmbedding
from keras_rmac.models.triplet_model import TripletModel
from keras_rmac.models.triplet_model import make_optimizer
from keras_rmac.models.triplet_model import optimizer_step
from keras_rmac.models.triplet_model import set_trainable
from keras_rmac.models.triplet_model import split_backbone

STREAMS = ("query", "positive", "negative")


def tiny_backbone(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inputs, x, name="tiny")


def tiny_rmac(seed=0, preprocessing="none"):
    return RMACModel(
        tiny_backbone(seed), weights=None, preprocessing=preprocessing, levels=2
    )


def triplets(n=8, side=16, seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: rng.uniform(0, 255, (n, side, side, 3)).astype("float32")
        for k in STREAMS
    }


def test_streams_share_one_set_of_weights():
    embedding = tiny_rmac()
    model = TripletModel(embedding, freeze_batchnorm=False)
    x = triplets(3)
    out = model(x)
    assert out.shape == (3, 3, embedding.dimension)
    ids = {id(v) for v in model.weights}
    assert ids == {id(v) for v in embedding.weights}
    assert len(model.trainable_variables) == len(embedding.trainable_variables)
    for s, name in enumerate(STREAMS):
        np.testing.assert_allclose(out[:, s], embedding(x[name]), atol=1e-6)


def test_different_shapes_take_separate_passes():
    embedding = tiny_rmac()
    model = TripletModel(embedding)
    rng = np.random.default_rng(1)
    x = {
        "query": rng.uniform(0, 255, (1, 16, 24, 3)).astype("float32"),
        "positive": rng.uniform(0, 255, (1, 20, 12, 3)).astype("float32"),
        "negative": rng.uniform(0, 255, (1, 16, 16, 3)).astype("float32"),
    }
    out = model(x)
    for s, name in enumerate(STREAMS):
        np.testing.assert_allclose(out[:, s], embedding(x[name]), atol=1e-6)
    # A tuple of three works the same way.
    np.testing.assert_allclose(
        model(tuple(x[k] for k in STREAMS)), out, atol=1e-6
    )
    with pytest.raises(ValueError, match="negative"):
        model({"query": x["query"], "positive": x["positive"]})


def test_compile_defaults():
    model = TripletModel(tiny_rmac())
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert np.isclose(float(model.optimizer.learning_rate), 1e-5)
    assert isinstance(model.loss, TripletMarginLoss)
    assert model.loss.margin == pytest.approx(0.1)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        TripletModel(tiny_rmac()).compile(gradient_accumulation_steps=1)


def test_make_optimizer():
    adam = make_optimizer()
    assert isinstance(adam, keras.optimizers.Adam)
    assert np.isclose(float(adam.learning_rate), 1e-5)
    assert adam.gradient_accumulation_steps is None
    assert adam.weight_decay is None
    sgd = make_optimizer(
        "sgd", 0.1, gradient_accumulation_steps=3, weight_decay=0.01
    )
    assert isinstance(sgd, keras.optimizers.SGD)
    assert sgd.momentum == pytest.approx(0.9)
    assert np.isclose(float(sgd.learning_rate), 0.1)
    assert sgd.gradient_accumulation_steps == 3
    assert sgd.weight_decay == pytest.approx(0.01)
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer("rmsprop")


def test_optimizer_step_before_compile_and_training():
    assert optimizer_step(None) == 0
    model = TripletModel(tiny_rmac())
    assert model.optimizer_step == 0
    model.compile()
    assert model.optimizer_step == 0


def test_fit_decreases_loss_on_toy_problem():
    # Two classes of images: bright-left vs bright-right. Random init
    # embeds them almost alike; training must separate them.
    rng = np.random.default_rng(0)

    def image(left):
        x = rng.uniform(0, 60, (16, 16, 3))
        if left:
            x[:, :8] += 180
        else:
            x[:, 8:] += 180
        return x.astype("float32")

    n = 16
    left = rng.integers(0, 2, n).astype(bool)
    data = {
        "query": np.stack([image(c) for c in left]),
        "positive": np.stack([image(c) for c in left]),
        "negative": np.stack([image(not c) for c in left]),
    }
    model = TripletModel(tiny_rmac(seed=2))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=None)
    before = float(model.evaluate(data, verbose=0))
    ds = tf.data.Dataset.from_tensor_slices(data).batch(8)
    history = model.fit(ds, epochs=15, verbose=0)
    after = float(model.evaluate(data, verbose=0))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert after < 0.5 * before


def test_batchnorm_frozen_by_default():
    embedding = tiny_rmac()
    model = TripletModel(embedding)
    bns = [
        layer
        for layer in embedding.backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bns and not any(layer.trainable for layer in bns)
    x = triplets(4)
    # Frozen BN runs in inference mode even with training=True.
    np.testing.assert_allclose(
        model(x, training=True), model(x, training=False), atol=1e-6
    )
    before = [np.array(w) for layer in bns for w in layer.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(tf.data.Dataset.from_tensor_slices(x).batch(2), verbose=0)
    after = [np.array(w) for layer in bns for w in layer.weights]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # With freeze_batchnorm=False, training uses batch statistics.
    unfrozen = TripletModel(tiny_rmac(), freeze_batchnorm=False)
    assert not np.allclose(
        unfrozen(x, training=True), unfrozen(x, training=False), atol=1e-4
    )


def test_trainable_from_name_and_fraction():
    backbone = tiny_backbone()
    names = [layer.name for layer in backbone.layers]
    frozen = set_trainable(backbone, "conv2", freeze_batchnorm=False)
    assert frozen == names.index("conv2")
    assert [layer.trainable for layer in backbone.layers] == [
        i >= frozen for i in range(len(names))
    ]
    frozen = set_trainable(backbone, 0.5, freeze_batchnorm=True)
    assert frozen == round(0.5 * len(names))
    assert not backbone.get_layer("bn2").trainable  # BN always frozen
    with pytest.raises(ValueError, match="not a layer"):
        set_trainable(backbone, "block_99")
    with pytest.raises(ValueError, match="fraction"):
        set_trainable(backbone, 1.5)
    # Frozen layers get no update.
    embedding = tiny_rmac()
    model = TripletModel(embedding, trainable_from="conv2")
    conv1 = np.array(embedding.backbone.get_layer("conv1").kernel)
    conv2 = np.array(embedding.backbone.get_layer("conv2").kernel)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    model.fit(
        tf.data.Dataset.from_tensor_slices(triplets(4)).batch(4), verbose=0
    )
    np.testing.assert_array_equal(
        conv1, embedding.backbone.get_layer("conv1").kernel
    )
    assert not np.allclose(conv2, embedding.backbone.get_layer("conv2").kernel)


def _train_copy(weights, batch_size, accumulation, data):
    embedding = tiny_rmac()
    model = TripletModel(embedding)
    model(triplets(1))
    embedding.set_weights(weights)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        gradient_accumulation_steps=accumulation,
    )
    ds = tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    steps = (int(model.optimizer.iterations), model.optimizer_step)
    return embedding.get_weights(), steps


def test_gradient_accumulation_equals_larger_batch():
    reference = tiny_rmac()
    TripletModel(reference)(triplets(1))
    # Hand-made triplets with a non-zero loss for every row.
    data = triplets(8, seed=5)
    data["positive"] = data["negative"][::-1].copy()
    start = reference.get_weights()
    big, big_steps = _train_copy(start, 8, None, data)
    acc, acc_steps = _train_copy(start, 4, 2, data)
    # `iterations` counts applied updates: one in both runs;
    # `optimizer_step` counts batches: one and two.
    assert (big_steps, acc_steps) == ((1, 1), (1, 2))
    changed = False
    for a, b, s in zip(big, acc, start):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        changed |= not np.allclose(a, s)
    assert changed
    # One half-batch alone is a different update.
    half, _ = _train_copy(start, 4, None, {k: v[:4] for k, v in data.items()})
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(half, big))


def test_save_and_load_keras_file(tmp_path):
    embedding = tiny_rmac()
    model = TripletModel(embedding, trainable_from="conv2")
    embedding.shift_pca.adapt(np.random.default_rng(0).normal(size=(50, 8)))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), gradient_accumulation_steps=2
    )
    x = triplets(4)
    model.fit(tf.data.Dataset.from_tensor_slices(x).batch(2), verbose=0)
    path = str(tmp_path / "triplet.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, TripletModel)
    assert restored.trainable_from == "conv2"
    np.testing.assert_allclose(restored(x), model(x), atol=1e-6)
    assert restored.optimizer.gradient_accumulation_steps == 2
    assert int(restored.optimizer.iterations) == 1  # 2 batches, 1 update
    assert isinstance(restored.loss, TripletMarginLoss)
    assert [
        layer.trainable for layer in restored.embedding.backbone.layers
    ] == [layer.trainable for layer in embedding.backbone.layers]
    # The trained RMACModel on its own.
    restored.embedding.save(str(tmp_path / "rmac.keras"))
    rmac = keras.models.load_model(str(tmp_path / "rmac.keras"))
    np.testing.assert_allclose(
        rmac(x["query"]), embedding(x["query"]), atol=1e-6
    )


def test_split_backbone_and_feature_embedding(tmp_path):
    rmac = tiny_rmac(preprocessing="torch")  # the prefix must include it
    rmac.shift_pca.adapt(np.random.default_rng(1).normal(size=(40, 8)))
    x = triplets(3)["query"]
    prefix, tail = split_backbone(rmac.backbone, "conv2")
    np.testing.assert_allclose(tail(prefix(x)), rmac.backbone(x), atol=1e-5)
    assert tail.get_layer("conv2") is rmac.backbone.get_layer("conv2")
    head = FeatureEmbedding(rmac, "conv2")
    features = head.prefix(x)
    np.testing.assert_allclose(head(features), rmac(x), atol=1e-6)
    # The cached part is frozen; training the head trains rmac's tail.
    assert not rmac.backbone.get_layer("conv1").trainable
    model = TripletModel(head)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    data = {k: head.prefix(v) for k, v in triplets(4, seed=3).items()}
    before = np.array(rmac.backbone.get_layer("conv2").kernel)
    conv1 = np.array(rmac.backbone.get_layer("conv1").kernel)
    model.fit(tf.data.Dataset.from_tensor_slices(data).batch(4), verbose=0)
    assert not np.allclose(before, rmac.backbone.get_layer("conv2").kernel)
    np.testing.assert_array_equal(
        conv1, rmac.backbone.get_layer("conv1").kernel
    )
    np.testing.assert_allclose(head(head.prefix(x)), rmac(x), atol=1e-6)
    path = str(tmp_path / "head.keras")
    head.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored(features), head(features), atol=1e-6)
    with pytest.raises(ValueError, match="not a layer"):
        split_backbone(rmac.backbone, "nope")


def test_split_refuses_a_cut_across_a_skip_connection():
    inputs = keras.Input((None, None, 3))
    a = keras.layers.Conv2D(4, 1, name="a")(inputs)
    b = keras.layers.Conv2D(4, 1, name="b")(a)
    c = keras.layers.Conv2D(4, 1, name="c")(b)
    out = keras.layers.Add(name="add")([a, c])
    model = keras.Model(inputs, out)
    with pytest.raises(ValueError, match="several inputs"):
        split_backbone(model, "add")
    with pytest.raises(ValueError, match="skip"):
        split_backbone(model, "c")  # `a` skips over the cut
    prefix, tail = split_backbone(model, "b")  # the skip starts at the cut
    x = np.random.default_rng(0).normal(size=(1, 2, 2, 3)).astype("float32")
    np.testing.assert_allclose(tail(prefix(x)), model(x), atol=1e-6)
