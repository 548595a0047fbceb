"""Pure box math of the learned region proposals (Faster R-CNN's RPN).

The layers `AnchorGenerator`, `RPNHead`, `BoxMaxPooling` and
`LearnedRegionPooling` are thin wrappers around these functions.

Conventions, shared by every function here:

- a box is `(x0, y0, x1, y1)` with `x0 <= x1`, `y0 <= y1`, in continuous
  feature-map coordinates: the cell in row `i` and column `j` covers
  `[j, j + 1) x [i, i + 1)`, so a `H x W` map spans `[0, W] x [0, H]` (the
  order and meaning of `keras_rmac.data.labelled`'s pixel boxes, divided by
  the backbone's stride);
- areas are `(x1 - x0) * (y1 - y0)` (no "+ 1"); a box of zero area
  (degenerate) has IoU 0 with every box, itself included;
- anchors are laid out row-major over the map and, inside a cell, size-major
  then ratio: index `(i * W + j) * A + s * len(ratios) + r`.

Everything is `keras.ops`, except the non-maximum suppression, which uses
TensorFlow's `tf.image.non_max_suppression` (keras_rmac is TensorFlow-only).

Reference:
    - [Ren et al., Faster R-CNN](https://arxiv.org/abs/1506.01497)
    - [Gordo et al., Deep Image Retrieval](https://arxiv.org/abs/1604.01325)
"""

import math

import tensorflow as tf
from keras import ops

# Faster R-CNN clips the predicted log-scale deltas at log(1000 / 16) so that
# exp() cannot overflow.
DELTA_CLIP = math.log(1000.0 / 16.0)


def anchor_shapes(sizes, ratios):
    """Widths and heights `(A, 2)` of the anchors of one cell.

    An anchor of size `s` and ratio `r` (height / width) has area `s * s`:
    width `s / sqrt(r)` and height `s * sqrt(r)`.
    """
    shapes = []
    for size in sizes:
        for ratio in ratios:
            root = math.sqrt(float(ratio))
            shapes.append((float(size) / root, float(size) * root))
    return ops.convert_to_tensor(shapes, "float32")


def make_anchors(height, width, sizes, ratios):
    """Anchors `(height * width * A, 4)` centred on every cell, clipped.

    Each cell `(i, j)` gets `A = len(sizes) * len(ratios)` anchors centred
    at `(j + 0.5, i + 0.5)`, clipped to the map (so on small maps every
    anchor is usable; Faster R-CNN instead ignores anchors that cross the
    border during training).

    Args:
        height: int or scalar int tensor. Map height.
        width: int or scalar int tensor. Map width.
        sizes: sequence of float. Anchor sides (square root of the area), in
            cells.
        ratios: sequence of float. Height / width ratios.

    Returns:
        float32 tensor `(height * width * A, 4)`.
    """
    height = ops.cast(height, "int32")
    width = ops.cast(width, "int32")
    shapes = anchor_shapes(sizes, ratios)
    cy = ops.cast(ops.arange(height), "float32") + 0.5
    cx = ops.cast(ops.arange(width), "float32") + 0.5
    # Centres row-major: (H * W, 2) as (cx, cy).
    yy = ops.repeat(cy, width)
    xx = ops.tile(cx, [height])
    centres = ops.stack([xx, yy], axis=1)[:, None, :]
    half = shapes[None, :, :] / 2.0
    boxes = ops.concatenate([centres - half, centres + half], axis=2)
    return clip_boxes(ops.reshape(boxes, (-1, 4)), height, width)


def clip_boxes(boxes, height, width):
    """Clips boxes `(..., 4)` to the map `[0, width] x [0, height]`."""
    w = ops.cast(width, boxes.dtype)
    h = ops.cast(height, boxes.dtype)
    x0 = ops.clip(boxes[..., 0], 0.0, w)
    y0 = ops.clip(boxes[..., 1], 0.0, h)
    x1 = ops.clip(boxes[..., 2], 0.0, w)
    y1 = ops.clip(boxes[..., 3], 0.0, h)
    return ops.stack([x0, y0, x1, y1], axis=-1)


def box_area(boxes):
    """Areas `(...)` of boxes `(..., 4)`; inverted boxes count as 0."""
    w = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def box_iou(boxes_a, boxes_b):
    """Pairwise intersection over union `(N, M)` of `(N, 4)` and `(M, 4)`.

    Pairs whose union is empty (two degenerate boxes) have IoU 0.
    """
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    iw = ops.maximum(
        ops.minimum(a[..., 2], b[..., 2]) - ops.maximum(a[..., 0], b[..., 0]),
        0.0,
    )
    ih = ops.maximum(
        ops.minimum(a[..., 3], b[..., 3]) - ops.maximum(a[..., 1], b[..., 1]),
        0.0,
    )
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    return ops.where(union > 0, inter / ops.maximum(union, 1e-12), 0.0)


def _centre_size(boxes, floor):
    w = ops.maximum(boxes[..., 2] - boxes[..., 0], floor)
    h = ops.maximum(boxes[..., 3] - boxes[..., 1], floor)
    cx = (boxes[..., 0] + boxes[..., 2]) / 2.0
    cy = (boxes[..., 1] + boxes[..., 3]) / 2.0
    return cx, cy, w, h


def encode_boxes(boxes, anchors, floor=1e-3):
    """Faster R-CNN deltas `(..., 4)` that move `anchors` onto `boxes`.

    `(dx, dy, dw, dh) = ((gx - ax) / aw, (gy - ay) / ah, log(gw / aw),
    log(gh / ah))` with centres `g*`, `a*` and sides floored at `floor`
    cells (so a degenerate box still has finite deltas).
    """
    gx, gy, gw, gh = _centre_size(boxes, floor)
    ax, ay, aw, ah = _centre_size(anchors, floor)
    return ops.stack(
        [(gx - ax) / aw, (gy - ay) / ah, ops.log(gw / aw), ops.log(gh / ah)],
        axis=-1,
    )


def decode_boxes(deltas, anchors, floor=1e-3):
    """Inverse of `encode_boxes`: boxes `(..., 4)` from deltas and anchors.

    The scale deltas are clipped at `DELTA_CLIP` (as Faster R-CNN does).
    """
    ax, ay, aw, ah = _centre_size(anchors, floor)
    cx = deltas[..., 0] * aw + ax
    cy = deltas[..., 1] * ah + ay
    w = ops.exp(ops.minimum(deltas[..., 2], DELTA_CLIP)) * aw
    h = ops.exp(ops.minimum(deltas[..., 3], DELTA_CLIP)) * ah
    return ops.stack(
        [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], axis=-1
    )


def nms_top_n(boxes, scores, top_n, iou_threshold=0.7, pre_nms_top_n=2000):
    """Indices `(top_n,)` of the proposals kept for one image.

    Greedy non-maximum suppression (`tf.image.non_max_suppression`: in
    decreasing score order, equal scores by increasing index, a box is
    dropped when its IoU with a kept box exceeds `iou_threshold`) over the
    `pre_nms_top_n` best boxes. So that every image pools exactly `top_n`
    regions, as the grid pools a fixed number, the kept boxes (best first)
    are followed by the suppressed ones in score order when NMS keeps fewer
    than `top_n`, and that list is repeated when the image has fewer than
    `top_n` anchors.

    Args:
        boxes: float tensor `(K, 4)`, K >= 1.
        scores: float tensor `(K,)`.
        top_n: int. Number of indices returned.
        iou_threshold: float. NMS threshold. Defaults to `0.7` (the RPN's
            in Faster R-CNN).
        pre_nms_top_n: int. Boxes considered by NMS. Defaults to `2000`.

    Returns:
        int32 tensor `(top_n,)` of indices into `boxes`.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    count = tf.shape(scores)[0]
    # Stable order: decreasing score, then increasing index.
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    head = order[: tf.minimum(count, pre_nms_top_n)]
    # tf.image NMS takes (y0, x0, y1, x1); IoU is symmetric in the axes.
    kept = tf.image.non_max_suppression(
        tf.gather(boxes, head),
        tf.gather(scores, head),
        max_output_size=top_n,
        iou_threshold=iou_threshold,
    )
    kept = tf.gather(head, kept)
    taken = tf.scatter_nd(
        kept[:, None], tf.ones_like(kept, tf.bool), tf.shape(scores)
    )
    rest = tf.boolean_mask(order, ~tf.gather(taken, order))
    ranked = tf.concat([kept, rest], axis=0)
    repeats = (top_n + count - 1) // count
    return tf.cast(tf.tile(ranked, [repeats])[:top_n], tf.int32)


def boxes_to_cells(boxes, height, width):
    """Rounds boxes `(..., 4)` to whole cells `[x0, x1) x [y0, y1)`, int32.

    Edges are rounded to the nearest cell edge, then each box is made at
    least one cell wide and high and kept inside the map. An integer box
    (such as a grid region `(x, y, x + w, y + h)`) is returned unchanged.
    """
    h = ops.cast(height, "int32")
    w = ops.cast(width, "int32")
    edges = ops.cast(ops.round(boxes), "int32")
    x0 = ops.clip(edges[..., 0], 0, w - 1)
    y0 = ops.clip(edges[..., 1], 0, h - 1)
    x1 = ops.clip(ops.maximum(edges[..., 2], x0 + 1), 1, w)
    y1 = ops.clip(ops.maximum(edges[..., 3], y0 + 1), 1, h)
    return ops.stack([x0, y0, x1, y1], axis=-1)


def box_max_pool(x, boxes):
    """Max-pools `(B, H, W, C)` over `(B, N, 4)` boxes, to `(B, N, C)`.

    Boxes are rounded to cells with `boxes_to_cells` (integer boxes are
    pooled exactly as given). All boxes at once, with no loop over them,
    by one of two forms that give the same maxima:

    - `box_max_pool_static` when there are more boxes per image than
      rows in its sparse table, `N > L * H` with `L = bit_length(H)`
      (`N > 32` on 8x8 maps, 80 on 16x16, 192 on 32x32;
      `LearnedRegionPooling`'s default 256 proposals on every map up to
      42 rows): building the table (`L * H * W` cells) then costs less
      than reading it (`2 * N * W`), so its work grows like `N * W`,
      the gather's like `N` times the mean box area, which proposals
      make several times `W` on larger maps. Always under XLA
      (`tf.function(jit_compile=True)`, `extract(jit_compile=True)`),
      which cannot compile the gather's data-dependent size.
    - `box_max_pool_gather` otherwise, where building the table
      dominates.

    Why: `benchmarks/box_pool.py` (section "Box max-pooling: gather vs
    static form" of `benchmarks/RESULTS.md`; graph mode, 2 shared cores,
    proposal-like boxes from 1 cell to the whole map, 2026-12-02). With
    256 boxes the static form was 1.45-2.0x faster than the gather on
    32x32x2048 maps (ResNet-101 at 1024 px), forward and forward +
    backward, and held 2.1-2.6 GB instead of 5.4 GB in training with 8
    images; 1.2-1.7x faster on 16x16x1280; within 15% on 8x8x1280. With
    32 boxes the gather was faster on every map (the static form at 0.35-
    0.88 of its speed) and held less in the forward pass. The rule
    picked the faster form in all 24 (map, N, batch, pass) cases of that
    run. With H or N unknown at trace (as `extract` traces without XLA)
    the rule is evaluated at run time (`tf.cond`).

    Gradient, when several cells of a box hold its maximum: the gather
    form splits it evenly between all of them (as `ops.max` does); the
    static form splits it evenly between the tied columns and gives each
    column's share to its top-most maximal cell (like `MaxPool2D`, one
    cell where a column ties). Both are valid subgradients. In a ReLU
    backbone most ties are at 0 (or ReLU6's 6), where the backbone
    passes no gradient either way.
    """
    if _in_xla_context():
        return box_max_pool_static(x, boxes)
    x = tf.convert_to_tensor(x)
    static = _static_is_faster(x, boxes)
    if isinstance(static, bool):
        form = box_max_pool_static if static else box_max_pool_gather
        return form(x, boxes)
    return tf.cond(
        static,
        lambda: box_max_pool_static(x, boxes),
        lambda: box_max_pool_gather(x, boxes),
    )


def _static_is_faster(x, boxes):
    """`N > bit_length(H) * H` (see `box_max_pool`): a Python bool when
    N and H are known at trace, else a scalar bool tensor."""
    height, count = x.shape[1], getattr(boxes, "shape", (None, None))[1]
    if height is not None and count is not None:
        return int(count) > int(height).bit_length() * int(height)
    height = tf.shape(x)[1]
    return tf.shape(boxes)[1] > _bit_length(height) * height


def _bit_length(n):
    """`int.bit_length` of an int32 tensor `n >= 0`, elementwise: how many
    of the powers of two 1, 2, 4, ... are <= n."""
    powers = tf.bitwise.left_shift(1, tf.range(31))
    return tf.reduce_sum(tf.cast(n[..., None] >= powers, tf.int32), axis=-1)


def box_max_pool_gather(x, boxes):
    """`box_max_pool` by gathering every cell of every box.

    The cells of every box are gathered (`sum of box areas` rows of `C`
    values) and reduced per box with one segment max, so H, W and N may
    be unknown until run time. The gradient goes to each box's maximal
    cells (split evenly between tied cells, as `ops.max` does). That
    gather has a data-dependent size, which XLA cannot compile.
    """
    shape = ops.shape(x)
    channels = x.shape[-1] if x.shape[-1] is not None else shape[3]
    cells = tf.reshape(boxes_to_cells(boxes, shape[1], shape[2]), (-1, 4))
    count = ops.shape(boxes)[1]
    x0, y0, x1, y1 = tf.unstack(cells, axis=1)
    widths = x1 - x0
    areas = widths * (y1 - y0)  # At least 1 (boxes_to_cells).
    # For every gathered cell: its box, and its place within the box, in
    # row-major order.
    box = tf.repeat(tf.range(tf.size(areas), dtype="int32"), areas)
    place = tf.range(tf.size(box), dtype="int32") - tf.gather(
        tf.cumsum(areas, exclusive=True), box
    )
    width = tf.gather(widths, box)
    row = tf.gather(y0, box) + place // width
    col = tf.gather(x0, box) + place % width
    image = box // tf.maximum(count, 1)
    index = (image * shape[1] + row) * shape[2] + col
    values = tf.gather(tf.reshape(x, (-1, channels)), index)
    pooled = tf.math.unsorted_segment_max(values, box, tf.size(areas))
    return tf.reshape(pooled, (shape[0], count, channels))


def _in_xla_context():
    """Whether the graph being traced is compiled by XLA (TF internal API;
    if it moves, the static form is used everywhere: same maxima)."""
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TensorFlow moved it
        return True
    if tf.executing_eagerly():
        return False
    graph = tf_ops.get_default_graph()
    return control_flow_util.GraphOrParentsInXlaContext(graph)


def _gather_rows(table, index):
    """`table (B, R, W, C)`, `index (B, N)` -> `table[b, index[b, n]]`,
    `(B, N, W, C)`: one gather of rows of the flattened table (faster
    under XLA than a gather with `batch_dims`)."""
    shape = tf.shape(table)
    flat = tf.reshape(table, tf.stack([-1, shape[2], shape[3]]))
    return tf.gather(flat, index + tf.range(shape[0])[:, None] * shape[1])


def _next_level(table, step):
    """Doubling: `T_{k+1}[i] = max(T_k[i], T_k[i + step])` along H, for
    `step = 2**k`; entries past `H - 2 * step` are never read."""
    height = tf.shape(table)[1]
    ahead = tf.minimum(tf.range(height) + step, height - 1)
    return tf.maximum(table, tf.gather(table, ahead, axis=1))


def _read_levels(levels, y0, y1):
    """Sparse table `levels (L, B, H, W, C)`, rows `[y0, y1)` `(B, N)` ->
    `(B, N, W, C)` maxima of those rows: `max(T_k[y0], T_k[y1 - 2**k])`
    with `2**k <= y1 - y0 < 2**(k + 1)`, two gathers of table rows."""
    shape = tf.shape(levels)
    batch, height = shape[1], shape[2]
    level = _bit_length(y1 - y0) - 1
    flat = tf.reshape(levels, tf.stack([-1, shape[3], shape[4]]))
    first = (level * batch + tf.range(batch)[:, None]) * height
    top = tf.gather(flat, first + y0)
    bottom = tf.gather(flat, first + y1 - tf.bitwise.left_shift(1, level))
    return tf.maximum(top, bottom)


def box_max_pool_static(x, boxes):
    """`box_max_pool` with static intermediate shapes, for XLA.

    The same maxima (max is exact), in two steps. Rows: a sparse table
    along H, `T_k[i] = max(x[i : i + 2**k])` built by doubling, gives the
    maximum of the rows `[y0, y1)` of every column as
    `max(T_k[y0], T_k[y1 - 2**k])` with `2**k <= y1 - y0 < 2**(k + 1)`.
    Columns: a masked max over W of those `(B, N, W, C)` row maxima.
    With H known at trace (as `extract(jit_compile=True)` traces) the
    `L = bit_length(H)` levels are stacked and read with two gathers;
    with H unknown (as `extract` traces without XLA) a `tf.while_loop`
    builds the same levels into a `TensorArray`, read the same way; under
    XLA with H unknown (a `TensorArray` would need its size at compile
    time) the loop reads each level in turn (two gathers a level).
    Memory: about `B * (2 * N * W * C + L * H * W * C)` values, against
    `sum of box areas * C` for `box_max_pool_gather`. The gradient, when
    cells tie, is split between the tied columns and goes to the top-most
    maximal cell of each (`box_max_pool_gather` splits it between all
    of them); XLA compiles it only with H known at trace (the while
    loop's gradient needs a bound on its iterations, which would multiply
    the memory kept for it).
    """
    x = tf.convert_to_tensor(x)
    shape = tf.shape(x)
    height, width = shape[1], shape[2]
    cells = boxes_to_cells(boxes, height, width)
    x0, y0, x1, y1 = tf.unstack(cells, axis=-1)  # (B, N) each
    rows_high = y1 - y0  # At least 1 (boxes_to_cells).
    if x.shape[1] is not None:
        # Rows [y0, y1) of a box of height h, 2**k <= h < 2**(k + 1): the
        # max of [y0, y0 + 2**k) and [y1 - 2**k, y1), read from level k.
        tables = [x]
        for k in range(1, int(x.shape[1]).bit_length()):
            tables.append(_next_level(tables[-1], 2 ** (k - 1)))
        rows = _read_levels(tf.stack(tables), y0, y1)
    elif not _in_xla_context():
        # H unknown at trace: the same levels, built in a tf.while_loop
        # into a TensorArray (XLA would need its size at compile time).
        def grow(k, table, levels):
            table = _next_level(table, tf.bitwise.left_shift(1, k - 1))
            return k + 1, table, levels.write(k, table)

        levels = tf.TensorArray(x.dtype, size=0, dynamic_size=True)
        _, _, levels = tf.while_loop(
            lambda k, table, levels: tf.bitwise.left_shift(1, k) <= height,
            grow,
            [tf.constant(1, tf.int32), x, levels.write(0, x)],
        )
        rows = _read_levels(levels.stack(), y0, y1)
    else:

        def one_level(step, table, rows):
            # The boxes of height step <= h < 2 * step (the others are
            # clamped inside the map and not kept).
            top = _gather_rows(table, y0)
            bottom = _gather_rows(table, tf.maximum(y1 - step, 0))
            here = (rows_high >= step) & (rows_high < 2 * step)
            here = here[..., None, None]
            rows = tf.where(here, tf.maximum(top, bottom), rows)
            return step * 2, _next_level(table, step), rows

        rows = tf.zeros(
            tf.stack([shape[0], tf.shape(boxes)[1], width, shape[3]]), x.dtype
        )
        _, _, rows = tf.while_loop(
            lambda step, table, rows: step <= height,
            one_level,
            [tf.constant(1, tf.int32), x, rows],
        )
    # Columns [x0, x1) of every box: masked max over W.
    column = tf.range(width)[None, None, :]
    inside = (column >= x0[..., None]) & (column < x1[..., None])
    lowest = tf.constant(x.dtype.min, x.dtype)
    return tf.reduce_max(tf.where(inside[..., None], rows, lowest), axis=2)


def grid_boxes(regions):
    """`(x, y, w, h)` grid regions `(R, 4)` -> boxes `(x, y, x + w, y + h)`."""
    regions = ops.cast(regions, "float32")
    return ops.concatenate([regions[:, :2], regions[:, :2] + regions[:, 2:]], 1)
