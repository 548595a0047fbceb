"""RMACModel(regions="rpn"): the learned proposals in the R-MAC head."""

import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_rmac.evaluation import proposal_recall
from keras_rmac.export import export_saved_model
from keras_rmac.layers import LearnedRegionPooling
from keras_rmac.layers import box_ops
from keras_rmac.models import RMACModel
from keras_rmac.models.regions import region_boxes

RPN = {"top_n": 6, "hidden": 4, "sizes": [1.0, 2.0], "ratios": [1.0]}


def tiny_backbone(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu")(x)
    return keras.Model(inputs, x)


def rpn_model(**kwargs):
    model = RMACModel(
        tiny_backbone(),
        weights=None,
        preprocessing="tf",
        regions="rpn",
        rpn_options=RPN,
        **kwargs,
    )
    # Non-zero RPN weights, so that the proposals depend on the image.
    rng = np.random.default_rng(0)
    for w in model.pool.weights:
        w.assign(rng.normal(scale=0.3, size=w.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def model():
    return rpn_model(pca_dim=5)


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.uniform(0, 255, (h, w, 3)).astype("float32")
        for h, w in [(40, 56), (33, 33), (64, 20)]
    ]


def test_rpn_model_pools_learned_regions_and_rebuilds(model, tmp_path):
    assert isinstance(model.pool, LearnedRegionPooling)
    assert not model.pool.trainable_weights
    images = _images()
    model.adapt_pca(images)
    # The head is the R-MAC head of the pooled proposals (numpy oracle).
    image = images[0]
    features = model.backbone(model.preprocess(image[None]))
    boxes, _ = model.pool.proposals(features)
    cells = box_ops.boxes_to_cells(boxes, *features.shape[1:3]).numpy()[0]
    f = features.numpy()[0]
    vectors = np.stack(
        [
            f[y0:y1, x0:x1].reshape(-1, f.shape[-1]).max(0)
            for x0, y0, x1, y1 in cells
        ]
    ).astype(np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    kernel, bias = [w.numpy() for w in model.shift_pca.weights[:2]]
    vectors = vectors @ kernel + bias
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    want = vectors.sum(0) / np.linalg.norm(vectors.sum(0))
    got = model.extract(image)[0]
    np.testing.assert_allclose(got, want, atol=1e-5)

    path = os.path.join(tmp_path, "rpn.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.regions == "rpn" and reloaded.rpn_options == RPN
    assert reloaded.fingerprint() == model.fingerprint()
    np.testing.assert_allclose(
        reloaded.extract(images), model.extract(images), atol=1e-6
    )


def test_fingerprint_tells_rpn_options_apart():
    a = rpn_model()
    b = RMACModel(
        tiny_backbone(),
        weights=None,
        preprocessing="tf",
        regions="rpn",
        rpn_options={**RPN, "top_n": 5},
    )
    b.set_weights(a.get_weights())
    assert a.fingerprint() != b.fingerprint()


def test_bad_regions_arguments_are_refused():
    with pytest.raises(ValueError, match="regions='squares'"):
        RMACModel(tiny_backbone(), None, preprocessing="tf", regions="squares")
    with pytest.raises(ValueError, match="pooling='gem'"):
        RMACModel(
            tiny_backbone(),
            None,
            preprocessing="tf",
            regions="rpn",
            pooling="gem",
        )
    with pytest.raises(ValueError, match="rpn_options"):
        RMACModel(
            tiny_backbone(), None, preprocessing="tf", rpn_options={"top_n": 3}
        )


def test_region_boxes_in_pixels_for_grid_and_rpn(model):
    image = _images()[0]
    grid = RMACModel(tiny_backbone(), None, preprocessing="tf", levels=1)
    boxes = region_boxes(grid, image)
    # The global region is the whole image whatever the backbone's stride.
    np.testing.assert_allclose(boxes[0], [0, 0, 56, 40], atol=1e-4)
    learned = region_boxes(model, image, top_n=4)
    assert learned.shape == (4, 4)
    assert learned[:, 2].max() <= 56 + 1e-4 and learned[:, 3].max() <= 40
    assert proposal_recall([boxes], [np.array([0, 0, 56, 40])], top_n=1) == 1.0
    # Seen at another size, the boxes are still in the image's pixels.
    big = region_boxes(grid, image, max_size=112)
    np.testing.assert_allclose(big[0], [0, 0, 56, 40], atol=1e-4)
    # The map of the larger image has other proportions: other regions.
    assert not np.allclose(big[1], boxes[1], atol=0.1)


def test_proposal_recall_against_hand_computed_cases():
    props = [np.array([[0, 0, 10, 10], [0, 0, 5, 10]]), np.zeros((0, 4))]
    truth = [np.array([[0, 0, 5, 10], [np.nan] * 4]), np.array([[1, 1, 2, 2]])]
    # IoU([0,0,10,10], [0,0,5,10]) = 0.5 exactly: recalled at 0.5 only.
    assert proposal_recall(props, truth, top_n=1, iou=0.5) == 0.5
    assert proposal_recall(props, truth, top_n=1, iou=0.51) == 0.0
    assert proposal_recall(props, truth, top_n=2, iou=0.9) == 0.5
    with pytest.raises(ValueError, match="one of each per image"):
        proposal_recall(props, truth[:1])


def _png(image):
    out = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_export_carries_the_learned_proposals(model, tmp_path):
    images = [np.round(im) for im in _images(1)]
    path = export_saved_model(model, tmp_path / "rpn", scales=(1.0, 0.5))
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    got = serve(image_bytes=tf.constant([_png(im) for im in images]))
    want = model.extract(images, scales=(1.0, 0.5))
    np.testing.assert_allclose(got["descriptor"].numpy(), want, atol=1e-4)
