"""Beam benchmark (issue 12): the pipeline vs `keras-rmac index`, and a
sharded index vs one index.

(a) COIL-100 photos (all 7,168, or the first `--coil-images` in name
    order) indexed twice on the same machine and cores, MobileNetV2 with
    the shared torchvision ImageNet weights at `--max-size`: by the folder
    indexer (`index_folder`, as `keras-rmac index`) and by
    `index_folder_on_beam` on DirectRunner with `--workers` processes
    (multi-processing). Wall time of each whole run (model load, pipeline
    start, extraction, index build), photos per second, their ratio, and
    the largest difference between the two indexes' descriptors.
(b) `--rows` x 512 clustered descriptors (`benchmarks.search.synthetic`,
    20,000 centres) in one `ScannIndex(mode="fast")` and in a
    `ShardedIndex` of 4 such shards (built in 4 threads): build time,
    recall@10 and batched QPS on 1,000 queries against `ExactIndex`, and
    bytes per vector on disk and in memory (RSS increase of a fresh
    process loading the saved index and running one query).

Each part's figures are saved as JSON under `--workdir` when it finishes;
a rerun skips the parts already there (`--redo a,b` forces them). Prints
the tables and writes the `beam` section of `benchmarks/RESULTS.md`.

Usage:

    python -m benchmarks.beam                          # both parts
    python -m benchmarks.beam --coil-images 600 --rows 200000
    python -m benchmarks.beam --parts b --rows 1000000 # the 1M rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import machine  # noqa: E402
from benchmarks.results import markdown_table  # noqa: E402
from benchmarks.results import write_section  # noqa: E402

SECTION = "beam"
WEIGHTS = "weights/mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"


def _load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def _load_sampler():
    """Samples the 1-minute load average every 5 s until stopped."""
    samples, stop = [], threading.Event()

    def run():
        while not stop.wait(5):
            samples.append(os.getloadavg()[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finish():
        stop.set()
        thread.join()
        return float(np.mean(samples)) if samples else os.getloadavg()[0]

    return finish


def part_a(args) -> dict:
    """COIL-100 through the pipeline vs the folder indexer."""
    from keras_rmac import indexing
    from keras_rmac.beam import index_folder_on_beam
    from keras_rmac.models import RMACModel

    coil = os.path.join(args.data_dir, "coil100")
    names = sorted(n for n in os.listdir(coil) if n.endswith(".png"))
    if args.coil_images:
        names = names[: args.coil_images]
    work = tempfile.mkdtemp(prefix="keras_rmac_bench_beam_")
    try:
        photos = os.path.join(work, "photos")
        os.makedirs(photos)
        for name in names:
            os.link(os.path.join(coil, name), os.path.join(photos, name))
        model = RMACModel(
            "mobilenet_v2", weights=os.path.join(args.data_dir, WEIGHTS)
        )
        model_path = os.path.join(work, "model.keras")
        model.save(model_path)
        common = {
            "max_size": args.max_size,
            "mode": "fast",
            "verbose": 0,
        }
        runs = {}
        for name in ("folder", "beam"):
            load = _load_sampler()
            start = time.perf_counter()
            target = os.path.join(work, name)
            if name == "folder":
                report = indexing.index_folder(
                    photos, target, model=model, **common
                )
            else:
                report = index_folder_on_beam(
                    photos,
                    target,
                    model=model,
                    runner="DirectRunner",
                    pipeline_args=[
                        f"--direct_num_workers={args.workers}",
                        "--direct_running_mode=multi_processing",
                    ],
                    **common,
                )
            seconds = time.perf_counter() - start
            runs[name] = {
                "seconds": seconds,
                "indexed": report.indexed,
                "per_second": len(names) / seconds,
                "load": load(),
            }
        a = indexing.PhotoIndex(os.path.join(work, "folder"))
        b = indexing.PhotoIndex(os.path.join(work, "beam"))
        assert a.paths == b.paths
        ids = np.arange(len(a))
        diff = float(
            np.abs(a.stored_descriptors(ids) - b.stored_descriptors(ids)).max()
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "images": len(names),
        "max_size": args.max_size,
        "workers": args.workers,
        "runs": runs,
        "ratio": runs["folder"]["seconds"] / runs["beam"]["seconds"],
        "max_abs_diff": diff,
    }


# Besides the build target (0.95), both indexes are also searched at these
# `recall=` levels: a collection whose cheapest setting already overshoots
# the target (one index at 1 leaf) is compared at a level both must tune
# for.
LEVELS = (0.99,)


def _measure(index, queries, truth, directory):
    from benchmarks.search import _dir_bytes
    from benchmarks.search import _loaded_rss
    from benchmarks.search import recall_at_k

    start = time.perf_counter()
    index.save(directory)  # Builds (ScaNN and shards build lazily).
    build = time.perf_counter() - start
    index.search(queries[:10], 10)  # Warm.
    start = time.perf_counter()
    found, _ = index.search(queries, 10)
    qps = len(queries) / (time.perf_counter() - start)
    n = len(index)
    rss = _loaded_rss(directory, queries[0])
    point = getattr(index, "operating_point", None)
    levels = {}
    for level in LEVELS:
        index.search(queries[:10], 10, recall=level)  # Warm.
        start = time.perf_counter()
        at_level, _ = index.search(queries, 10, recall=level)
        levels[str(level)] = {
            "recall": recall_at_k(at_level, truth),
            "qps": len(queries) / (time.perf_counter() - start),
        }
    return {
        "operating_point": point.describe() if point else None,
        "build_s": build,
        "recall": recall_at_k(found, truth),
        "qps": qps,
        "levels": levels,
        "disk_bytes": _dir_bytes(directory) / n,
        "ram_bytes": rss["rss"] / n,
    }


def part_b(args) -> dict:
    """`--rows` x 512 in 4 shards vs one index."""
    from benchmarks.search import synthetic
    from keras_rmac.search import ScannIndex
    from keras_rmac.search import ShardedIndex
    from keras_rmac.search import top_k_inner_product

    db, queries = synthetic(args.rows, 512, 1000)
    truth, _ = top_k_inner_product(queries, db, 10)
    work = tempfile.mkdtemp(prefix="keras_rmac_bench_shards_")
    out = {"rows": args.rows}
    try:
        for name in ("one", "sharded"):
            load = _load_sampler()
            if name == "one":
                index = ScannIndex(512, mode="fast")
            else:
                index = ShardedIndex(512, shard_kind="fast", num_shards=4)
            index.add(db)
            out[name] = _measure(
                index, queries, truth, os.path.join(work, name)
            )
            out[name]["load"] = load()
            del index
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def table_a(a: dict) -> str:
    rows = [
        [
            label,
            a["images"],
            f"{r['seconds']:.0f}",
            f"{r['per_second']:.1f}",
            f"{r['load']:.1f}",
        ]
        for label, r in (
            ("`keras-rmac index` (folder indexer)", a["runs"]["folder"]),
            (
                f"Beam DirectRunner, {a['workers']} processes",
                a["runs"]["beam"],
            ),
        )
    ]
    return markdown_table(
        ["run", "photos", "wall s", "photos/s", "mean load"], rows
    ) + (
        f"\n\nThroughput ratio pipeline / folder indexer: "
        f"**{a['ratio']:.2f}x**; largest descriptor difference "
        f"{a['max_abs_diff']:.1e}."
    )


def _levels_text(b: dict) -> str:
    """The `recall=` levels of both indexes, one sentence each."""
    text = ""
    for level in b["one"].get("levels", {}):
        one, sharded = b["one"]["levels"][level], b["sharded"]["levels"][level]
        text += (
            f"\n\nSearched with `recall={level}`: one index recall@10 "
            f"{one['recall']:.3f} at {one['qps']:.0f} QPS, 4 shards "
            f"{sharded['recall']:.3f} at {sharded['qps']:.0f} QPS; sharded - "
            f"one: {sharded['recall'] - one['recall']:+.3f}; QPS sharded / "
            f"one: {sharded['qps'] / one['qps']:.2f}x."
        )
    return text


def table_b(b: dict) -> str:
    rows = []
    for name, label in (("one", "one ScannIndex"), ("sharded", "4 shards")):
        r = b[name]
        rows.append(
            [
                label,
                f"{r['build_s']:.0f}",
                f"{r['recall']:.3f}",
                f"{r['qps']:.0f}",
                f"{r['disk_bytes']:.0f}",
                f"{r['ram_bytes']:.0f}",
                f"{r['load']:.1f}",
            ]
        )
    return markdown_table(
        [
            f"{b['rows']:,} x 512 (fast)",
            "build s",
            "recall@10",
            "QPS (1000 batched)",
            "disk B/vector",
            "RAM B/vector",
            "mean load",
        ],
        rows,
    ) + (
        f"\n\nRecall@10 sharded - one: "
        f"{b['sharded']['recall'] - b['one']['recall']:+.3f}; QPS "
        f"sharded / one: {b['sharded']['qps'] / b['one']['qps']:.2f}x."
        + _levels_text(b)
        + "".join(
            f"\n\nOperating point at build, {label}: "
            f"{b[name]['operating_point']}."
            for name, label in (("one", "one index"), ("sharded", "4 shards"))
            if b[name].get("operating_point")
        )
        + _shard_tree_text(b["rows"])
    )


def _shard_tree_text(rows: int) -> str:
    from keras_rmac.search import scann_policy

    one = scann_policy.num_leaves_for_target(rows)
    shard = scann_policy.shard_num_leaves(rows // 4, rows)
    return (
        f"\n\nTrees: one index {one} leaves; each shard of {rows // 4:,} "
        f"rows {shard} leaves (`scann_policy.shard_num_leaves`: the tree "
        "of one index of all the rows, so that a leaf per shard covers "
        "what a leaf of the one index covers). QPS on one machine pays "
        "for the 4 trees searched; a cluster searches the shards in "
        "parallel."
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(
            "KERAS_RMAC_DATA",
            os.path.join(
                os.path.dirname(__file__), "..", "..", "shared", "data"
            ),
        ),
    )
    parser.add_argument("--workdir", default="out/bench-beam")
    parser.add_argument("--parts", default="a,b")
    parser.add_argument("--redo", default="")
    parser.add_argument("--coil-images", type=int, default=0)
    parser.add_argument("--max-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    command = " ".join(["python -m benchmarks.beam", *(argv or sys.argv[1:])])
    results = {}
    for part, fn in (("a", part_a), ("b", part_b)):
        path = os.path.join(args.workdir, f"part_{part}.json")
        if part in args.parts.split(",") and (
            part in args.redo.split(",") or not os.path.exists(path)
        ):
            results[part] = fn(args)
            results[part]["command"] = command
            results[part]["machine"] = machine()
            results[part]["load_end"] = _load_average()
            with open(path, "w") as f:
                json.dump(results[part], f, indent=1)
        elif os.path.exists(path):
            with open(path) as f:
                results[part] = json.load(f)
    body = ["## Beam pipeline and sharded indexes (issue 12)"]
    if "a" in results:
        a = results["a"]
        body += [
            f"\n`{a['command']}` ({a['machine']}; load average at the end "
            f"{a.get('load_end', 'not recorded')}). COIL-100, MobileNetV2 "
            f"(torchvision weights) at {a['max_size']} px, fast mode, each "
            "run whole (model load, pipeline start-up, extraction, index "
            "build):\n",
            table_a(a),
        ]
    if "b" in results:
        b = results["b"]
        body += [
            f"\n`{b['command']}` ({b['machine']}; load average at the end "
            f"{b.get('load_end', 'not recorded')}). Clustered synthetic "
            "descriptors (`benchmarks.search.synthetic`), 1,000 queries, "
            "ground truth by `ExactIndex`:\n",
            table_b(b),
        ]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
