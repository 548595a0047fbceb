"""Box max-pooling of the learned proposals: the gather vs the static form.

`keras_rmac.layers.box_ops` pools `(B, H, W, C)` over `(B, N, 4)` boxes in
two ways that give the same maxima:

- **gather** (`box_max_pool_gather`): gathers every cell of every box
  (`sum of box areas` rows of C values, a data-dependent size) and
  reduces per box with one segment max;
- **static** (`box_max_pool_static`): a sparse table of row maxima built
  by doubling along H, read with two row gathers per box, then a masked
  max over W; every intermediate has a shape fixed by B, N, H, W, C.

The static form is timed twice: traced for the exact shapes (its
levels stacked by a Python loop) and traced with H and W unknown, as
`RMACModel.extract` traces without XLA (its levels built in a
`tf.while_loop`); the gather is traced with H and W unknown (its graph
does not depend on them). `box_max_pool` picks one of the two forms by
`N > bit_length(H) * H` (more boxes than table rows); the table says which.

All are timed in graph mode (`tf.function`, no XLA), forward alone and
forward + backward (the gradient of `sum(pool(x) * w)` with respect to
`x`, a fixed random `w`, as training takes it), on the feature maps of
the backbones users run: 8x8x1280 (MobileNetV2 at 256 px), 16x16x1280
(MobileNetV2 at 512 px) and 32x32x2048 (ResNet-101 at 1024 px), with
N = 32 and 256 boxes and batches of 1 and 8 images. Boxes are drawn like
real proposals: the square root of the area log-uniform from 1 cell to the
whole map, the height/width ratio log-uniform in [1/2, 2] (the anchors'),
the centre uniform over the map, clipped to it (seed 0).

In one process, in interleaved rounds (the three paths of a case side by
side, which goes first rotated every round, one untimed warm-up round that
traces); each figure is the median over rounds of the time of one call
(calls repeated within a round until 50 ms, averaged). The ratio of a
case is the median over rounds of gather time / static time measured in
the same round (above 1: static is faster).

Memory is TensorFlow's own count of the bytes its CPU allocator holds
(`tf.config.experimental.get_memory_info("CPU:0")`): the peak during one
call (stats reset just before) minus what was held before it, so the
inputs are not counted, the outputs and every intermediate are. It is not
the process's RSS (the allocator's free lists and the Python heap are
not in it); it is deterministic for a given case.

Usage:

    nice -n 5 python -m benchmarks.box_pool           # writes RESULTS.md
    python -m benchmarks.box_pool --rounds 1 --maps 8x8x1280 --nowrite

A run takes a few minutes on 2 cores (not resumable: its ratios are only
comparable within one run). It replaces its section of
`benchmarks/RESULTS.md` (`<!-- box_pool:begin -->` ...
`<!-- box_pool:end -->`).
"""

import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import load_text  # noqa: E402
from benchmarks.results import machine  # noqa: E402
from benchmarks.results import markdown_table  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from keras_rmac.layers import box_ops  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "maps", ["8x8x1280", "16x16x1280", "32x32x2048"], "Maps HxWxC."
)
flags.DEFINE_list("boxes", ["32", "256"], "Boxes per image.")
flags.DEFINE_list("batches", ["1", "8"], "Images per call.")
flags.DEFINE_integer("rounds", 5, "Timed rounds (after one warm-up).")
flags.DEFINE_float("min_time", 0.05, "Seconds of calls per measurement.")
flags.DEFINE_bool("write", True, "Write the section of RESULTS.md.")

SECTION = "box_pool"
# name -> (function, H and W unknown at trace).
PATHS = {
    "gather": (box_ops.box_max_pool_gather, True),
    "static": (box_ops.box_max_pool_static, False),
    "static, H unknown": (box_ops.box_max_pool_static, True),
}
MODES = ("forward", "forward+backward")


def proposal_boxes(rng, batch, count, height, width):
    """Boxes `(batch, count, 4)` spread from 1 cell to the whole map."""
    side = max(height, width)
    root = np.exp(rng.uniform(0.0, np.log(side), (batch, count)))
    ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (batch, count)))
    w, h = root / np.sqrt(ratio), root * np.sqrt(ratio)
    cx = rng.uniform(0, width, (batch, count))
    cy = rng.uniform(0, height, (batch, count))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    return box_ops.clip_boxes(boxes.astype("f4"), height, width).numpy()


def make_functions(pool, unknown, channels, count):
    """Graph-mode forward and forward + backward of one pooling path,
    traced with H and W unknown (as `extract` traces without XLA) or for
    the exact shapes."""
    maps = tf.TensorSpec([None, None, None, channels])
    boxes = tf.TensorSpec([None, count, 4])
    weights = tf.TensorSpec([None, count, channels])
    signatures = {
        "forward": [maps, boxes] if unknown else None,
        "forward+backward": [maps, boxes, weights] if unknown else None,
    }

    def forward(x, boxes):
        return pool(x, boxes)

    def backward(x, boxes, weights):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(pool(x, boxes) * weights)
        return tape.gradient(loss, x)

    return {
        mode: tf.function(fn, input_signature=signatures[mode])
        for mode, fn in (("forward", forward), ("forward+backward", backward))
    }


class Case:
    """One map size, box count and batch: inputs and both paths."""

    def __init__(self, spec, count, batch):
        height, width, channels = (int(v) for v in spec.split("x"))
        rng = np.random.default_rng(0)
        self.name = (spec, count, batch)
        self.x = tf.constant(
            rng.normal(size=(batch, height, width, channels)).astype("f4")
        )
        self.boxes = tf.constant(
            proposal_boxes(rng, batch, count, height, width)
        )
        self.weights = tf.constant(
            rng.normal(size=(batch, count, channels)).astype("f4")
        )
        cells = box_ops.boxes_to_cells(self.boxes, height, width).numpy()
        areas = (cells[..., 2] - cells[..., 0]) * (
            cells[..., 3] - cells[..., 1]
        )
        self.mean_area = float(areas.mean())
        # The form box_max_pool picks for these sizes.
        static = box_ops._static_is_faster(self.x, self.boxes)
        self.default = "static" if static else "gather"
        self.functions = {
            name: make_functions(fn, unknown, channels, count)
            for name, (fn, unknown) in PATHS.items()
        }
        self.repeats = {}
        self.memory = {}

    def args(self, mode):
        if mode == "forward":
            return (self.x, self.boxes)
        return (self.x, self.boxes, self.weights)

    def call(self, path, mode):
        self.functions[path][mode](*self.args(mode)).numpy()

    def warm_up(self):
        """Traces, checks that both paths agree, measures memory."""
        outputs = {}
        for path in PATHS:
            for mode in MODES:
                fn = self.functions[path][mode]
                outputs[(path, mode)] = fn(*self.args(mode)).numpy()
                start = time.perf_counter()
                self.call(path, mode)
                once = time.perf_counter() - start
                self.repeats[(path, mode)] = max(
                    1, int(np.ceil(FLAGS.min_time / max(once, 1e-6)))
                )
                self.memory[(path, mode)] = peak_rise(
                    lambda path=path, mode=mode: self.call(path, mode)
                )
        for path in PATHS:
            np.testing.assert_array_equal(
                outputs[("gather", "forward")], outputs[(path, "forward")]
            )

    def time(self, path, mode):
        repeats = self.repeats[(path, mode)]
        start = time.perf_counter()
        for _ in range(repeats):
            self.call(path, mode)
        return (time.perf_counter() - start) / repeats


def peak_rise(fn):
    """Peak bytes held by TF's CPU allocator during `fn()`, over before."""
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fn()
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def measure(cases, rounds):
    """`times[(case, path, mode)]`: one time per round."""
    times = {}
    for r in range(rounds + 1):  # Round 0 warms up (traces).
        for i, case in enumerate(cases):
            if r == 0:
                case.warm_up()
                continue
            for mode in MODES:
                # Which path goes first rotates every round.
                shift = (r + i) % len(PATHS)
                order = list(PATHS)[shift:] + list(PATHS)[:shift]
                for path in order:
                    key = (case.name, path, mode)
                    times.setdefault(key, []).append(case.time(path, mode))
        print(f"round {r}/{rounds} done", file=sys.stderr, flush=True)
    return times


def megabytes(value):
    return f"{value / 2**20:.0f}"


def milliseconds(values):
    return f"{statistics.median(values) * 1e3:.2f}"


def ratio_cell(gather, other):
    """Median (min-max) over rounds of gather time / other time."""
    per_round = [g / o for g, o in zip(gather, other)]
    ratio = statistics.median(per_round)
    text = f"**{ratio:.2f}** ({min(per_round):.2f}-{max(per_round):.2f})"
    return ratio, text


def summarise(cases, times):
    rows, ratios = [], {}
    statics = [p for p in PATHS if p != "gather"]
    for case in cases:
        spec, count, batch = case.name
        for mode in MODES:
            gather = times[(case.name, "gather", mode)]
            row = [spec, count, batch, f"{case.mean_area:.0f}"]
            row += [case.default, mode]
            row += [milliseconds(times[(case.name, p, mode)]) for p in PATHS]
            for path in statics:
                ratio, text = ratio_cell(gather, times[(case.name, path, mode)])
                ratios[(case.name, path, mode)] = ratio
                row.append(text)
            row += [megabytes(case.memory[(p, mode)]) for p in PATHS]
            rows.append(row)
    header = ["map HxWxC", "boxes", "batch", "mean box area (cells)"]
    header += ["`box_max_pool` uses", "pass"]
    header += [f"{p} ms" for p in PATHS]
    header += [f"gather / {p} time" for p in statics]
    header += [f"{p} peak MB" for p in PATHS]
    return markdown_table(header, rows), ratios


def main(argv):
    del argv
    cases = [
        Case(spec, int(count), int(batch))
        for spec in FLAGS.maps
        for count in FLAGS.boxes
        for batch in FLAGS.batches
    ]
    load_before = os.getloadavg()
    started = time.time()
    times = measure(cases, FLAGS.rounds)
    minutes = (time.time() - started) / 60
    load_after = os.getloadavg()
    table, ratios = summarise(cases, times)
    wins = {
        path: sum(r > 1 for (_, p, _), r in ratios.items() if p == path)
        for path in PATHS
        if path != "gather"
    }
    loads = load_text(load_before, load_after, minutes)
    body = (
        "## Box max-pooling: gather vs static form "
        "(`benchmarks/box_pool.py`)\n\n"
        f"`python -m benchmarks.box_pool --rounds {FLAGS.rounds}` "
        f"({machine()}; {loads}). Graph mode (`tf.function`, no XLA), "
        "float32; boxes drawn like proposals (square root of the area "
        "log-uniform from 1 cell to the whole map, ratio in [1/2, 2]); "
        f"median over {FLAGS.rounds} interleaved rounds after one "
        "warm-up round. Forward+backward is the gradient of "
        "`sum(pool(x) * w)` with respect to `x`. Peak MB: TensorFlow's "
        "CPU allocator (`get_memory_info`), peak during one call minus "
        "what it held before (inputs not counted). The gather and "
        '"static, H unknown" are traced with H and W unknown, as '
        "`extract` traces without XLA (the static form then builds its "
        'table in a `tf.while_loop`); "static" for the exact shapes. '
        "Time ratios gather / static, per round, median (min-max): above "
        "1, the static form is faster; only ratios within this run "
        "compare (a shared machine).\n\n"
        f"{table}\n\n"
        + "; ".join(
            f"{path}: faster than the gather in {count} of "
            f"{len(ratios) // len(wins)} (case, pass) pairs"
            for path, count in wins.items()
        )
        + ".\n"
    )
    print(body)
    if FLAGS.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    app.run(main)
