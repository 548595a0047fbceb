"""`RMACModel.extract` throughput against the bare backbone (issue 12).

MobileNetV2 with the shared torchvision ImageNet weights, on `--images`
(24) photos of 384x512: COIL-100 photos upscaled to 512x384 and saved as
JPEG (quality 90) in a temporary folder. In one process, in interleaved
rounds (the order rotates every round; one warm-up round is not counted),
for each batch size:

- **trunk**: the bare backbone, `backbone(preprocess(x))` (its own
  preprocessing in the graph, the convolutional trunk, no R-MAC head),
  in a `tf.function` traced for the exact `(None, 384, 512, 3)` shape,
  fed the decoded, already sized `(N, 384, 512, 3)` float32 array in
  slices of `batch` images; its features are fetched as NumPy. Decoding
  is NOT in this number.
- **extract, arrays**: `model.extract(x, batch_size=batch)` on the same
  slices of that array, timed in alternation with the trunk batch by
  batch (a slow spell of a shared machine falls on both): the trunk plus
  the R-MAC head (region max-pooling, L2, shift + PCA, sum, L2) and the
  batching of `extract`. The head's own share is timed too: `extract`
  cannot beat one minus it.
- **extract, JPEG files**: `model.extract(paths, max_size=512,
  batch_size=batch)`: the same, plus decoding the files (Pillow, 4
  threads, ahead of the network), so its ratio to the trunk counts
  decoding as a cost that the trunk's number does not include.

The ratio of a row is the median over rounds of (extract images/s) /
(trunk images/s) measured in the same round; the issue asks for >= 0.97
on arrays and >= 0.9 on files. CPU seconds of the process (all threads)
are reported beside, as the work each side does, which other jobs on a
shared machine disturb less than wall time.

Usage:

    nice -n 5 python -m benchmarks.extraction           # writes RESULTS.md
    python -m benchmarks.extraction --rounds 3 --no-write

It replaces its section of `benchmarks/RESULTS.md`
(`<!-- extraction:begin -->` ... `<!-- extraction:end -->`).
"""

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from benchmarks.results import load_text
from benchmarks.results import machine
from benchmarks.results import markdown_table
from benchmarks.results import write_section
from keras_rmac.data.image_io import load_image
from keras_rmac.models import RMACModel

DATA = os.environ.get("KERAS_RMAC_DATA", "../shared/data")
WEIGHTS = "mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"
SIZE = (384, 512)  # height, width


def make_jpegs(folder, count):
    """`count` COIL-100 photos upscaled to 512x384, saved as JPEG."""
    sources = sorted(glob.glob(os.path.join(DATA, "coil100", "*__0.png")))
    if len(sources) < count:
        sys.exit(f"Need {count} COIL-100 photos under {DATA}/coil100.")
    paths = []
    for i, source in enumerate(sources[:count]):
        image = Image.open(source).convert("RGB")
        image = image.resize((SIZE[1], SIZE[0]), Image.BILINEAR)
        paths.append(os.path.join(folder, f"{i:03d}.jpg"))
        image.save(paths[-1], quality=90)
    return paths


def timed(fn):
    """`(wall seconds, process CPU seconds)` of `fn()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(model, paths, arrays, batch_sizes, rounds):
    """Per batch size and variant, lists of (wall, cpu) over rounds.

    The trunk and `extract` on arrays are interleaved batch by batch (one
    batch of the trunk, then the same batch through `extract`, the order
    swapped every batch), so that a slow spell of a shared machine falls
    on both alike; each round sums their times over the whole array.
    `extract` on files runs whole (its decoding overlaps the network
    across batches), in rotating order with the rest.
    """
    spec = tf.TensorSpec([None, *SIZE, 3], tf.float32)
    trunk_fn = tf.function(
        lambda x: model.backbone(model.preprocess(x), training=False),
        input_signature=[spec],
    )

    def paired(batch):
        sums = {"trunk": [0.0, 0.0], "arrays": [0.0, 0.0]}
        steps = {
            "trunk": lambda x: trunk_fn(x).numpy(),
            "arrays": lambda x: model.extract(x, batch_size=batch, verbose=0),
        }
        for i, start in enumerate(range(0, len(arrays), batch)):
            x = arrays[start : start + batch]
            order = ("trunk", "arrays") if i % 2 == 0 else ("arrays", "trunk")
            for name in order:
                wall, cpu = timed(lambda name=name: steps[name](x))
                sums[name][0] += wall
                sums[name][1] += cpu
        return {name: tuple(value) for name, value in sums.items()}

    def on_files(batch):
        model.extract(paths, max_size=max(SIZE), batch_size=batch, verbose=0)

    variants = ("trunk", "arrays", "files")
    times = {(b, v): [] for b in batch_sizes for v in variants}
    jobs = [(b, kind) for b in batch_sizes for kind in ("paired", "files")]
    for r in range(rounds + 1):  # Round 0 warms up (traces, caches).
        shift = r % len(jobs)
        for b, kind in jobs[shift:] + jobs[:shift]:
            if kind == "paired":
                measured = paired(b)
            else:
                measured = {"files": timed(lambda b=b: on_files(b))}
            if r:
                for v, wall_cpu in measured.items():
                    times[(b, v)].append(wall_cpu)
        print(f"round {r}/{rounds} done", file=sys.stderr, flush=True)
    return times


def head_share(model, arrays, batch, repeats=9):
    """Median time of the R-MAC head over that of trunk + head, per batch.

    The head (region max-pooling, L2, shift + PCA, L2, sum, L2) is work
    the bare trunk does not do: `extract` cannot beat `1 - head_share`.
    """
    spec = tf.TensorSpec([None, *SIZE, 3], tf.float32)
    trunk_fn = tf.function(
        lambda x: model.backbone(model.preprocess(x), training=False),
        input_signature=[spec],
    )
    head_fn = tf.function(model.head)
    x = arrays[:batch]
    features = trunk_fn(x)
    head_fn(features)
    trunk_times, head_times = [], []
    for _ in range(repeats):
        trunk_times.append(timed(lambda: trunk_fn(x).numpy())[0])
        head_times.append(timed(lambda: head_fn(features).numpy())[0])
    head = statistics.median(head_times)
    return head / (statistics.median(trunk_times) + head)


def verdict(met):
    return "met" if met else "NOT met"


def summarise(times, batch_sizes, count):
    rows = []
    targets = {"arrays": 0.97, "files": 0.9}
    for b in batch_sizes:
        trunk = times[(b, "trunk")]
        for v, label in (("arrays", "arrays"), ("files", "JPEG files")):
            ours = times[(b, v)]
            ratios = [t[0] / o[0] for t, o in zip(trunk, ours)]
            cpu = [t[1] / o[1] for t, o in zip(trunk, ours)]
            ratio = statistics.median(ratios)
            rows.append(
                [
                    b,
                    label,
                    f"{count / statistics.median(w for w, _ in trunk):.2f}",
                    f"{count / statistics.median(w for w, _ in ours):.2f}",
                    f"**{ratio:.3f}** ({min(ratios):.3f}-{max(ratios):.3f})",
                    f"{statistics.median(cpu):.3f}",
                    f">= {targets[v]}: {verdict(ratio >= targets[v])}",
                ]
            )
    header = [
        "batch",
        "extract on",
        "trunk img/s",
        "extract img/s",
        "ratio, median (min-max)",
        "CPU-time ratio",
        "issue 12",
    ]
    return markdown_table(header, rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    weights = os.path.join(DATA, "weights", WEIGHTS)
    model = RMACModel("mobilenet_v2", weights=weights)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(folder, args.images)
        arrays = np.stack([load_image(p) for p in paths]).astype(np.float32)
        started = time.time()
        times = measure(model, paths, arrays, args.batch_sizes, args.rounds)
        shares = {b: head_share(model, arrays, b) for b in args.batch_sizes}
    minutes = (time.time() - started) / 60
    load_after = os.getloadavg()
    table = summarise(times, args.batch_sizes, args.images)
    caveat = ""
    if max(load_before[0], load_after[0]) > (os.cpu_count() or 1):
        ratios = [
            t[0] / o[0]
            for b in args.batch_sizes
            for v in ("arrays", "files")
            for t, o in zip(times[(b, "trunk")], times[(b, v)])
        ]
        caveat = (
            "**Shared machine**: the load average exceeded the "
            f"{os.cpu_count()} cores, and single-round ratios ranged "
            f"{min(ratios):.2f}-{max(ratios):.2f}, so these wall-clock "
            "medians cannot decide a criterion of a few percent; the "
            "CPU-time ratio is the steadier figure. Rerun on a quiet "
            "machine to decide it.\n\n"
        )
    loads = load_text(load_before, load_after, minutes)
    body = (
        "## Extraction throughput vs the bare backbone (issue 12)\n\n"
        f"`python -m benchmarks.extraction --rounds "
        f"{args.rounds}` ({machine()}; {loads}). MobileNetV2 (shared "
        f"torchvision weights), {args.images} COIL-100 photos upscaled "
        "to 512x384 JPEG; median over "
        f"{args.rounds} interleaved rounds after one warm-up round.\n\n"
        "The trunk is `backbone(preprocess(x))` traced for the exact "
        "shape, fed the decoded, already sized float32 batch: decoding "
        "is **not** in its number. `extract` on arrays gets that same "
        "array; `extract` on JPEG files **includes** decoding the files "
        "(4 threads, ahead of the network). The trunk and `extract` on "
        "arrays are timed batch by batch in alternation (the order "
        "swapped every batch); `extract` on files runs whole. The ratio "
        "is extract's throughput over the trunk's, per round, median "
        "(min-max); the CPU-time ratio compares the CPU seconds each side "
        "used.\n\n"
        f"{caveat}{table}\n\n"
        "The R-MAC head (region max-pooling, L2, shift + PCA, L2, sum, "
        "L2) is work the bare trunk does not do; its share of trunk + "
        "head, timed alone on one batch (median of 9): "
        + ", ".join(f"batch {b}: {share:.1%}" for b, share in shares.items())
        + f". So `extract` on arrays cannot exceed about "
        f"{1 - max(shares.values()):.3f}x the trunk; the criterion's "
        "0.97 leaves the rest of the path about "
        f"{max(0.0, 1 - max(shares.values()) - 0.97):.1%}.\n"
    )
    print(body)
    if not args.no_write:
        write_section("extraction", body)


if __name__ == "__main__":
    main()
