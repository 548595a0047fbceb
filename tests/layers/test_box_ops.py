"""Box math of the learned proposals against NumPy oracles (loops)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.layers import box_ops
from keras_rmac.layers import functional
from tests.layers.test_rmac_pooling import oracle_region_vectors


def oracle_anchors(height, width, sizes, ratios):
    out = []
    for i in range(height):
        for j in range(width):
            for s in sizes:
                for r in ratios:
                    w, h = s / math.sqrt(r), s * math.sqrt(r)
                    cx, cy = j + 0.5, i + 0.5
                    out.append(
                        [
                            min(max(cx - w / 2, 0), width),
                            min(max(cy - h / 2, 0), height),
                            min(max(cx + w / 2, 0), width),
                            min(max(cy + h / 2, 0), height),
                        ]
                    )
    return np.array(out, np.float64).reshape(-1, 4)


def oracle_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (
                max(p[2] - p[0], 0) * max(p[3] - p[1], 0)
                + max(q[2] - q[0], 0) * max(q[3] - q[1], 0)
                - inter
            )
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def oracle_nms(boxes, scores, top_n, threshold):
    """Greedy NMS, ties by lower index, then the fill rule of nms_top_n."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    iou = oracle_iou(boxes, boxes)
    kept = []
    for i in order:
        if len(kept) == top_n:
            break
        if all(iou[i, k] <= threshold for k in kept):
            kept.append(i)
    ranked = kept + [i for i in order if i not in kept]
    while len(ranked) < top_n:
        ranked = ranked + ranked
    return ranked[:top_n]


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (3, 4), (7, 7)])
def test_anchors_match_oracle_on_tall_wide_and_1x1_maps(shape):
    sizes, ratios = (1.0, 3.0, 16.0), (0.5, 1.0, 2.0)
    want = oracle_anchors(*shape, sizes, ratios)
    got = box_ops.make_anchors(*shape, sizes, ratios).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Clipped anchors touch the border and never leave the map.
    assert got[:, 0].min() == 0 and got[:, 2].max() == shape[1]


def test_iou_matches_oracle_on_border_degenerate_and_identical_boxes():
    boxes_a = np.array(
        [
            [0, 0, 4, 3],  # the whole 3x4 map, touching every border
            [1, 1, 1, 2],  # zero width
            [2, 2, 2, 2],  # a point
            [0, 0, 2, 2],
            [2, 0, 4, 3],  # touches [0, 0, 2, 2] along an edge only
        ],
        np.float32,
    )
    boxes_b = np.concatenate([boxes_a, [[0.5, 0.5, 3.5, 2.5]]]).astype("f4")
    got = box_ops.box_iou(boxes_a, boxes_b).numpy()
    want = oracle_iou(boxes_a, boxes_b)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0, 0] == 1.0 and got[1, 1] == 0.0 and got[2, 2] == 0.0
    assert got[3, 4] == 0.0


def test_iou_of_empty_sets_has_an_empty_shape():
    empty = np.zeros((0, 4), np.float32)
    some = np.ones((3, 4), np.float32)
    assert box_ops.box_iou(empty, some).shape == (0, 3)
    assert box_ops.box_iou(some, empty).shape == (3, 0)


def test_encode_matches_formula_and_decode_inverts_it():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, (50, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(0.5, 8, (50, 2))], 1)
    xy = rng.uniform(0, 10, (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 8, (50, 2))], 1)
    got = box_ops.encode_boxes(boxes.astype("f4"), anchors.astype("f4"))
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    want = np.stack(
        [
            ((boxes[:, 0] + boxes[:, 2]) - (anchors[:, 0] + anchors[:, 2]))
            / 2
            / aw,
            ((boxes[:, 1] + boxes[:, 3]) - (anchors[:, 1] + anchors[:, 3]))
            / 2
            / ah,
            np.log(gw / aw),
            np.log(gh / ah),
        ],
        1,
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    back = box_ops.decode_boxes(got, anchors.astype("f4")).numpy()
    np.testing.assert_allclose(back, boxes, atol=1e-4)


def test_degenerate_box_encodes_finite_and_large_deltas_are_clipped():
    anchors = np.array([[0, 0, 2, 2]], np.float32)
    point = np.array([[1, 1, 1, 1]], np.float32)
    deltas = box_ops.encode_boxes(point, anchors).numpy()
    assert np.all(np.isfinite(deltas))
    huge = np.array([[0, 0, 50, 50]], np.float32)
    box = box_ops.decode_boxes(huge, anchors).numpy()[0]
    assert box[2] - box[0] == pytest.approx(2 * 1000 / 16, rel=1e-4)


def test_nms_matches_greedy_oracle_with_ties_and_fill():
    rng = np.random.default_rng(1)
    for trial in range(30):
        count = int(rng.integers(1, 40))
        xy = rng.uniform(0, 6, (count, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0, 4, (count, 2))], 1)
        # Coarse scores: many ties, broken by index.
        scores = rng.integers(0, 4, count).astype("f4")
        if trial % 5 == 0:
            boxes[: count // 2] = boxes[0]  # duplicates (IoU 1)
        top_n = int(rng.integers(1, 60))
        got = box_ops.nms_top_n(
            boxes.astype("f4"), scores, top_n, iou_threshold=0.5
        ).numpy()
        want = oracle_nms(boxes.astype("f4"), scores, top_n, 0.5)
        assert got.tolist() == want, (trial, count, top_n)


def test_nms_of_one_box_repeats_it():
    got = box_ops.nms_top_n(np.ones((1, 4), "f4"), np.zeros(1, "f4"), 3)
    assert got.numpy().tolist() == [0, 0, 0]


def oracle_box_pool(x, cells):
    out = np.zeros(cells.shape[:2] + (x.shape[3],), x.dtype)
    for b in range(x.shape[0]):
        for n, (x0, y0, x1, y1) in enumerate(cells[b]):
            out[b, n] = x[b, y0:y1, x0:x1].reshape(-1, x.shape[3]).max(0)
    return out


def test_boxes_round_to_whole_cells_inside_the_map():
    boxes = np.array(
        [
            [-3.0, -1.0, 0.2, 0.1],  # outside, before the map
            [2.6, 1.4, 2.6, 1.4],  # a point
            [0.4, 0.6, 9.9, 9.9],  # beyond the far border
            [1.0, 2.0, 3.0, 4.0],  # integer: unchanged
        ],
        np.float32,
    )
    got = box_ops.boxes_to_cells(boxes, 5, 4).numpy().tolist()
    assert got == [[0, 0, 1, 1], [3, 1, 4, 2], [0, 1, 4, 5], [1, 2, 3, 4]]


def test_box_max_pool_matches_oracle_traced_with_unknown_sizes():
    pool = tf.function(
        box_ops.box_max_pool,
        input_signature=[
            tf.TensorSpec([None, None, None, 3]),
            tf.TensorSpec([None, None, 4]),
        ],
    )
    rng = np.random.default_rng(2)
    for h, w in [(1, 1), (1, 7), (6, 1), (4, 5)]:
        x = rng.normal(size=(2, h, w, 3)).astype("f4")
        boxes = rng.uniform(-1, max(h, w) + 1, (2, 6, 4)).astype("f4")
        boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2])
        cells = box_ops.boxes_to_cells(boxes, h, w).numpy()
        np.testing.assert_array_equal(
            pool(x, boxes).numpy(), oracle_box_pool(x, cells)
        )


def oracle_box_pool_gradient(x, cells, weights):
    """d sum(pool(x) * weights) / dx: each box's weight at its max cell
    (per channel; the inputs have no ties)."""
    grad = np.zeros_like(x)
    for b in range(x.shape[0]):
        for n, (x0, y0, x1, y1) in enumerate(cells[b]):
            for c in range(x.shape[3]):
                patch = x[b, y0:y1, x0:x1, c]
                i, j = np.unravel_index(np.argmax(patch), patch.shape)
                grad[b, y0 + i, x0 + j, c] += weights[b, n, c]
    return grad


def test_box_max_pool_gradient_matches_oracle():
    rng = np.random.default_rng(4)
    x = rng.permutation(2 * 5 * 6 * 3).reshape(2, 5, 6, 3).astype("f4")
    boxes = rng.uniform(-1, 7, (2, 9, 4)).astype("f4")
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2])
    boxes[0, 0] = [0, 0, 6, 5]  # the whole map
    boxes[1, 1] = boxes[1, 2]  # the same box twice: gradients add up
    weights = rng.normal(size=(2, 9, 3)).astype("f4")
    cells = box_ops.boxes_to_cells(boxes, 5, 6).numpy()
    # 9 boxes on 5 rows (9 <= 3 * 5): box_max_pool uses the gather form.
    for pool in (box_ops.box_max_pool, box_ops.box_max_pool_gather):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(pool(xt, boxes) * weights)
        np.testing.assert_allclose(
            tape.gradient(loss, xt).numpy(),
            oracle_box_pool_gradient(x, cells, weights),
            rtol=1e-6,
        )


def _tie_gradient(pool, x, count, box):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled = pool(x, np.array([[box] * count], "f4"))
    return tape.gradient(pooled, x).numpy()[0, ..., 0]


def test_box_max_pool_gradient_on_tied_cells_follows_the_form_used():
    # A map of equal values: every cell of a box is maximal.
    ones = np.ones((1, 2, 2, 1), "f4")
    # One box (N = 1 < bit_length(2) * 2 = 4): the gather form, which
    # splits each box's gradient evenly between its tied cells.
    np.testing.assert_allclose(
        _tie_gradient(box_ops.box_max_pool, ones, 1, [0, 0, 2, 2]), 0.25
    )
    # Five boxes (N = 5 > L * H = 4): the static form, which splits it
    # between the tied columns and gives each column's share to its
    # top-most maximal cell.
    np.testing.assert_allclose(
        _tie_gradient(box_ops.box_max_pool, ones, 5, [0, 0, 2, 2]),
        [[2.5, 2.5], [0.0, 0.0]],
    )
    # The same per form, called directly, on a 3x3 map whose maximum
    # (2) ties in rows 1 and 2 of columns 0 and 2.
    x = np.ones((1, 3, 3, 1), "f4")
    x[0, 1:, 0, 0] = x[0, 1:, 2, 0] = 2.0
    whole = [0, 0, 3, 3]
    np.testing.assert_allclose(
        _tie_gradient(box_ops.box_max_pool_gather, x, 1, whole),
        [[0.0, 0.0, 0.0], [0.25, 0.0, 0.25], [0.25, 0.0, 0.25]],
    )
    np.testing.assert_allclose(
        _tie_gradient(box_ops.box_max_pool_static, x, 1, whole),
        [[0.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 0.0]],
    )


@pytest.mark.parametrize(
    "height, count, static",
    [
        (1, 1, False),  # L * H = 1
        (1, 2, True),
        (2, 4, False),  # 2 * 2 = 4
        (2, 5, True),
        (8, 32, False),  # 4 * 8 = 32
        (8, 33, True),
        (16, 80, False),  # 5 * 16 = 80
        (16, 81, True),
        (32, 192, False),  # 6 * 32 = 192
        (32, 256, True),
        (42, 256, True),  # 6 * 42 = 252
        (43, 256, False),  # 6 * 43 = 258
    ],
)
def test_static_form_chosen_from_boxes_and_height(height, count, static):
    x = np.zeros((1, height, 3, 1), "f4")
    boxes = np.zeros((1, count, 4), "f4")
    assert box_ops._static_is_faster(x, boxes) is static
    traced = tf.function(
        box_ops._static_is_faster,
        input_signature=[
            tf.TensorSpec([None, None, None, 1]),
            tf.TensorSpec([None, None, 4]),
        ],
    )
    assert bool(traced(x, boxes)) is static


def test_bit_length_matches_python():
    values = [0, 1, 2, 3, 4, 7, 8, 9, 1023, 1024, 2**30, 2**31 - 1]
    got = box_ops._bit_length(tf.constant([values, values[::-1]], tf.int32))
    expected = [[v.bit_length() for v in values]]
    expected.append(expected[0][::-1])
    np.testing.assert_array_equal(got.numpy(), expected)
    assert int(box_ops._bit_length(tf.constant(5))) == 3


def test_box_max_pool_without_boxes_or_images():
    x = np.zeros((2, 3, 4, 5), "f4")
    assert box_ops.box_max_pool(x, np.zeros((2, 0, 4), "f4")).shape == (
        2,
        0,
        5,
    )
    empty = np.zeros((0, 3, 4, 5), "f4")
    assert box_ops.box_max_pool(empty, np.zeros((0, 7, 4), "f4")).shape == (
        0,
        7,
        5,
    )


def test_box_max_pool_in_float16_is_exact():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 7, 4, 6)).astype("f2")
    boxes = rng.uniform(0, 8, (3, 40, 4)).astype("f4")
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2])
    cells = box_ops.boxes_to_cells(boxes, 7, 4).numpy()
    for pool in (box_ops.box_max_pool, box_ops.box_max_pool_gather):
        got = pool(x, boxes)
        assert got.dtype == tf.float16
        np.testing.assert_array_equal(got.numpy(), oracle_box_pool(x, cells))


@pytest.mark.parametrize("shape", [(1, 1), (3, 11), (9, 4), (13, 13)])
def test_pooling_the_grid_boxes_equals_rmac_pooling(shape):
    x = np.random.default_rng(3).normal(size=(2, *shape, 5)).astype("f4")
    regions = functional.rmac_regions_numpy(*shape)
    boxes = box_ops.grid_boxes(regions)[None]
    boxes = np.repeat(boxes.numpy(), 2, axis=0)
    got = box_ops.box_max_pool(x, boxes).numpy()
    np.testing.assert_array_equal(got, functional.rmac_pooling(x).numpy())
    np.testing.assert_array_equal(got, oracle_region_vectors(x, regions))


def _random_boxes(rng, batch, count, h, w):
    boxes = rng.uniform(-1, max(h, w) + 1, (batch, count, 4)).astype("f4")
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2])
    return boxes


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (4, 5), (13, 9)])
def test_static_box_max_pool_matches_oracle(shape):
    # The XLA form, eagerly (H known: the levels are a Python loop), on
    # random boxes plus the whole map and single cells at the far corner.
    h, w = shape
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, h, w, 3)).astype("f4")
    boxes = _random_boxes(rng, 2, 8, h, w)
    boxes[0, 0] = [0, 0, w, h]
    boxes[1, 0] = [w - 1, h - 1, w, h]
    cells = box_ops.boxes_to_cells(boxes, h, w).numpy()
    got = box_ops.box_max_pool_static(x, boxes).numpy()
    np.testing.assert_array_equal(got, oracle_box_pool(x, cells))
    half = x.astype("f2")
    np.testing.assert_array_equal(
        box_ops.box_max_pool_static(half, boxes).numpy(),
        oracle_box_pool(half, cells),
    )


def test_box_max_pool_compiles_with_xla_for_unknown_and_known_sizes():
    # Unknown sizes at trace: the XLA form's levels are a tf.while_loop.
    # The boxes are computed in the graph, as in a model (a random 0):
    # arguments alone XLA would take as compile-time constants (compiling
    # once per value), and today's gather would compile.
    def pool(x, boxes):
        zero = tf.floor(tf.random.uniform([], 0.0, 0.5))
        return box_ops.box_max_pool(x, boxes + zero)

    unknown = tf.function(
        pool,
        jit_compile=True,
        input_signature=[
            tf.TensorSpec([None, None, None, 3]),
            tf.TensorSpec([None, None, 4]),
        ],
    )
    rng = np.random.default_rng(7)
    for h, w in [(1, 1), (2, 9), (8, 3), (16, 17)]:
        x = rng.normal(size=(2, h, w, 3)).astype("f4")
        boxes = _random_boxes(rng, 2, 5, h, w)
        want = oracle_box_pool(x, box_ops.boxes_to_cells(boxes, h, w).numpy())
        np.testing.assert_array_equal(unknown(x, boxes).numpy(), want)
        known = tf.function(pool, jit_compile=True)
        np.testing.assert_array_equal(known(x, boxes).numpy(), want)


def test_static_box_max_pool_gradient_matches_oracle():
    rng = np.random.default_rng(8)
    x = rng.permutation(2 * 5 * 6 * 3).reshape(2, 5, 6, 3).astype("f4")
    boxes = _random_boxes(rng, 2, 9, 5, 6)
    boxes[0, 0] = [0, 0, 6, 5]
    boxes[1, 1] = boxes[1, 2]
    weights = rng.normal(size=(2, 9, 3)).astype("f4")
    cells = box_ops.boxes_to_cells(boxes, 5, 6).numpy()
    want = oracle_box_pool_gradient(x, cells, weights)

    def gradient(xt, pool):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(pool(xt, boxes) * weights)
        return tape.gradient(loss, xt)

    got = gradient(tf.constant(x), box_ops.box_max_pool_static)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # Compiled by XLA (shapes known at trace), through box_max_pool.
    compiled = tf.function(
        lambda xt: gradient(xt, box_ops.box_max_pool), jit_compile=True
    )
    np.testing.assert_allclose(compiled(x).numpy(), want, rtol=1e-6)


UNKNOWN = [tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([None, None, 4])]


@pytest.mark.parametrize(
    "pool", [box_ops.box_max_pool, box_ops.box_max_pool_static]
)
def test_box_max_pool_with_unknown_height_matches_oracle_with_gradient(pool):
    # H unknown at trace, no XLA: the static form builds its table in a
    # tf.while_loop; box_max_pool picks its form at run time (tf.cond):
    # 9 boxes take the static form on maps of 1 and 2 rows, the gather
    # on 5. Eagerly, the same sizes are known.
    def forward_backward(xt, boxes, weights):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            pooled = pool(xt, boxes)
            loss = tf.reduce_sum(pooled * weights)
        return pooled, tape.gradient(loss, xt)

    traced = tf.function(
        forward_backward,
        input_signature=[*UNKNOWN, tf.TensorSpec([None, None, 3])],
    )
    rng = np.random.default_rng(9)
    for h, w in [(1, 1), (1, 6), (2, 5), (5, 6)]:
        x = rng.permutation(2 * h * w * 3).reshape(2, h, w, 3).astype("f4")
        boxes = _random_boxes(rng, 2, 9, h, w)
        boxes[0, 0] = [0, 0, w, h]
        boxes[1, 1] = boxes[1, 2]
        weights = rng.normal(size=(2, 9, 3)).astype("f4")
        cells = box_ops.boxes_to_cells(boxes, h, w).numpy()
        want = oracle_box_pool(x, cells)
        want_grad = oracle_box_pool_gradient(x, cells, weights)
        for run in (traced, forward_backward):
            pooled, grad = run(tf.constant(x), boxes, weights)
            np.testing.assert_array_equal(pooled.numpy(), want)
            np.testing.assert_allclose(
                grad.numpy(), want_grad, rtol=1e-6, atol=1e-6
            )
