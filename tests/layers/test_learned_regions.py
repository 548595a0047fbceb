"""The learned-proposal layers: serialization, unknown H/W, oracles."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.layers import AnchorGenerator
from keras_rmac.layers import BoxMaxPooling
from keras_rmac.layers import LearnedRegionPooling
from keras_rmac.layers import RMACPooling
from keras_rmac.layers import RPNHead
from keras_rmac.layers import box_ops
from tests.helpers import run_layer_test
from tests.layers.test_box_ops import oracle_anchors
from tests.layers.test_box_ops import oracle_box_pool


def _features(shape=(2, 5, 6, 8), seed=0):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=shape), 0).astype("float32")


def test_rpn_head_layer():
    out = run_layer_test(
        RPNHead,
        {"num_anchors": 3, "hidden": 4},
        _features(),
        expected_num_trainable_weights=6,
        expected_num_non_trainable_weights=0,
    )
    assert out.shape == (2, 5 * 6 * 3, 5)


def test_rpn_head_output_order_is_cell_then_anchor():
    head = RPNHead(num_anchors=2, hidden=3)
    x = _features((1, 2, 3, 4))
    out = head(x).numpy()
    hidden = head.conv(x)
    logits = head.objectness(hidden).numpy()  # (1, 2, 3, A)
    deltas = head.deltas(hidden).numpy()  # (1, 2, 3, 4 A)
    for i in range(2):
        for j in range(3):
            for a in range(2):
                row = out[0, (i * 3 + j) * 2 + a]
                assert row[0] == logits[0, i, j, a]
                np.testing.assert_array_equal(
                    row[1:], deltas[0, i, j, 4 * a : 4 * a + 4]
                )


def test_learned_region_pooling_layer():
    out = run_layer_test(
        LearnedRegionPooling,
        {"sizes": (1.0, 2.0), "ratios": (1.0, 2.0), "top_n": 7, "hidden": 4},
        _features(),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=6,
    )
    assert out.shape == (2, 7, 8)


def test_learned_region_pooling_pools_its_own_proposals():
    layer = LearnedRegionPooling(sizes=(1.0, 3.0), top_n=20, hidden=4)
    for shape in [(2, 1, 1, 8), (1, 2, 9, 8), (2, 6, 4, 8)]:
        x = _features(shape)
        boxes, logits = layer.proposals(x)
        assert boxes.shape == (shape[0], 20, 4)
        cells = box_ops.boxes_to_cells(boxes, shape[1], shape[2]).numpy()
        np.testing.assert_array_equal(
            layer(x).numpy(), oracle_box_pool(x, cells)
        )
        # Best first, among the boxes NMS kept.
        assert np.all(boxes.numpy()[..., 2] <= shape[2])
        assert logits.shape == (shape[0], 20)


def test_learned_region_pooling_keeps_the_rpn_frozen_and_float32():
    layer = LearnedRegionPooling(top_n=4, hidden=4, dtype="mixed_float16")
    layer(_features())
    assert not layer.trainable_weights
    assert all(w.dtype == "float32" for w in layer.weights)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_n": 0},
        {"sizes": ()},
        {"ratios": (1.0, -2.0)},
        {"nms_iou": 0.0},
        {"sizes": "big"},
    ],
)
def test_learned_region_pooling_refuses_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LearnedRegionPooling(**kwargs)


def _round_trip(layer):
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(revived) is type(layer)
    assert revived.get_config() == layer.get_config()
    return revived


def test_anchor_generator_round_trip_traced_and_oracle():
    # Anchors do not depend on the feature values (no input gradient), so
    # run_layer_test's gradient step does not apply; the rest is here.
    layer = _round_trip(AnchorGenerator(sizes=(1.0, 5.0), ratios=(0.5, 2.0)))
    traced = tf.function(
        layer, input_signature=[tf.TensorSpec([None, None, None, 3])]
    )
    symbolic = layer(keras.Input(batch_shape=(None, None, None, 3)))
    assert tuple(symbolic.shape) == (None, 4)
    for h, w in [(1, 1), (2, 9), (8, 3)]:
        got = traced(tf.zeros((1, h, w, 3))).numpy()
        np.testing.assert_allclose(
            got, oracle_anchors(h, w, (1.0, 5.0), (0.5, 2.0)), atol=1e-5
        )
        assert layer.compute_output_shape((1, h, w, 3)) == (h * w * 4, 4)


def test_box_max_pooling_round_trip_traced_and_saved(tmp_path):
    # Two inputs: run_layer_test takes one, so its checks are made here.
    layer = _round_trip(BoxMaxPooling())
    features = keras.Input(batch_shape=(None, None, None, 4))
    boxes = keras.Input(batch_shape=(None, None, 4))
    out = layer([features, boxes])
    assert tuple(out.shape) == (None, None, 4)
    model = keras.Model([features, boxes], out)
    path = os.path.join(tmp_path, "pool.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    x = _features((2, 3, 5, 4))
    b = np.array([[[0, 0, 5, 3], [1.2, 0.7, 2.2, 1.1]]] * 2, np.float32)
    cells = box_ops.boxes_to_cells(b, 3, 5).numpy()
    np.testing.assert_array_equal(
        reloaded([x, b]).numpy(), oracle_box_pool(x, cells)
    )
    # The gradient reaches the features through the pooled maxima.
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(reloaded([xt, tf.constant(b)]))
    assert np.any(tape.gradient(total, xt).numpy() != 0)


def test_box_max_pooling_of_grid_boxes_equals_rmac_pooling():
    x = _features((2, 7, 9, 6))
    regions = RMACPooling().regions(x)
    boxes = np.repeat(box_ops.grid_boxes(regions).numpy()[None], 2, 0)
    np.testing.assert_array_equal(
        BoxMaxPooling()([x, boxes]).numpy(), RMACPooling()(x).numpy()
    )
