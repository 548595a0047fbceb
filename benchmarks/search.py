"""Search benchmark: ExactIndex vs ScannIndex (fast / compact) on synthetic
clustered descriptors, plus COIL-100 mAP with R-MAC descriptors.

Synthetic data (the exact recipe, so numbers can be reproduced):

- 20,000 cluster centres `c_j = g_j / |g_j|`, `g_j ~ N(0, I_D)`, drawn
  with `numpy.random.default_rng(seed)`;
- each database vector `x = L2norm(c_a + 0.7 * e / sqrt(D))`, with `a`
  uniform over the centres and `e ~ N(0, I_D)` (so the noise has norm
  about 0.7 and cos(x, c_a) is about 0.82), drawn with
  `default_rng(seed + 1)` in chunks of 65,536 rows, float32;
- queries: the same recipe with `default_rng(seed + 2)` (not database
  members).

For each collection it measures: build time; bytes per vector on disk
(the saved index directory, ids included) and in memory (RSS increase of a
fresh Python process loading the saved index and running one query,
after importing the library); queries per second for 1000 queries in one
batched call and for single-query calls; recall@10 against `ExactIndex`
(NumPy matrix product + argpartition), whose own QPS is the baseline.

Usage:

    python -m benchmarks.search                # everything, writes RESULTS.md
    python -m benchmarks.search --quick        # small sizes, a few minutes
    python -m benchmarks.search --collections= # COIL-100 part only
    python -m benchmarks.search --recall       # recall-targeted defaults
                                               # (issue 11), resumable

`--recall` runs only `benchmarks/search_recall.py`'s rows (N = 10k, 100k,
200k, 1M at 512-d and 100k at 2048-d, two cluster structures, COIL-100),
one JSON file per finished row under `--recall_dir` (a rerun skips them),
and writes the `search_recall` section of RESULTS.md.

It prints its tables and replaces its sections of `benchmarks/RESULTS.md`
(`<!-- search:begin -->` ... `<!-- search:end -->` for the synthetic
collections, `search_coil100` for COIL-100).
"""

import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import define_data_dir  # noqa: E402
from benchmarks.results import markdown_table  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from keras_rmac.evaluation import compute_map  # noqa: E402
from keras_rmac.search import ExactIndex  # noqa: E402
from keras_rmac.search import ScannIndex  # noqa: E402
from keras_rmac.search import database_side_augmentation  # noqa: E402
from keras_rmac.search import search_with_query_expansion  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool(
    "quick", False, "Small sizes (10k, 50k x 512; 20k x 2048) for a smoke run."
)
flags.DEFINE_list(
    "collections",
    ["10000x512", "100000x512", "1000000x512", "100000x2048"],
    "Collections to benchmark, as NxD.",
)
flags.DEFINE_list(
    "modes", ["fast", "compact64", "compact128"], "ScannIndex operating points."
)
flags.DEFINE_integer("num_queries", 1000, "Queries in the batched call.")
flags.DEFINE_integer("single_queries", 200, "Queries timed one by one.")
flags.DEFINE_integer("centres", 20000, "Synthetic cluster centres.")
flags.DEFINE_float("noise", 0.7, "Synthetic noise scale.")
flags.DEFINE_integer("seed", 0, "Synthetic data seed.")
flags.DEFINE_bool("coil", True, "Run the COIL-100 mAP part if data exists.")
define_data_dir()
flags.declare_key_flag("data_dir")  # listed in --help
flags.DEFINE_string(
    "coil_cache",
    os.path.join(tempfile.gettempdir(), "keras_rmac_coil_mnv2_224.npz"),
    "Where to cache the COIL-100 R-MAC descriptors ('' to disable).",
)
flags.DEFINE_bool(
    "coil_pca",
    True,
    "Also measure R-MAC + shift/PCA-whitening descriptors on COIL-100.",
)
flags.DEFINE_bool("write_results", True, "Update benchmarks/RESULTS.md.")
flags.DEFINE_bool(
    "recall", False, "Run the recall-targeted rows only (issue 11)."
)
flags.DEFINE_list(
    "recall_rows", None, "Rows of --recall (default: all, small to large)."
)
flags.DEFINE_bool(
    "recall_run",
    True,
    "--norecall_run: only rewrite the section from the rows already finished.",
)
flags.DEFINE_string(
    "recall_dir",
    os.path.join(tempfile.gettempdir(), "keras_rmac_search_recall"),
    "One JSON file per finished --recall row (resume).",
)

SECTION = "search"
COIL_SECTION = "search_coil100"
K = 10


def synthetic(n, d, num_queries, centres=20000, noise=0.7, seed=0):
    """Clustered unit vectors; see the module docstring for the recipe."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)

    def draw(count, stream):
        out = np.empty((count, d), np.float32)
        for start in range(0, count, 65536):
            m = min(65536, count - start)
            x = c[stream.integers(0, centres, m)]
            x += (noise / np.sqrt(d)) * stream.standard_normal(
                (m, d), dtype=np.float32
            )
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start : start + m] = x
        return out

    database = draw(n, np.random.default_rng(seed + 1))
    queries = draw(num_queries, np.random.default_rng(seed + 2))
    return database, queries


def recall_at_k(found, truth):
    """Mean over queries of |found_i ∩ truth_i| / |truth_i|."""
    hits = [
        np.intersect1d(f[f >= 0], t, assume_unique=True).size
        for f, t in zip(found, truth)
    ]
    return float(np.mean(hits)) / truth.shape[1]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _single_qps(index, queries, count):
    count = min(count, len(queries))
    start = time.perf_counter()
    for i in range(count):
        index.search(queries[i : i + 1], K)
    return count / (time.perf_counter() - start), count


def _dir_bytes(path):
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    )


_RSS_PROBE = r"""
import json, sys, time
import numpy as np
import keras_rmac.search as s
from keras_rmac.search.scann_index import _scann_pybind
_scann_pybind()  # load the ScaNN library before measuring
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
q = np.load(sys.argv[2])
s.ExactIndex(q.shape[1]).search(q, 1)  # warm NumPy / BLAS
before = rss()
t = time.perf_counter()
index = s.load_index(sys.argv[1])
seconds = time.perf_counter() - t
index.search(q, 10)
print(json.dumps({"rss": rss() - before, "load_s": seconds}))
"""


def _loaded_rss(directory, query):
    """RSS increase of a fresh process loading `directory` (+ one query)."""
    qfile = os.path.join(directory + ".q.npy")
    np.save(qfile, query[None])
    try:
        out = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, directory, qfile],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.remove(qfile)
    return json.loads(out.strip().splitlines()[-1])


def _make_index(mode, d):
    if mode == "fast":
        return ScannIndex(d, mode="fast")
    if mode.startswith("compact"):
        return ScannIndex(
            d, mode="compact", bytes_per_vector=int(mode[len("compact") :])
        )
    raise ValueError(f"Unknown mode {mode!r}; use fast, compact64 ...")


def bench_collection(n, d, modes, num_queries, single_queries, workdir):
    """All measurements for one synthetic collection; returns table rows."""
    logging.info("Generating %d x %d (+ %d queries)", n, d, num_queries)
    (db, queries), gen_s = _timed(
        lambda: synthetic(
            n, d, num_queries, FLAGS.centres, FLAGS.noise, FLAGS.seed
        )
    )
    logging.info("generated in %.1f s", gen_s)
    rows = []
    exact = ExactIndex(d)
    exact.add(db)
    start = time.perf_counter()
    truth, _ = exact.search(queries, K)
    exact_s = time.perf_counter() - start
    exact_qps = len(queries) / exact_s
    # One exact query reads the whole database: time fewer of them.
    exact_single, counted = _single_qps(
        exact, queries, max(5, min(single_queries, 2_000_000 // n * 10))
    )
    rows.append(
        dict(
            collection=f"{n:,} x {d}",
            mode="exact",
            build_s=0.0,
            disk=4 * d + 8,
            rss=None,
            qps=exact_qps,
            qps1=exact_single,
            qps1_count=counted,
            recall=1.0,
            speedup=1.0,
            params="NumPy matmul + argpartition, 64 MiB score blocks",
        )
    )
    logging.info(
        "exact: %.1f QPS batched, %.1f single", exact_qps, exact_single
    )
    del exact
    for mode in modes:
        index = _make_index(mode, d)
        index.add(db)
        _, build_s = _timed(index.build)
        index.search(queries[:8], K)  # warm-up
        start = time.perf_counter()
        found, _ = index.search(queries, K)
        search_s = time.perf_counter() - start
        qps = len(queries) / search_s
        qps1, counted = _single_qps(index, queries, single_queries)
        recall = recall_at_k(found, truth)
        path = os.path.join(workdir, f"{n}x{d}_{mode}")
        index.save(path)
        params = index.built_params
        del index
        gc.collect()
        probe = _loaded_rss(path, queries[0])
        row = dict(
            collection=f"{n:,} x {d}",
            mode=mode,
            build_s=build_s,
            disk=_dir_bytes(path) / n,
            rss=probe["rss"] / n,
            rss_mb=probe["rss"] / 2**20,
            qps=qps,
            qps1=qps1,
            qps1_count=counted,
            recall=recall,
            speedup=qps / exact_qps,
            params=_describe(params),
        )
        shutil.rmtree(path)
        logging.info("%s", row)
        rows.append(row)
    return rows


def _describe(p):
    parts = []
    if p["num_leaves"]:
        parts.append(f"{p['num_leaves_to_search']}/{p['num_leaves']} leaves")
    else:
        parts.append("no tree")
    if p["scoring"] == "ah":
        parts.append(
            f"PQ {p['code_bytes_per_vector']} B ({p['dimensions_per_block']}"
            " dims/4-bit code)"
        )
    else:
        parts.append("brute force")
    if p["reorder_num_neighbors"]:
        parts.append(
            f"re-order {p['reorder_num_neighbors']} {p['reorder_dtype']}"
        )
    return ", ".join(parts)


def synthetic_table(rows, num_queries):
    header = [
        "collection",
        "index",
        "build s",
        "disk B/vec",
        "RAM B/vec (total)",
        f"QPS ({num_queries} batched)",
        "QPS (single)",
        "recall@10",
        "x exact QPS",
        "parameters",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r["collection"],
                r["mode"],
                f"{r['build_s']:.1f}" if r["mode"] != "exact" else "-",
                f"{r['disk']:.0f}",
                "-"
                if r["rss"] is None
                else f"{r['rss']:.0f} ({r['rss_mb']:.0f} MB)",
                f"{r['qps']:.0f}",
                f"{r['qps1']:.0f} (n={r['qps1_count']})",
                f"{r['recall']:.3f}",
                f"{r['speedup']:.1f}",
                r["params"],
            ]
        )
    return header, body


def check_target(rows):
    """The issue's target: fast mode, 1M x 512, recall >= 0.95, >= 10x."""
    for r in rows:
        if r["collection"] == "1,000,000 x 512" and r["mode"] == "fast":
            met = r["recall"] >= 0.95 and r["speedup"] >= 10
            return (
                f"**Target** (fast mode, 1M x 512: recall@10 >= 0.95 at >= "
                f"10x the batched QPS of the exact search): "
                f"{'MET' if met else 'NOT MET'} — recall@10 "
                f"{r['recall']:.3f}, {r['speedup']:.1f}x ({r['qps']:.0f} vs "
                f"{r['qps'] / r['speedup']:.0f} QPS)."
            )
    return "Target (1M x 512, fast) not measured in this run."


# ---------------------------------------------------------------------------
# COIL-100 (R-MAC descriptors).


def _coil_index(spec, d):
    """An index from a table label: "exact" or "compact NB[, options]"."""
    if spec == "exact":
        return ExactIndex(d)
    kwargs = {}
    head, *options = [part.strip() for part in spec.split(",")]
    kwargs["bytes_per_vector"] = int(head.split()[1].rstrip("B"))
    for option in options:
        if option in ("lut16", "lut256"):
            kwargs["hash_type"] = option
        elif option == "no projection":
            kwargs["projection_dim"] = 0
        elif option.startswith("PCA "):
            kwargs["projection_dim"] = int(option.split()[1])
        elif option.startswith("aniso "):
            kwargs["anisotropic_quantization_threshold"] = float(
                option.split()[1]
            )
        else:
            raise ValueError(f"Unknown COIL index option {option!r}")
    return ScannIndex(d, mode="compact", **kwargs)


def _ranks(index, vectors, queries, n, qe, qe_k, alpha):
    if qe:
        ids, _ = search_with_query_expansion(
            index, queries, n, qe_k, alpha, database=vectors
        )
    else:
        ids, _ = index.search(queries, n)
    return ids


def coil100_validation(db, queries, gnd, specs):
    """Plain-search mAP of each index spec vs exact on one split.

    Besides mAP, the fidelity to exact search: mean over queries of
    |AP - AP exact| and the overlap of the top 100 with the exact top 100
    (a setting that wins mAP by luck scores poorly on these).
    """
    n = len(db)
    exact_ids = _ranks(_coil_exact(db), db, queries, n, False, 0, 0)
    exact_map, exact_aps = compute_map(exact_ids.T, gnd)[:2]
    rows = [["exact", f"{exact_map:.4f}", "-", "-", "-", "-"]]
    for spec in specs:
        index = _coil_index(spec, db.shape[1])
        index.add(db)
        ids = _ranks(index, db, queries, n, False, 0, 0)
        mean_ap, aps = compute_map(ids.T, gnd)[:2]
        overlap = np.mean(
            [
                len(set(a[:100].tolist()) & set(b[:100].tolist())) / 100
                for a, b in zip(ids, exact_ids)
            ]
        )
        built = index.built_params
        rows.append(
            [
                spec,
                f"{mean_ap:.4f}",
                f"{mean_ap - exact_map:+.4f}",
                f"{np.mean(np.abs(aps - exact_aps)):.4f}",
                f"{overlap:.3f}",
                f"{built['code_bytes_per_vector']} B, {built['hash_type']}, "
                f"{built['dimensions_per_block']} dims/block, projection "
                f"{built['projection_dim'] or 'none'}",
            ]
        )
        logging.info("validation %s", rows[-1])
    header = [
        "index",
        "mAP",
        "- exact",
        "mean abs(AP - AP exact)",
        "top-100 overlap",
        "as built",
    ]
    return header, rows


def _coil_exact(db):
    index = ExactIndex(db.shape[1])
    index.add(db)
    return index


def coil100_map(db, queries, gnd, specs, qe_k=10, dba_k=10, alpha=3.0):
    """mAP of ExactIndex vs compact ScannIndex, with/without QE and DBA.

    Args:
        db: float32 `(N, D)` L2-normalised database descriptors.
        queries: float32 `(Q, D)` query descriptors.
        gnd: list of Q dicts with `"ok"` (and `"junk"`) database indices.
        specs: index labels (see `_coil_index`), e.g. "compact 64 B".
        qe_k: int. Neighbours of alpha-QE. Defaults to 10.
        dba_k: int. Neighbours of DBA. Defaults to 10.
        alpha: float. Exponent of alpha-QE and DBA weights. Defaults to 3.

    Returns:
        (header, rows, note) for a markdown table of mAP values.
    """
    n = len(db)
    db_dba = database_side_augmentation(db, k=dba_k, alpha=alpha)
    rows = []
    for spec in ["exact"] + list(specs):
        cells, plain = [spec], None
        for vectors in (db, db_dba):
            index = _coil_index(spec, db.shape[1])
            index.add(vectors)
            for qe in (False, True):
                ids = _ranks(index, vectors, queries, n, qe, qe_k, alpha)
                mean_ap = compute_map(ids.T, gnd)[0]
                cells.append(f"{mean_ap:.3f}")
            plain = plain or getattr(index, "built_params", None)
        if spec != "exact":
            built = plain
            cells.append(
                f"{built['code_bytes_per_vector']} B, {built['hash_type']}, "
                f"projection {built['projection_dim'] or 'none'}"
            )
        else:
            cells.append("float32, 4 x D B")
        rows.append(cells)
    header = ["index", "plain", "+ αQE", "DBA", "DBA + αQE", "stored per image"]
    note = (
        f"αQE: k={qe_k}, α={alpha}; DBA: k={dba_k}, α={alpha} (computed "
        "exactly on the float descriptors, then indexed); QE on a compact "
        "index reads the neighbours' float descriptors from the caller. "
        "mAP from keras_rmac.evaluation."
    )
    return header, rows, note


COIL_WEIGHTS = "mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"
_COIL_NAME = re.compile(r"^obj(\d+)__(\d+)\.png$")


def coil100_splits(data_dir):
    """The COIL-100 test split and a validation split laid out like it.

    Test: `keras_rmac.data.datasets.load_coil100` (objects 51-100, views
    at multiples of 15 degrees as database, the 0-degree view as query,
    itself junk). Validation: the same layout on the train objects 1-50.
    PCA images: the other train views (not multiples of 15 degrees), so
    a whitening learned on them never saw a validation or test image.

    Returns:
        `(splits, pca_paths)`; `splits` maps `"val"` and `"test"` to
        `(db_paths, query_db_indices, gnd)`.
    """
    from keras_rmac.data.datasets import load_coil100

    dataset = load_coil100(os.path.join(data_dir, "coil100"))
    views = []
    for path in dataset.train_paths:
        m = _COIL_NAME.match(os.path.basename(path))
        views.append((int(m.group(1)), int(m.group(2)), path))
    val = [v for v in views if v[1] % 15 == 0]
    pca_paths = [p for _, d, p in views if d % 15]
    queries = [i for i, (_, d, _) in enumerate(val) if d == 0]
    gnd = []
    for q in queries:
        same = [i for i, v in enumerate(val) if v[0] == val[q][0]]
        gnd.append(
            {
                "ok": np.array([i for i in same if i != q], np.int64),
                "junk": np.array([q], np.int64),
            }
        )
    splits = {
        "val": ([p for _, _, p in val], np.array(queries), gnd),
        "test": (
            list(dataset.db_paths),
            np.asarray(dataset.query_db_indices),
            dataset.gnd,
        ),
    }
    return splits, pca_paths


def coil100_descriptors(data_dir, cache, pca=False):
    """MobileNetV2 R-MAC (224 px) descriptors of the val and test splits.

    Args:
        data_dir: str. The shared data folder (coil100/, weights/).
        cache: str. An `.npz` file caching the descriptors, keyed by the
            model fingerprint and the image names ('' for no cache).
        pca: bool. R-MAC + shift/PCA-whitening learned with `adapt_pca`
            on the PCA images of `coil100_splits` (the paper's descriptor)
            instead of plain R-MAC.

    Returns:
        dict mapping `"val"` and `"test"` to `(db, queries, gnd)`.
    """
    from keras_rmac.models import RMACModel

    splits, pca_paths = coil100_splits(data_dir)
    weights = os.path.join(data_dir, "weights", COIL_WEIGHTS)
    model = RMACModel(backbone="mobilenet_v2", weights=weights)
    # The cache is valid for these images and this exact model only.
    names = [os.path.basename(p) for s in ("val", "test") for p in splits[s][0]]
    key = [model.fingerprint(), f"pca={pca}"] + names
    if pca:
        key += ["adapt:"] + [os.path.basename(p) for p in pca_paths]
    stored = None
    if cache and os.path.exists(cache):
        stored = np.load(cache, allow_pickle=False)
        if "key" not in stored.files or list(stored["key"]) != key:
            stored = None
    out = {}
    if stored is None and pca:
        logging.info("adapt_pca on %d train-split images", len(pca_paths))
        model.adapt_pca(pca_paths, max_size=224, verbose=0)
    arrays = {}
    for split, (paths, queries, gnd) in splits.items():
        if stored is not None:
            db = stored[split]
        else:
            logging.info("Extracting %d %s images", len(paths), split)
            db = model.extract(paths, max_size=224, verbose=0)
            db = np.ascontiguousarray(db, np.float32)
        arrays[split] = db
        out[split] = (db, db[queries], gnd)
    if cache and stored is None:
        np.savez(cache, key=np.array(key), **arrays)
    return out


# ---------------------------------------------------------------------------


# Candidates compared on the validation split (plain search, 64 B).
VALIDATION_SPECS = [
    "compact 64 B, lut16, no projection",
    "compact 64 B, lut256, no projection",
    "compact 64 B, lut16",
    "compact 64 B, lut256, PCA 128",
    "compact 64 B, lut256, PCA 256",
    "compact 64 B, lut256, PCA 256, aniso nan",
    "compact 64 B, lut256, PCA 512",
    "compact 64 B",
]
# Reported on the test split (defaults first).
TEST_SPECS = [
    "compact 64 B",
    "compact 128 B",
    "compact 64 B, lut16, no projection",
]


def run_coil(data_dir, cache, pca):
    """Validation table, then the test table, for one descriptor."""
    splits = coil100_descriptors(data_dir, cache, pca=pca)
    v_header, v_rows = coil100_validation(*splits["val"], VALIDATION_SPECS)
    t_header, t_rows, note = coil100_map(*splits["test"], TEST_SPECS)
    val_table = markdown_table(v_header, v_rows)
    test_table = markdown_table(t_header, t_rows)
    print(val_table)
    print(test_table)
    db, queries = splits["test"][:2]
    name = (
        "R-MAC + shift/PCA-whitening (adapt_pca on the 2379 train-split "
        "views that are not multiples of 15 degrees)"
        if pca
        else "R-MAC, no PCA"
    )
    return f"""### {name}

Validation (objects 1-50, {len(splits["val"][0])} database images, \
{len(splits["val"][1])} queries), plain search:

{val_table}

Test (objects 51-100, {len(db)} database images, {len(queries)} queries):

{test_table}

{note}
"""


def coil_section(command, elapsed, parts):
    """The `search_coil100` section of RESULTS.md."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    body = "\n".join(parts)
    return f"""## Compact search on COIL-100 (`benchmarks/search.py`)

Command: `{command}` — {os.cpu_count()} CPU cores, {elapsed / 60:.1f} min,
load average {load:.1f}. Descriptors: `RMACModel("mobilenet_v2")` with the
shared torchvision weights, 224 px, 1280-d (cached by model fingerprint).

Settings are chosen on a validation split laid out like the test protocol
on the train objects 1-50 (views at multiples of 15 degrees as database,
the 0-degree view as query, itself junk); the test split is then measured
once with the chosen defaults. `compact 64 B` is `ScannIndex(D,
mode="compact", bytes_per_vector=64)` with its defaults: a PCA of the
indexed descriptors to 4 dimensions per code byte (256 at 64 B, 512 at
128 B), a random rotation of that subspace, then 8-bit (256-centre) codes
of 4 dimensions, anisotropic threshold 0.2; the projection (one D x d'
matrix and a mean) is index-wide, the only per-image state is the code.
"lut16, no projection" is the previous default (4-bit codes of the raw
1280-d descriptors, 10 dims per code).

Why these defaults: on validation the raw-vector codes win mAP by luck
(+1.4 / +2.9 points over exact) while agreeing poorly with exact search
(mean abs AP difference 0.024-0.029, top-100 overlap 0.77-0.86); PCA 128-256
+ rotation + 8-bit codes stay within 0.002 of exact mAP with the closest
rankings. A first rule (keep 97% of the variance) picked 239 dims here but
789 on the whitened descriptors (flat spectrum) and lost 9 points on their
validation split, so the rule became 4 dims per byte; that run also
printed test figures, so the test split was seen twice. The whitened
variant's validation mAP is low (0.43) because its whitening was learned on
other views of the same 50 objects; its validation rows are a weak guide.

{body}"""


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    collections = FLAGS.collections
    num_queries, single = FLAGS.num_queries, FLAGS.single_queries
    if FLAGS.quick:
        collections = ["10000x512", "50000x512", "20000x2048"]
        num_queries, single = min(num_queries, 500), min(single, 50)
    command = " ".join(["python -m benchmarks.search"] + sys.argv[1:])
    if FLAGS.recall:
        run_recall(command)
        return
    if collections:
        run_synthetic(collections, num_queries, single, command)
    coil_dir = os.path.join(FLAGS.data_dir, "coil100")
    if FLAGS.coil and os.path.isdir(coil_dir):
        started = time.perf_counter()
        parts = [run_coil(FLAGS.data_dir, FLAGS.coil_cache, pca=False)]
        if FLAGS.coil_pca:
            cache = FLAGS.coil_cache
            if cache:
                cache = cache.replace(".npz", "") + "_pca.npz"
            parts.append(run_coil(FLAGS.data_dir, cache, pca=True))
        section = coil_section(command, time.perf_counter() - started, parts)
        if FLAGS.write_results:
            write_section(COIL_SECTION, section)
    else:
        logging.info("COIL-100 part not run (no data or --nocoil).")


def run_recall(command):
    """The recall-targeted rows (resumable); writes `search_recall`."""
    from benchmarks import search_recall

    specs = FLAGS.recall_rows or search_recall.ROWS
    for count in range(len(specs) + 1 if FLAGS.recall_run else 1):
        # The section is rewritten after every finished row.
        search_recall.run_rows(
            specs[:count],
            FLAGS.recall_dir,
            lambda: coil100_descriptors(FLAGS.data_dir, FLAGS.coil_cache),
        )
        rows = search_recall.finished(specs, FLAGS.recall_dir)
        text = search_recall.section(rows, specs, command, FLAGS.recall_dir)
        if FLAGS.write_results:
            write_section(search_recall.SECTION, text)
    print(text)


def run_synthetic(collections, num_queries, single, command):
    """The synthetic collections; writes the `search` section."""
    started = time.perf_counter()
    rows = []
    workdir = tempfile.mkdtemp(prefix="keras_rmac_bench_")
    try:
        for spec in collections:
            n, d = (int(v) for v in spec.lower().split("x"))
            rows += bench_collection(
                n, d, FLAGS.modes, num_queries, single, workdir
            )
            gc.collect()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    header, body = synthetic_table(rows, num_queries)
    table = markdown_table(header, body)
    target = check_target(rows)
    print(table)
    print(target)
    elapsed = time.perf_counter() - started
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    section = f"""## Search indexes (`benchmarks/search.py`)

Command: `{command}` — {os.cpu_count()} CPU cores, total {elapsed / 60:.1f}
min, load average {load:.1f} at the end (the machine is shared: absolute
times and QPS move with the load; compare ratios within the table).

Data: unit vectors around {FLAGS.centres:,} Gaussian cluster centres
(`L2norm(c + {FLAGS.noise} * e / sqrt(D))`, `c` a random unit centre, `e ~
N(0, I)`, seed {FLAGS.seed}; queries drawn the same way, not in the
database). Recall@10 is measured against `ExactIndex` on the same
{num_queries} queries. Disk: the saved index directory (ids included) per
vector. RAM: RSS increase of a fresh process loading the saved index and
running one query (fast mode's float descriptors are memory-mapped and not
touched by search, so not counted). QPS single: one query per call, over n
queries. COIL-100 mAP: section "Compact search on COIL-100".

{table}

{target}
"""
    if FLAGS.write_results:
        write_section(SECTION, section)
    logging.info("Synthetic part done in %.1f min", elapsed / 60)


if __name__ == "__main__":
    app.run(main)
