"""Recall-targeted operating points of `ScannIndex` (issue 11), row by row.

Run through `python -m benchmarks.search --recall` (see `benchmarks/search.py`).
Each row is one collection: synthetic unit vectors around Gaussian centres
with about 11 points per cluster (every cluster at least k + 1 = 11
members, so a query's true top-10 lies in its cluster) or about 50, or
COIL-100 R-MAC descriptors. For each row:

- exact search (`ExactIndex`) on 1000 independent queries (drawn like the
  database, not in it): the truth and the batched QPS baseline;
- the default fast index, `ScannIndex(D)`: build time with and without
  its tuning step, recall@10 on the independent queries, the recall the
  manifest predicted (`operating_point.recall`, on sample queries drawn
  from the database), batched QPS (best of 3) and its ratio to exact;
- a sweep of the knobs: the default index's leaf count and others
  (built with `target_recall=None`), every leaves-searched value of
  `scann_tuning.tuning_leaves_grid` up to half the leaves, the fewest
  re-ordered candidates reaching recall 0.95 on the independent queries
  (bisection) for each, timed; the fastest such setting is "best swept".

Each finished row is written to `<workdir>/<row>.json`; a rerun skips
rows already there, then rewrites the `search_recall` section of
RESULTS.md from every finished row (rows not run are listed as such).
"""

import gc
import json
import logging
import math
import os
import time

import numpy as np

from benchmarks.results import markdown_table
from keras_rmac.search import ScannIndex
from keras_rmac.search import scann_policy
from keras_rmac.search import scann_tuning
from keras_rmac.search.exact import top_k_inner_product

SECTION = "search_recall"
K = 10
TARGET = 0.95
NUM_QUERIES = 1000
NOISE = 0.7
ROWS = [
    "10000x512:c11",
    "10000x512:c50",
    "coil100",
    "100000x512:c11",
    "100000x512:c50",
    "100000x2048:c11",
    "100000x2048:c50",
    "200000x512:c11",
    "200000x512:c50",
    "1000000x512:c11",
    "1000000x512:c50",
]


def structured(n, d, per_cluster, num_queries, seed=0):
    """Database and independent queries (see the module docstring).

    Centres: `default_rng(seed)`; labels: every centre `K + 1` times when
    `per_cluster` <= `K + 1` (the remainder uniform), else uniform over
    `n // per_cluster` centres; rows `L2norm(c + 0.7 e / sqrt(d))` drawn
    in chunks of 65,536 with `default_rng(seed + 1)` (queries: centres
    from `seed + 2`, noise from `seed + 3`). float32, one database copy.
    """
    rng = np.random.default_rng(seed)
    if per_cluster <= K + 1:
        count = n // (K + 1)
        labels = np.concatenate(
            [
                np.repeat(np.arange(count), K + 1),
                rng.integers(0, count, n - count * (K + 1)),
            ]
        )
        rng.shuffle(labels)
    else:
        count = n // per_cluster
        labels = rng.integers(0, count, n)
    centres = rng.standard_normal((count, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(which, stream):
        out = np.empty((len(which), d), np.float32)
        for start in range(0, len(which), 65536):
            part = which[start : start + 65536]
            x = centres[part] + (NOISE / np.sqrt(d)) * stream.standard_normal(
                (len(part), d), dtype=np.float32
            )
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start : start + len(part)] = x
        return out

    db = draw(labels, np.random.default_rng(seed + 1))
    picks = np.random.default_rng(seed + 2).integers(0, count, num_queries)
    return db, draw(picks, np.random.default_rng(seed + 3))


def coil_rows(coil_descriptors):
    """COIL-100 R-MAC descriptors: all of the val and test databases,
    shuffled; 400 held out as independent queries.

    Args:
        coil_descriptors: callable returning `benchmarks.search`'s
            `coil100_descriptors(...)` dict (passed in: that module may
            run as `__main__`).
    """
    splits = coil_descriptors()
    x = np.concatenate([splits["val"][0], splits["test"][0]])
    order = np.random.default_rng(0).permutation(len(x))
    queries = np.ascontiguousarray(x[order[:400]])
    return np.ascontiguousarray(x[order[400:]]), queries


def recall_at_k(found, truth):
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=1).sum(axis=1)
    return float(hits.mean()) / truth.shape[1]


def _qps(index, queries, repeats=3, **options):
    """Batched QPS: best of `repeats` measurements of at least 0.5 s each
    (the batch searched as many times as that takes; the machine is
    shared, and one batch of fast searches takes a few milliseconds)."""
    start = time.perf_counter()
    found, _ = index.search(queries, K, **options)  # warm-up
    runs = max(1, math.ceil(0.5 / max(1e-4, time.perf_counter() - start)))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(runs):
            index.search(queries, K, **options)
        best = min(best, (time.perf_counter() - start) / runs)
    return len(queries) / best, found


# Any params of a re-ordering index (for the tuner's re-order grid).
_REORDERING = scann_policy.resolve_params(
    scann_policy.ScannOptions(dimension=8), 5000
)


def sweep(index, queries, truth, num_leaves):
    """Fastest (leaves searched, re-order) reaching TARGET on the queries."""
    leaves_grid = [0]
    if num_leaves:
        cap = max(1, num_leaves // 2)
        leaves_grid = sorted(
            set(scann_tuning.tuning_leaves_grid(num_leaves * 2)) | {cap}
        )
        leaves_grid = [v for v in leaves_grid if v <= cap]
    reorders = sorted(
        {11, 12}
        | set(scann_tuning.tuning_reorder_grid(_REORDERING, K))
        | {2000}
    )
    best, tried = None, 0

    def recall(leaves, reorder):
        nonlocal tried
        tried += 1
        found, _ = index.search(
            queries,
            K,
            leaves_to_search=leaves or None,
            reorder_num_neighbors=reorder,
        )
        return recall_at_k(found, truth)

    high = len(reorders) - 1
    for leaves in leaves_grid:
        if recall(leaves, reorders[high]) < TARGET:
            continue
        low = 0
        while low < high:
            middle = (low + high) // 2
            if recall(leaves, reorders[middle]) >= TARGET:
                high = middle
            else:
                low = middle + 1
        qps, found = _qps(
            index,
            queries,
            repeats=2,
            leaves_to_search=leaves or None,
            reorder_num_neighbors=reorders[high],
        )
        setting = dict(
            leaves=leaves,
            reorder=reorders[high],
            recall=recall_at_k(found, truth),
            qps=qps,
        )
        if best is None or qps > best["qps"]:
            best = setting
        elif qps < best["qps"] / 2:
            break
    return best, tried


def run_row(spec, coil_descriptors):
    """All measurements of one row, as a JSON-serialisable dict."""
    started = time.perf_counter()
    db, queries, structure = _row_data(spec, coil_descriptors)
    n, d = db.shape
    start = time.perf_counter()
    truth, _ = top_k_inner_product(queries, db, K)
    exact_qps = len(queries) / (time.perf_counter() - start)
    row = dict(spec=spec, n=n, d=d, structure=structure, exact_qps=exact_qps)

    index = ScannIndex(d)
    index.add(db)
    start = time.perf_counter()
    index.build()
    build_s = time.perf_counter() - start
    point = index.operating_point
    qps, found = _qps(index, queries)
    params = index.built_params
    row["default"] = dict(
        build_s=build_s,
        tuning_s=point.seconds,
        recall=recall_at_k(found, truth),
        predicted=point.recall,
        sample_size=point.sample_size,
        reached=point.reached,
        qps=qps,
        num_leaves=params["num_leaves"],
        leaves=params["num_leaves_to_search"],
        reorder=params["reorder_num_neighbors"],
    )
    logging.info("%s default: %s", spec, row["default"])
    sweeps = {}
    best, tried = sweep(index, queries, truth, params["num_leaves"])
    sweeps[params["num_leaves"]] = dict(best=best, tried=tried, build_s=None)
    # The best swept setting so far: (its index, its leaf count, setting).
    leader = (index, params["num_leaves"], best)
    for leaves in _other_leaf_counts(n, params["num_leaves"]):
        other = ScannIndex(d, num_leaves=leaves, target_recall=None)
        other.add(db)
        start = time.perf_counter()
        other.build()
        other_build = time.perf_counter() - start
        actual = other.built_params["num_leaves"]
        best, tried = sweep(other, queries, truth, actual)
        sweeps[actual] = dict(best=best, tried=tried, build_s=other_build)
        logging.info("%s sweep %d leaves: %s", spec, actual, sweeps[actual])
        if best and (leader[2] is None or best["qps"] > leader[2]["qps"]):
            leader = (other, actual, best)
        del other
        gc.collect()
    row["sweeps"] = {str(k): v for k, v in sweeps.items()}
    if leader[2] is not None:
        row["default"]["qps"], best_qps = _alternate(index, leader, queries)
        row["best"] = dict(leader[2], num_leaves=leader[1], qps=best_qps)
    del index, leader
    gc.collect()
    row["seconds"] = time.perf_counter() - started
    return row


def _row_data(spec, coil_descriptors):
    """`(database, independent queries, structure label)` of a row."""
    if spec == "coil100":
        db, queries = coil_rows(coil_descriptors)
        return db, queries, "COIL-100 R-MAC"
    size, structure = spec.split(":")
    n, d = (int(v) for v in size.split("x"))
    db, queries = structured(n, d, int(structure[1:]), NUM_QUERIES)
    return db, queries, f"~{structure[1:]} per cluster"


def _alternate(index, leader, queries):
    """QPS of the default and of the best swept setting, timed in
    alternation (3 rounds, best kept): the machine is shared."""
    options = dict(
        leaves_to_search=leader[2]["leaves"] or None,
        reorder_num_neighbors=leader[2]["reorder"],
    )
    default_qps, best_qps = [], []
    for _ in range(3):
        default_qps.append(_qps(index, queries, repeats=1)[0])
        best_qps.append(_qps(leader[0], queries, repeats=1, **options)[0])
    return max(default_qps), max(best_qps)


def _other_leaf_counts(n, default_leaves):
    """Leaf counts swept besides the default's: 0.5, 1, 2 and 4 sqrt(N)
    (those within 10% of the default's left out); 4 sqrt(N) not from
    500k vectors on (its build alone exceeds the time available here);
    below 20k vectors also no tree."""
    root = math.sqrt(n)
    factors = (0.5, 1, 2, 4) if n < 500_000 else (0.5, 1, 2)
    counts = [int(round(f * root)) for f in factors]
    if n < 20_000:
        counts.insert(0, 0)
    return [
        c
        for c in counts
        if abs(c - default_leaves) > 0.1 * max(1, default_leaves)
    ]


def run_rows(rows, workdir, coil_descriptors):
    """Runs the rows not already in `workdir`; returns every finished row.

    `coil_descriptors`: see `coil_rows`."""
    os.makedirs(workdir, exist_ok=True)
    for spec in rows:
        path = os.path.join(workdir, spec.replace(":", "_") + ".json")
        if os.path.exists(path):
            logging.info("%s: done already (%s)", spec, path)
            continue
        logging.info("%s: running", spec)
        row = run_row(spec, coil_descriptors)
        with open(path + ".tmp", "w") as f:
            json.dump(row, f, indent=1)
        os.replace(path + ".tmp", path)
        gc.collect()
    return finished(rows, workdir)


def finished(specs, workdir):
    """The rows of `specs` with a file in `workdir`, by spec."""
    out = {}
    for spec in specs:
        path = os.path.join(workdir, spec.replace(":", "_") + ".json")
        if os.path.exists(path):
            with open(path) as f:
                out[spec] = json.load(f)
    return out


def _best_overall(row):
    if "best" in row:
        return row["best"]["num_leaves"], row["best"]
    bests = [
        (int(leaves), s["best"])
        for leaves, s in row["sweeps"].items()
        if s["best"] is not None
    ]
    if not bests:
        return None, None
    return max(bests, key=lambda item: item[1]["qps"])


def table(rows, specs):
    """Markdown table and per-row done-when checks."""
    header = [
        "collection",
        "structure",
        "recall@10 (independent)",
        "manifest recall (sample)",
        "QPS batched",
        "x exact",
        "default setting",
        "best swept (recall >= 0.95)",
        "default / best",
        "build s (tuning s, %)",
        "checks",
    ]
    body = []
    for spec in specs:
        if spec not in rows:
            body.append([spec, "not run"] + [""] * (len(header) - 2))
            continue
        r = rows[spec]
        de = r["default"]
        leaves, best = _best_overall(r)
        speedup = de["qps"] / r["exact_qps"]
        best_txt, ratio, fast_enough = "none reaches 0.95", None, True
        if best is not None:
            ratio = de["qps"] / best["qps"]
            best_txt = (
                f"{best['leaves']}/{leaves} leaves, R={best['reorder']}: "
                f"{best['qps']:.0f} QPS ({best['qps'] / r['exact_qps']:.1f}x)"
            )
        any10 = any(
            s["best"] and s["best"]["qps"] / r["exact_qps"] >= 10
            for s in r["sweeps"].values()
        )
        if r["n"] >= 100_000 and any10:
            fast_enough = speedup >= 10
        checks = [
            "recall " + ("ok" if de["recall"] >= TARGET else "LOW"),
            "honest "
            + ("ok" if de["recall"] >= de["predicted"] - 0.02 else "NO"),
            "speed " + ("ok" if ratio is not None and ratio >= 0.8 else "SLOW"),
        ]
        if r["n"] >= 100_000:
            checks.append(
                ">=10x " + ("ok" if fast_enough else "NO")
                if any10
                else "no swept setting reaches 10x"
            )
        build, tuning = de["build_s"], de["tuning_s"]
        share = (
            f"{100 * tuning / (build - tuning):.0f}%"
            if build - tuning > 1
            else "-"
        )
        setting = (
            f"{de['leaves']}/{de['num_leaves']} leaves"
            if de["num_leaves"]
            else "no tree"
        )
        if de["reorder"]:
            setting += f", R={de['reorder']}"
        body.append(
            [
                f"{r['n']:,} x {r['d']}",
                r["structure"],
                f"{de['recall']:.3f}",
                f"{de['predicted']:.3f} (n={de['sample_size']})",
                f"{de['qps']:.0f}",
                f"{speedup:.1f}",
                setting,
                best_txt,
                "-" if ratio is None else f"{ratio:.2f}",
                f"{build:.1f} ({tuning:.1f}, {share})",
                "; ".join(checks),
            ]
        )
    return markdown_table(header, body)


def section(rows, specs, command, workdir):
    """The `search_recall` section of RESULTS.md."""
    missing = [s for s in specs if s not in rows]
    sweeps = []
    for spec in specs:
        if spec in rows:
            parts = []
            for leaves, s in sorted(
                rows[spec]["sweeps"].items(), key=lambda i: int(i[0])
            ):
                b = s["best"]
                parts.append(
                    f"{leaves} leaves: "
                    + (
                        f"{b['leaves']} searched, R={b['reorder']}, "
                        f"{b['qps']:.0f} QPS"
                        if b
                        else "0.95 not reached"
                    )
                    + (f" (build {s['build_s']:.0f} s)" if s["build_s"] else "")
                )
            sweeps.append(f"- {spec}: " + "; ".join(parts))
    title = "Recall-targeted operating points (`benchmarks/search.py --recall`)"
    return f"""## {title}

Command: `{command}` (rows resumable under `{workdir}`) — {os.cpu_count()}
CPU cores shared with other jobs: QPS and build times are noisy; compare
ratios within a row. Default settings only: `ScannIndex(D)` (fast mode,
`target_recall=0.95`, k=10). Queries: 1000 (COIL-100: 400) independent
queries drawn like the database and not in it; the manifest's recall is
measured at build on sample rows of the database, their own row excluded.
Build s: the whole `build()`, tuning included; tuning s: the measurement
(ground truth of the sample, searches, any rebuild), % of the build
without it ("-" under 1 s). "Best swept": the fastest setting found
reaching recall@10 0.95 on the independent queries over the default's
leaf count and the others listed below (leaves searched up to half the
leaves, re-order depth bisected); its QPS and the default's are then
timed in alternation, 3 rounds, best kept. Checks (issue 11's
done-when): recall >= 0.95; honest (independent >= manifest - 0.02);
speed (default >= 0.8 x best swept); >= 10x exact where N >= 100k and
a swept setting reaches 10x.

{table(rows, specs)}

Sweeps per leaf count:

{chr(10).join(sweeps)}

Rows not run in this session: {", ".join(missing) if missing else "none"}.

The "Search indexes" section above was measured with keras_rmac 0.2's
fixed fast-mode defaults (sqrt(N) leaves, 5% searched, 200 re-ordered),
which `ScannIndex(D, target_recall=None)` still gives; the default is now
the recall-targeted build measured here.
"""
