"""`keras-rmac serve` throughput with and without batched image queries.

COIL-100 photos indexed as `make demo` does (`keras-rmac index PHOTOS
--index DIR --max-size 224`: MobileNetV2 with the shared torchvision
weights); then, in one run on one machine, `--rounds` rounds, each
serving the same `--queries` uploads (unindexed views, all 128x128, so
one resized shape) from `--clients` concurrent clients on 127.0.0.1
with `SearchEngine(max_batch=1)` (one image per forward pass) and with
`max_batch=N` for each N of `--max-batch`, in that order every round
(interleaved, so drift on a shared machine hits every setting alike).
Every answer is checked: status 200 and the same top 10 as `max_batch=1`
(scores to 1e-4).

Usage:

    python -m benchmarks.serve_batching          # writes RESULTS.md
    python -m benchmarks.serve_batching --max-size 512

It replaces its section of `benchmarks/RESULTS.md`
(`<!-- serve_batching:begin -->` ... `<!-- serve_batching:end -->`).
"""

import argparse
import statistics
import time

import numpy as np

from benchmarks.results import machine
from benchmarks.results import markdown_table
from benchmarks.results import write_section
from benchmarks.serve import REPO
from benchmarks.serve import _percentiles
from benchmarks.serve import index_objects
from benchmarks.serve import run_in_work_dir
from keras_rmac.serve import SearchEngine
from keras_rmac.serve import create_app
from tests.serve import server
from tests.serve.load import run_load


def _uploads(coil, count, objects, seed=0):
    """`count` upload queries of views that are not indexed (not
    multiples of 30 degrees)."""
    rng = np.random.default_rng(seed)
    queries = []
    while len(queries) < count:
        obj = int(rng.integers(1, objects + 1))
        view = int(rng.integers(0, 72)) * 5
        path = coil / f"obj{obj}__{view}.png"
        if view % 30 and path.is_file():
            queries.append(("upload", path.read_bytes(), 10))
    return queries


def serve_round(index_dir, queries, clients, max_batch):
    """`(seconds, answers, batch sizes)` of one load on a fresh engine."""
    engine = SearchEngine(index_dir, poll_interval=0, max_batch=max_batch)
    try:
        with server.running(create_app(engine)) as base:
            run_load(base, queries[: 2 * clients], clients)  # Warm.
            engine.batches.clear()
            started = time.perf_counter()
            answers = run_load(base, queries, clients)
            seconds = time.perf_counter() - started
        return seconds, answers, dict(engine.batches)
    finally:
        engine.close()


def _top(answer):
    return [(r["path"], r["score"]) for r in answer.body["results"]]


def check_answers(reference, answers):
    """Every answer is a 200 with `reference`'s top 10 (scores to 1e-4)."""
    for want, got in zip(reference, answers):
        assert got.status == 200, got.body
        assert [p for p, _ in _top(got)] == [p for p, _ in _top(want)]
        np.testing.assert_allclose(
            [s for _, s in _top(got)], [s for _, s in _top(want)], atol=1e-4
        )


def summarise(runs):
    """Rows of the table from `{max_batch: [(seconds, answers, batches)]}`
    and the median throughput ratio of each setting to `max_batch=1`."""
    rows, qps = [], {}
    for max_batch, rounds in runs.items():
        qps[max_batch] = [len(a) / s for s, a, _ in rounds]
        latencies = [
            _percentiles([x.seconds for x in answers])
            for _, answers, _ in rounds
        ]
        batches = {}
        for _, _, sizes in rounds:
            for size, count in sizes.items():
                batches[size] = batches.get(size, 0) + count
        images = sum(size * count for size, count in batches.items())
        rows.append(
            [
                max_batch,
                f"{statistics.median(qps[max_batch]):.1f}",
                f"{min(qps[max_batch]):.1f}-{max(qps[max_batch]):.1f}",
                f"{statistics.median(p for p, _ in latencies):.0f}",
                f"{statistics.median(p for _, p in latencies):.0f}",
                f"{images / max(sum(batches.values()), 1):.2f}",
            ]
        )
    ratios = {
        m: statistics.median(q / b for q, b in zip(qps[m], qps[1])) for m in qps
    }
    for row in rows:
        row.append(f"{ratios[row[0]]:.2f}")
    return rows, ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--queries", type=int, default=96)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-size", type=int, default=224)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[8])
    run_in_work_dir(parser.parse_args(), "bench-serve-batching-", run)


def run(args, coil, work):
    started = time.time()
    _, index_dir, count = index_objects(coil, work, args.objects, args.max_size)
    queries = _uploads(coil, args.queries, args.objects)
    settings = [1] + [m for m in args.max_batch if m != 1]
    runs = {m: [] for m in settings}
    for number in range(args.rounds):
        for max_batch in settings:
            result = serve_round(index_dir, queries, args.clients, max_batch)
            check_answers(runs[1][-1][1] if runs[1] else result[1], result[1])
            runs[max_batch].append(result)
            print(
                f"round {number + 1}, max_batch {max_batch}: "
                f"{len(queries) / result[0]:.1f} queries/s",
                flush=True,
            )
    report(args, count, runs, time.time() - started)


def report(args, count, runs, elapsed):
    rows, ratios = summarise(runs)
    best = max(ratios, key=ratios.get)
    table = markdown_table(
        [
            "max_batch",
            "queries/s (median)",
            "queries/s (min-max)",
            "p50 ms",
            "p95 ms",
            "images per extraction call",
            "queries/s / max_batch=1 (median of rounds)",
        ],
        rows,
    )
    title = "`keras-rmac serve`: batched image queries"
    body = f"""## {title} (`benchmarks/serve_batching.py`)

`python -m benchmarks.serve_batching --max-size {args.max_size}` on
{machine()}; {elapsed:.0f} s in all. {count} COIL-100 photos
({args.objects} objects, views every 30 degrees) indexed as `make demo`
does (MobileNetV2, shared torchvision weights, `--max-size
{args.max_size}`). Each round: {args.queries} uploads of unindexed views
(128x128 PNG, one resized shape) from {args.clients} concurrent clients
on 127.0.0.1, after {2 * args.clients} untimed warm-up queries, on a
fresh `SearchEngine(max_batch=...)` per setting; {args.rounds} rounds,
the settings interleaved in each. Every answer was a 200 with the top 10
of `max_batch=1` (scores to 1e-4).

{table}

Best: `max_batch={best}`, {ratios[best]:.2f}x the queries per second of
one image per forward pass (median of the per-round ratios, same run).
"""
    print(body)
    write_section("serve_batching", body)


if __name__ == "__main__":
    main()
