"""keras_rmac.beam on DirectRunner: 2 workers in multi-processing mode.

Descriptors against single-process `extract` and the folder indexer,
dead letters against the folder indexer's bad-file report, complete
shards skipped, `kill -9` midway then a re-run, and `keras-rmac index
--runner` read by `keras-rmac search` and `PhotoIndex`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from keras_rmac import indexing  # noqa: E402
from keras_rmac.beam import DEAD_LETTER_FILE  # noqa: E402
from keras_rmac.beam import plan_shards  # noqa: E402
from keras_rmac.beam import run_extraction  # noqa: E402
from keras_rmac.beam import shards  # noqa: E402
from keras_rmac.cli.main import main  # noqa: E402
from keras_rmac.search import ExactIndex  # noqa: E402
from keras_rmac.search import ShardedIndex  # noqa: E402
from tests.cli import photos  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TWO_WORKERS = [
    "--direct_num_workers=2",
    "--direct_running_mode=multi_processing",
]
OPTIONS = {
    "max_size": 64,
    "scales": [1.0, 0.5],
    "batch_size": 3,
    "num_workers": 2,
    "max_pixels": 10**8,
    "draft_above": 10**8,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny RMACModel and its .keras file."""
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model = photos.tiny_model(seed=0)
    model.save(path)
    return model, str(path)


def _bad_files(root):
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("shopping list: milk, eggs\n" * 20)
    photos.save(root / "dot.png", np.full((1, 1, 3), 128, np.uint8))
    return {"empty.png", "notes.jpg", "dot.png"}


def _entries(root):
    rels = sorted(
        os.path.relpath(p, root) for p in indexing_list(root)
    )  # The folder indexer's order.
    out = []
    for rel in rels:
        st = os.stat(os.path.join(root, rel))
        out.append((rel, st.st_size, st.st_mtime_ns, None))
    return out


def indexing_list(root):
    from keras_rmac.data import image_io

    return image_io.list_images(str(root))


@pytest.mark.slow
def test_two_workers_equal_extract_and_the_folder_indexer(
    tmp_path, tiny, coil_dir
):
    model, model_path = tiny
    root = tmp_path / "photos"
    root.mkdir()
    for name in sorted(os.listdir(coil_dir))[::300][:14]:
        shutil.copy(coil_dir / name, root / name)
    bad = _bad_files(root)
    entries = _entries(root)
    settings = {k: v for k, v in OPTIONS.items() if k != "num_workers"}
    specs = plan_shards(entries, 4, {"fingerprint": "f", **settings})
    out = tmp_path / "out"
    # Shard 1 complete from "an earlier run": it must be kept as it is.
    kept = specs[1]
    marker = np.zeros((len(kept.entries), 16), np.float32)
    marker[:, 0] = 1.0
    shards.write_shard(
        str(out),
        kept,
        [{"path": e[0], "size": e[1], "mtime_ns": e[2]} for e in kept.entries],
        marker,
    )
    options = {**OPTIONS, "dimension": 16}
    dead = run_extraction(
        specs,
        model_path=model_path,
        photos_dir=str(root),
        out_dir=str(out),
        options=options,
        pipeline_args=TWO_WORKERS,
    )
    assert os.path.basename(dead) == DEAD_LETTER_FILE
    rows, paths = [], []
    for spec in specs:
        records, x = shards.read_shard(str(out), spec, 16)
        assert [r["path"] for r in records] == [e[0] for e in spec.entries]
        if spec is kept:
            np.testing.assert_array_equal(x, marker)  # Not redone.
            continue
        rows.append(x)
        paths += [r["path"] for r in records if "error" not in r]
    beam_x = np.concatenate(rows)
    want = model.extract(
        [str(root / p) for p in paths],
        max_size=64,
        scales=(1.0, 0.5),
        verbose=0,
    )
    np.testing.assert_allclose(beam_x, want, atol=1e-5)
    with open(dead) as f:
        letters = {d["path"]: d["reason"] for d in map(json.loads, f)}
    assert set(letters) == bad
    # The folder indexer, in this process, with the same settings.
    report = indexing.index_folder(
        root,
        tmp_path / "index",
        model=model,
        mode="exact",
        shard_size=4,
        verbose=0,
        **{k: v for k, v in OPTIONS.items() if k != "num_workers"},
    )
    assert {f["path"]: f["reason"] for f in report.failed} == letters
    folder = indexing.PhotoIndex(tmp_path / "index")
    by_path = dict(zip(folder.paths, range(len(folder))))
    np.testing.assert_allclose(
        beam_x,
        folder.stored_descriptors([by_path[p] for p in paths]),
        atol=1e-5,
    )


def _cli_index(photos_dir, index_dir, model_path, *extra):
    return [
        "index",
        str(photos_dir),
        "--index",
        str(index_dir),
        "--model",
        model_path,
        "--max-size",
        "64",
        "--mode",
        "exact",
        "--shard-size",
        "3",
        "-q",
        *extra,
    ]


def _report(index_dir):
    with open(os.path.join(index_dir, indexing.REPORT_FILE)) as f:
        return json.load(f)


def test_cli_runner_writes_an_index_search_reads_and_updates_it(
    tmp_path, tiny, capsys
):
    model, model_path = tiny
    root = tmp_path / "photos"
    for i in range(9):
        photos.save(root / f"p{i}.png", photos.photo(i))
    bad = _bad_files(root)
    index_dir = tmp_path / "index"
    args = _cli_index(root, index_dir, model_path, "--index-shards", "3")
    with pytest.raises(SystemExit) as exit_:  # Beam's option, no --runner.
        main([*args, "--direct_num_workers=2"])
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert main([*args, "--runner", "DirectRunner", *TWO_WORKERS]) == 0
    report = _report(index_dir)
    assert report["indexed"] == 9 and report["extracted"] == 9
    assert {f["path"] for f in report["failed"]} == bad
    index = indexing.PhotoIndex(index_dir)
    assert isinstance(index.index, ShardedIndex)
    assert len(index.index.shards) == 3
    # The sharded exact index answers as one ExactIndex over its rows.
    x = index.stored_descriptors(np.arange(len(index)))
    exact = ExactIndex(16)
    exact.add(x)
    queries = model.extract(
        [str(root / "p4.png"), str(root / "p7.png")], max_size=64, verbose=0
    )
    np.testing.assert_array_equal(
        index.index.search(queries, 12)[0], exact.search(queries, 12)[0]
    )
    capsys.readouterr()
    assert main(["search", "--index", str(index_dir), str(root / "p4.png"),
                 "-k", "3", "--json"]) == 0  # fmt: skip
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 3
    assert results[0]["path"] == str(root / "p4.png")

    # Added, changed and removed photos: only those are redone.
    photos.save(root / "p9.png", photos.photo(9))
    photos.save(root / "p2.png", photos.photo(22))
    (root / "p5.png").unlink()
    assert main([*args, "--runner", "DirectRunner"]) == 0
    report = _report(index_dir)
    assert report["extracted"] == 2 and report["removed"] == 1
    assert report["reused"] == 7 + len(bad)
    index = indexing.PhotoIndex(index_dir)
    assert sorted(index.paths) == sorted(
        f"p{i}.png" for i in (0, 1, 2, 3, 4, 6, 7, 8, 9)
    )
    got = index.stored_descriptors([index.paths.index("p2.png")])
    want = model.extract([str(root / "p2.png")], max_size=64, verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_kill_9_midway_then_rerun_has_no_missing_or_duplicate_rows(
    tmp_path, tiny
):
    model, model_path = tiny
    root = tmp_path / "photos"
    for i in range(24):
        photos.save(root / f"p{i:02d}.png", photos.photo(i, 640, 480))
    _bad_files(root)
    index_dir = tmp_path / "index"
    args = _cli_index(root, index_dir, model_path, "--max-size", "320")
    args[args.index("--shard-size") + 1] = "1"
    beam_dir = index_dir / ".work" / "beam"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_rmac.cli.main", *args]
        + ["--runner", "DirectRunner", *TWO_WORKERS],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    done = []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if beam_dir.is_dir():
                done = [n for n in os.listdir(beam_dir) if n[0].isdigit()]
                if any(n.endswith(".json") for n in done):
                    break
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # The driver and its workers.
        process.wait()
    complete = [n for n in done if n.endswith(".json")]
    assert complete, "the pipeline wrote no shard before the deadline"
    assert len(complete) < 27, "killed too late: every shard was written"
    assert indexing.current_generation(index_dir) is None

    # Run again (in this process: the shards left by the workers count).
    assert main([*args, "--runner", "DirectRunner"]) == 0
    crashed = indexing.PhotoIndex(index_dir)
    assert len(crashed) == 24 and len(set(crashed.paths)) == 24
    clean_dir = tmp_path / "clean"
    indexing.index_folder(
        root, clean_dir, model=model, max_size=320, mode="exact", verbose=0
    )
    clean = indexing.PhotoIndex(clean_dir)
    assert sorted(crashed.paths) == sorted(clean.paths)
    order = [clean.paths.index(p) for p in crashed.paths]
    np.testing.assert_allclose(
        crashed.stored_descriptors(np.arange(24)),
        clean.stored_descriptors(order),
        atol=1e-5,
    )
    assert _report(index_dir)["indexed"] == 24


def _local_and_remote(tmp_path, model, monkeypatch, count, mode, shards):
    """`{"local": PhotoIndex, "remote": PhotoIndex}` of `count` photos,
    indexed by `index_folder_on_beam` as a local runner builds and as a
    remote runner's second pipeline builds (run on the DirectRunner);
    neither leaves its build folder behind."""
    from keras_rmac.beam import folder
    from keras_rmac.beam import index_folder_on_beam

    root = tmp_path / "photos"
    for i in range(count):
        photos.save(root / f"p{i}.png", photos.photo(i))
    built = {}
    for name, remote in (("local", False), ("remote", True)):
        monkeypatch.setattr(
            folder, "is_local_runner", lambda r, v=remote: not v
        )
        index_folder_on_beam(
            root, tmp_path / name, model=model, max_size=64, mode=mode,
            index_shards=shards, verbose=0,
        )  # fmt: skip
        built[name] = indexing.PhotoIndex(tmp_path / name)
        assert not (tmp_path / name / ".work" / folder.BUILD_DIR).exists()
    return built


def test_remote_build_pipeline_equals_the_local_build(
    tmp_path, tiny, monkeypatch
):
    """A remote runner's build step (`BuildIndexShards` in a second
    pipeline, here run on the in-process DirectRunner) gives the index a
    local runner builds in this process."""
    from keras_rmac.beam import folder

    is_local = folder.is_local_runner
    built = _local_and_remote(tmp_path, tiny[0], monkeypatch, 7, "exact", 3)
    local, remote = built["local"], built["remote"]
    assert local.paths == remote.paths
    assert [len(s) for s in remote.index.shards] == [2, 2, 3]
    x = local.stored_descriptors(np.arange(len(local)))
    np.testing.assert_array_equal(
        remote.index.search(x, 5)[0], local.index.search(x, 5)[0]
    )
    assert is_local("DirectRunner") and is_local("PrismRunner")
    assert not is_local("DataflowRunner") and not is_local("FlinkRunner")


def test_remote_fast_parts_are_tuned_once_merged(tmp_path, tiny, monkeypatch):
    """ScaNN parts built by a remote runner's workers measure no recall of
    their own: only the merged index is tuned, to the job's target, as
    the local build tunes its shards."""
    from keras_rmac.search import scann_policy

    built = _local_and_remote(tmp_path, tiny[0], monkeypatch, 9, "fast", 2)
    # Both as saved and opened again (PhotoIndex reads the folder).
    local, remote = built["local"].index, built["remote"].index
    for index in (local, remote):
        assert index.target_recall == scann_policy.DEFAULT_TARGET_RECALL
        assert index.operating_point is not None
        for shard in index.shards:
            assert shard.target_recall is None
            assert shard.operating_point is None
    assert remote.operating_point.reached == local.operating_point.reached
    x = built["local"].stored_descriptors(np.arange(9))
    np.testing.assert_array_equal(remote.search(x, 5)[0], local.search(x, 5)[0])
