"""RMACModel(proposal_from=...): the learned regions stay fixed in training.

The RPN reads a frozen copy of the backbone tail (issue 15): training the
backbone must change the descriptor but not the proposals, and without the
copy (the default) the same training does move them.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.export import export_saved_model
from keras_rmac.models import RMACModel
from keras_rmac.models import TripletModel
from keras_rmac.models.proposal_tail import frozen_tail
from keras_rmac.models.proposal_tail import proposal_cut
from keras_rmac.models.regions import region_boxes
from keras_rmac.models.triplet_model import FeatureEmbedding
from tests.models.test_rpn_model import _png

RPN = {"top_n": 6, "hidden": 4, "sizes": [1.0, 2.0], "ratios": [1.0, 2.0]}


def tiny_backbone(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="c1")(
        inputs
    )
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu", name="c3")(x)
    return keras.Model(inputs, x, name="tiny")


def rpn_model(proposal_from=None, pca_dim=None):
    model = RMACModel(
        tiny_backbone(),
        weights=None,
        preprocessing="tf",
        pca_dim=pca_dim,
        regions="rpn",
        rpn_options=RPN,
        proposal_from=proposal_from,
    )
    # Non-zero RPN weights, so that the proposals depend on the image.
    rng = np.random.default_rng(0)
    for w in model.pool.weights:
        w.assign(rng.normal(scale=0.3, size=w.shape).astype("float32"))
    return model


def _images(n=4, seed=0, side=40):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, side, side + 8, 3)).astype("float32")


def _boxes(model, images):
    return np.stack([region_boxes(model, image) for image in images])


def _oracle_boxes(backbone_weights, rpn_weights, images):
    """Proposals of a separate default model holding the given weights."""
    oracle = rpn_model()
    for w, value in zip(oracle.backbone.weights, backbone_weights):
        w.assign(value)
    for w, value in zip(oracle.pool.weights, rpn_weights):
        w.assign(value)
    return _boxes(oracle, images)


def _train(model, trainable_from, steps=6):
    """Adam at 0.05 on random triplets: big moves of the trained layers."""
    triplets = TripletModel(model, trainable_from=trainable_from)
    triplets.compile(optimizer=keras.optimizers.Adam(0.05))
    rng = np.random.default_rng(1)
    shape = (steps * 2, 32, 32, 3)
    data = {
        k: rng.uniform(0, 255, shape).astype("float32")
        for k in ("query", "positive", "negative")
    }
    triplets.fit(data, np.zeros(steps * 2), batch_size=2, verbose=0)


@pytest.mark.parametrize(
    "trainable_from, cut", [(None, "c1"), ("c2", "c2"), (0.5, "c2")]
)
def test_proposals_stay_fixed_while_the_backbone_trains(trainable_from, cut):
    probe = rpn_model()
    assert proposal_cut(probe.backbone, trainable_from) == cut
    assert proposal_cut(probe.backbone, 1.0) is None  # Nothing trains.
    model = rpn_model(proposal_from=cut)
    images = _images()
    start = [w.numpy() for w in model.backbone.weights]
    rpn_weights = [w.numpy() for w in model.pool.weights]
    before = model(images).numpy()
    np.testing.assert_array_equal(
        _boxes(model, images), _oracle_boxes(start, rpn_weights, images)
    )
    _train(model, trainable_from)
    trained = model.backbone.get_layer("c3").kernel.numpy()
    assert not np.allclose(trained, start[-2], atol=1e-3)
    assert not np.allclose(model(images).numpy(), before, atol=1e-3)
    # The oracle: the untouched RPN on the untouched backbone.
    np.testing.assert_array_equal(
        _boxes(model, images), _oracle_boxes(start, rpn_weights, images)
    )
    copied = model.proposal_tail.weights
    assert len(copied) == {"c1": 6, "c2": 4}[cut]
    for got, want in zip(copied, start[-len(copied) :]):
        np.testing.assert_array_equal(got.numpy(), want)


def test_without_the_copy_the_same_training_moves_the_proposals():
    model = rpn_model()
    images = _images()
    before = _boxes(model, images)
    _train(model, None)
    assert not np.array_equal(_boxes(model, images), before)


def test_save_load_keeps_the_copy_and_its_own_weights(tmp_path):
    model = rpn_model(proposal_from="c2", pca_dim=5)
    images = _images(3, seed=2)
    model.adapt_pca(images)
    # Train-like drift of the backbone after the copy was made.
    kernel = model.backbone.get_layer("c3").kernel
    kernel.assign(kernel.numpy() * -1.5)
    want = model.extract(images)
    boxes = _boxes(model, images)
    path = str(tmp_path / "fixed.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.proposal_from == "c2"
    assert not reloaded.proposal_tail.trainable_weights
    np.testing.assert_allclose(reloaded.extract(images), want, atol=1e-6)
    np.testing.assert_array_equal(_boxes(reloaded, images), boxes)
    assert reloaded.fingerprint() == model.fingerprint()
    assert reloaded.fingerprint() != rpn_model().fingerprint()
    # Multi-resolution extraction runs the copy at every scale.
    np.testing.assert_allclose(
        reloaded.extract(images, scales=(1.0, 0.7)),
        model.extract(images, scales=(1.0, 0.7)),
        atol=1e-6,
    )


def test_feature_embedding_feeds_cached_features_to_the_copy():
    model = rpn_model(proposal_from="c2", pca_dim=5)
    kernel = model.backbone.get_layer("c2").kernel
    kernel.assign(kernel.numpy() * 2.0)  # Copy and backbone now differ.
    images = _images(3, seed=3)
    net = FeatureEmbedding(model, "c2")
    cached = net.prefix(images)
    np.testing.assert_allclose(net(cached), model(images), atol=1e-5)
    np.testing.assert_allclose(
        net.region_vectors(cached), model.region_vectors(images), atol=1e-5
    )
    # The copy starting after the cache: the tail computes its input.
    later = rpn_model(proposal_from="c3")
    net = FeatureEmbedding(later, "c2")
    np.testing.assert_allclose(
        net(net.prefix(images)), later(images), atol=1e-5
    )
    with pytest.raises(ValueError, match="'c1'.*cache features"):
        FeatureEmbedding(rpn_model(proposal_from="c1"), "c2")


def test_export_uses_the_copy(tmp_path):
    model = rpn_model(proposal_from="c2", pca_dim=5)
    images = [np.round(im) for im in _images(2, seed=4)]
    model.adapt_pca(images)
    kernel = model.backbone.get_layer("c3").kernel
    kernel.assign(kernel.numpy() * -1.0)
    path = export_saved_model(model, tmp_path / "fixed", scales=(1.0, 0.5))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    got = serve(image_bytes=tf.constant([_png(im) for im in images]))
    want = model.extract(images, scales=(1.0, 0.5))
    np.testing.assert_allclose(got["descriptor"].numpy(), want, atol=1e-4)


def test_bad_proposal_from_is_refused():
    with pytest.raises(ValueError, match="regions='rpn'"):
        RMACModel(tiny_backbone(), None, preprocessing="tf", proposal_from="c2")
    with pytest.raises(ValueError, match="'nope' is not a layer"):
        rpn_model(proposal_from="nope")
    with pytest.raises(ValueError, match="layer name"):
        rpn_model(proposal_from=2)


def test_proposal_cut_moves_back_before_a_skip_connection():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    y = keras.layers.Conv2D(4, 3, padding="same", name="inner")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.Conv2D(6, 1, name="out")(x)
    backbone = keras.Model(inputs, x)
    # "add" joins two branches (it cannot start a tail): the cut moves
    # back to "inner", whose input (stem's output) feeds the whole block.
    names = [layer.name for layer in backbone.layers]
    assert names[1:] == ["stem", "inner", "add", "out"]
    assert proposal_cut(backbone, "out") == "out"
    assert proposal_cut(backbone, "add") == "inner"
    assert proposal_cut(backbone, "inner") == "inner"
    assert proposal_cut(backbone, 0.6) == "inner"  # round(0.6 * 5) = 3
    assert proposal_cut(backbone, 0.8) == "out"
    assert proposal_cut(backbone, None) == "stem"
    assert proposal_cut(backbone, 1.0) is None
    # The copy from "inner" computes the backbone from stem's output.
    x = np.random.default_rng(0).normal(size=(1, 5, 7, 3)).astype("float32")
    stem = backbone.get_layer("stem")(x)
    np.testing.assert_allclose(
        frozen_tail(backbone, "inner")(stem), backbone(x), atol=1e-5
    )


@pytest.mark.parametrize("proposal_from", [None, "c2"])
def test_extract_with_xla_equals_extract_without(proposal_from):
    # XLA compiles the learned regions too (box max-pooling with static
    # shapes), with or without the RPN's frozen copy; two image sizes.
    model = rpn_model(proposal_from=proposal_from, pca_dim=5)
    model.adapt_pca(_images(3, seed=5))
    for side in (40, 29):
        images = _images(3, seed=6, side=side)
        np.testing.assert_allclose(
            model.extract(images, jit_compile=True),
            model.extract(images),
            atol=1e-5,
        )


def _cosines(a, b):
    return np.sum(a * b, axis=1) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    )


def _copy_dtypes(model):
    return {layer.compute_dtype for layer in model.proposal_tail.layers[1:]}


@pytest.fixture
def mixed_float16_policy():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_the_copy_follows_a_mixed_float16_global_policy(mixed_float16_policy):
    # Built under mixed_float16, backbone and copy compute in float16; the
    # RPN still proposes in float32. Tolerance: cosine >= 0.995 with the
    # float32 model's descriptors (measured: >= 0.99999, largest entry
    # difference 3e-4; float16 rounding of the maps, same proposals here).
    model = rpn_model(proposal_from="c2")
    assert _copy_dtypes(model) == {"float16"}
    assert model.backbone.get_layer("c3").compute_dtype == "float16"
    assert all(w.dtype == "float32" for w in model.pool.weights)
    images = _images(3, seed=7)
    features, maps = model.backbone_maps(model.preprocess(images))
    assert features.dtype == maps.dtype == "float16"
    got = model.extract(images)
    keras.mixed_precision.set_dtype_policy("float32")
    want = rpn_model(proposal_from="c2").extract(images)
    assert np.all(np.isfinite(got))
    assert np.min(_cosines(got, want)) >= 0.995


def test_extract_in_mixed_float16_runs_the_copy_in_float16():
    # precision= puts the backbone under the policy while tracing: the
    # copy of its tail too (it computed float32 maps before).
    model = rpn_model(proposal_from="c2")
    seen = []
    tail_call = model.proposal_tail.call

    def spy(*args, **kwargs):
        out = tail_call(*args, **kwargs)
        seen.append((_copy_dtypes(model), out.dtype))
        return out

    model.proposal_tail.call = spy
    images = _images(3, seed=8)
    got = model.extract(images, precision="mixed_float16")
    assert seen and seen[-1] == ({"float16"}, "float16")
    assert _copy_dtypes(model) == {"float32"}  # Restored after tracing.
    want = model.extract(images)
    assert np.all(np.isfinite(got))
    assert np.min(_cosines(got, want)) >= 0.995
