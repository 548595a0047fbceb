"""`keras-rmac serve` latency against one `keras-rmac search` call.

On COIL-100 photos indexed as `make demo` does (`keras-rmac index PHOTOS
--index DIR --max-size 224`: MobileNetV2 with the shared torchvision
weights), in one run on one machine:

1. `keras-rmac search --index DIR QUERY -k 10` as a subprocess, timed
   from start to exit (what a user waits for), `--search-calls` times;
2. the service (the same index, in this process, uvicorn on 127.0.0.1):
   one client uploading photos one after the other;
3. the bounded load of the test suite: 8 clients, `--queries` queries,
   half uploads and half "more like this" by id, while `keras-rmac index`
   adds `--added-objects` objects underneath (one new index version):
   every status, the versions that answered, p50 and p95.

Usage:

    python -m benchmarks.serve                      # writes RESULTS.md
    python -m benchmarks.serve --screenshot docs/serve.png

It replaces its section of `benchmarks/RESULTS.md`
(`<!-- serve:begin -->` ... `<!-- serve:end -->`). `--screenshot` also
saves the page, after an upload, as seen by headless Chromium.
"""

import argparse
import collections
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks.results import machine
from benchmarks.results import markdown_table
from benchmarks.results import write_section
from keras_rmac.serve import SearchEngine
from keras_rmac.serve import create_app
from tests.serve import server
from tests.serve.load import ask
from tests.serve.load import run_load

REPO = pathlib.Path(__file__).resolve().parents[1]

VIEWS = range(0, 360, 30)
"""Indexed views of each object (degrees); queries use the others."""


def _cli(*args, **kwargs):
    command = [sys.executable, "-m", "keras_rmac.cli.main", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(command, env=env, check=True, **kwargs)


def _copy_objects(coil, folder, objects):
    """Copies (the service serves no link leading out of the folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for obj in objects:
        for view in VIEWS:
            name = f"obj{obj}__{view}.png"
            if (coil / name).is_file():  # A few views are missing.
                shutil.copyfile(coil / name, folder / name)


def _percentiles(seconds):
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return p50, p95


def _search_calls(index_dir, query, calls):
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        _cli(
            "search",
            "--index",
            str(index_dir),
            str(query),
            "-k",
            "10",
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - started)
    return times


def _queries(coil, count, objects, ids, seed=0):
    rng = np.random.default_rng(seed)
    queries = []
    for n in range(count):
        k = 10
        if n % 2:
            queries.append(("id", int(rng.integers(0, ids)), k))
        else:
            path = None
            while path is None or not path.is_file():
                obj = int(rng.integers(1, objects + 1))
                view = int(rng.integers(0, 72)) * 5
                path = coil / f"obj{obj}__{view}.png"
            queries.append(("upload", path.read_bytes(), k))
    return queries


def _screenshot(base, query, out):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.serve import browser

    with browser.chromium() as driver:
        driver.set_window_size(1280, 860)
        driver.get(base + "/")
        driver.find_element(By.ID, "file").send_keys(str(query))
        WebDriverWait(driver, 120).until(
            lambda d: "results from" in d.find_element(By.ID, "status").text
        )
        time.sleep(1.0)  # The thumbnails.
        driver.save_screenshot(str(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--added-objects", type=int, default=5)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--search-calls", type=int, default=3)
    parser.add_argument("--single-uploads", type=int, default=30)
    parser.add_argument("--screenshot", default=None)
    run_in_work_dir(parser.parse_args(), "bench-serve-", run)


def run_in_work_dir(args, prefix, run):
    """`run(args, COIL-100 folder, work dir)` in a temporary work dir
    (removed after); the data from `$KERAS_RMAC_DATA` or `--data`."""
    coil = pathlib.Path(os.environ.get("KERAS_RMAC_DATA", args.data))
    coil = coil / "coil100"
    work = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    try:
        run(args, coil, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def index_objects(coil, work, objects, max_size=224):
    """`(photos dir, index dir, photo count)`: the views every 30 degrees
    of COIL-100 objects 1..`objects`, indexed by `keras-rmac index`."""
    photos, index_dir = work / "photos", work / "index"
    _copy_objects(coil, photos, range(1, objects + 1))
    count = len(os.listdir(photos))
    print(f"indexing {count} photos ...", flush=True)
    _cli(
        "index",
        str(photos),
        "--index",
        str(index_dir),
        "--max-size",
        str(max_size),
        "-q",
    )
    return photos, index_dir, count


def run(args, coil, work):
    started = time.time()
    photos, index_dir, count = index_objects(coil, work, args.objects)
    query = coil / "obj5__45.png"
    print("timing keras-rmac search ...", flush=True)
    search_times = _search_calls(index_dir, query, args.search_calls)

    engine = SearchEngine(index_dir, poll_interval=0.2)
    with server.running(create_app(engine)) as base:
        from tests.serve.load import httpx

        single = []
        with httpx.Client(base_url=base, timeout=120) as client:
            for n in range(args.single_uploads):
                view = 5 + 10 * n
                data = coil / f"obj{1 + n % args.objects}__{view}.png"
                if not data.is_file():
                    continue
                answer = ask(client, ("upload", data.read_bytes(), 10))
                assert answer.status == 200, answer.body
                single.append(answer.seconds)
        if args.screenshot:
            _screenshot(base, query, args.screenshot)

        queries = _queries(coil, args.queries, args.objects, count)
        added = range(args.objects + 1, args.objects + args.added_objects + 1)

        def update():
            _copy_objects(coil, photos, added)
            _cli("index", str(photos), "--index", str(index_dir), "-q")

        first = engine.version

        def before(n):
            # The last 40% wait for the new version: the switch happens
            # during the load, and both versions answer.
            if n >= len(queries) * 3 // 5:
                deadline = time.monotonic() + 600
                while engine.version == first and time.monotonic() < deadline:
                    time.sleep(0.05)

        updater = threading.Thread(target=update)
        updater.start()
        load_started = time.perf_counter()
        answers = run_load(base, queries, args.clients, before)
        load_seconds = time.perf_counter() - load_started
        updater.join()
    measured = dict(
        count=count,
        search_times=search_times,
        single=single,
        answers=answers,
        load_seconds=load_seconds,
    )
    report(args, measured, time.time() - started)


def report(args, measured, elapsed):
    count, answers = measured["count"], measured["answers"]
    search_times, single = measured["search_times"], measured["single"]
    load_seconds = measured["load_seconds"]
    statuses = [a.status for a in answers]
    versions = [a.body.get("version") for a in answers if a.body]
    search = statistics.median(search_times)
    single_p50, single_p95 = _percentiles(single)
    rows = [
        [
            "`keras-rmac search` (one call, subprocess)",
            f"{search * 1000:.0f}",
            f"{max(search_times) * 1000:.0f}",
            len(search_times),
        ],
        [
            "serve: upload, one client",
            f"{single_p50:.0f}",
            f"{single_p95:.0f}",
            len(single),
        ],
    ]
    for kind in ("upload", "id"):
        times = [a.seconds for a in answers if a.query[0] == kind]
        p50, p95 = _percentiles(times)
        rows.append(
            [
                f"serve under load: {kind}",
                f"{p50:.0f}",
                f"{p95:.0f}",
                len(times),
            ]
        )
    p50, p95 = _percentiles([a.seconds for a in answers])
    rows.append(
        ["serve under load: all", f"{p50:.0f}", f"{p95:.0f}", len(answers)]
    )
    failed = sum(s >= 500 for s in statuses)
    ratio = single_p50 / (search * 1000)
    title = "`keras-rmac serve` against `keras-rmac search`"
    body = f"""## {title} (`benchmarks/serve.py`)

`python -m benchmarks.serve` on {machine()}; {elapsed:.0f} s in all.
{count} COIL-100 photos ({args.objects} objects, views every 30 degrees)
indexed as `make demo` does (MobileNetV2, shared torchvision weights,
`--max-size 224`). Under load: {args.clients} clients on 127.0.0.1,
{len(answers)} queries (half uploads of unindexed views, half "more like
this" by id, k=10) in {load_seconds:.1f} s (the last 40% sent once the
new version was served), while `keras-rmac index` added
{args.added_objects} objects underneath. Statuses:
{dict(sorted(collections.Counter(statuses).items()))}; {failed} 5xx;
answers by index version: {dict(sorted(collections.Counter(versions).items()))}.

{markdown_table(["what", "p50 ms", "p95 ms (max for search)", "n"], rows)}

A search by uploaded photo (one client, p50) takes {ratio:.1%} of one
`keras-rmac search` call on the same machine, in the same run
(target: under 10%).
"""
    print(body)
    write_section("serve", body)


if __name__ == "__main__":
    main()
