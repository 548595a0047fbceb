"""`keras-rmac index` and `keras-rmac search` end to end, on a tiny model."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from keras_rmac import indexing
from keras_rmac.indexing import layout
from keras_rmac.models.rmac_model import RMACModel
from tests.cli import photos
from tests.cli.photos import cli
from tests.indexing import interrupt


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    """A tiny RMACModel saved as .keras, passed with --model."""
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    photos.tiny_model(seed=0).save(path)
    return str(path)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_keras):
    """A folder of good and bad files, indexed once (exact mode)."""
    root = tmp_path_factory.mktemp("mixed")
    good, bad = photos.make_mixed_folder(root / "photos")
    index_dir = root / "index"
    code = cli(
        [
            "index",
            str(root / "photos"),
            "--index",
            str(index_dir),
            "--model",
            tiny_keras,
            "--max-size",
            "64",
            "--mode",
            "exact",
            "-q",
        ]
    )
    assert code == 0
    return root / "photos", index_dir, good, bad


def _index_args(photos_dir, index_dir, model, *extra):
    return [
        "index",
        str(photos_dir),
        "--index",
        str(index_dir),
        "--model",
        model,
        "--max-size",
        "64",
        "--mode",
        "exact",
        "-q",
        *extra,
    ]


def _report(index_dir):
    with open(os.path.join(index_dir, "report.json")) as f:
        return json.load(f)


def test_bad_files_skipped_and_listed(mixed):
    photos_dir, index_dir, good, bad = mixed
    report = _report(index_dir)
    reasons = {item["path"]: item["reason"] for item in report["failed"]}
    assert set(reasons) == set(bad)
    for name, expected in bad.items():
        assert expected in reasons[name], (name, reasons[name])
    assert report["indexed"] == len(good)
    assert report["extracted"] == len(good)
    assert report["listed"] == len(good) + len(bad)

    index = indexing.PhotoIndex(index_dir)
    assert sorted(index.paths) == good
    # Every readable photo finds itself first, whatever its format.
    for name in good:
        hits = index.search(photos_dir / name, k=3)
        assert hits[0].path == str(photos_dir / name)
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_exif_photo_indexed_upright(mixed):
    photos_dir, index_dir, _, _ = mixed
    index = indexing.PhotoIndex(index_dir)
    i = index.paths.index("deep/er/exif.jpg")
    stored = index.stored_descriptors(np.array([i]))[0]
    path = photos_dir / "deep/er/exif.jpg"
    with Image.open(path) as im:  # The pixels as stored, EXIF ignored.
        as_stored = np.asarray(im.convert("RGB"))
    upright = np.ascontiguousarray(np.rot90(as_stored, -1))  # Tag 6.
    assert upright.shape == (48, 64, 3)
    model = index.model
    expected = model.extract([upright], max_size=64, verbose=0)[0]
    sideways = model.extract([as_stored], max_size=64, verbose=0)[0]
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    # Guard: the orientation matters for this model.
    assert np.abs(stored - sideways).max() > 100 * 1e-5


def test_incremental_run_describes_only_new_or_changed(
    tmp_path, tiny_keras, monkeypatch
):
    root = tmp_path / "photos"
    for i in range(6):
        photos.save(root / f"p{i}.png", photos.photo(i))
    index_dir = tmp_path / "index"
    assert cli(_index_args(root, index_dir, tiny_keras)) == 0
    assert _report(index_dir)["extracted"] == 6

    described = []
    original = RMACModel.extract

    def counting_extract(self, images, *args, **kwargs):
        described.extend(np.asarray(im).shape for im in images)
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(RMACModel, "extract", counting_extract)
    photos.save(root / "new" / "q0.png", photos.photo(100))  # new
    photos.save(root / "p1.png", photos.photo(101, width=60))  # changed
    os.remove(root / "p2.png")  # removed
    assert cli(_index_args(root, index_dir, tiny_keras)) == 0
    report = _report(index_dir)
    assert len(described) == 2
    assert report["extracted"] == 2
    assert report["reused"] == 4
    assert report["removed"] == 1
    assert report["indexed"] == 6

    index = indexing.PhotoIndex(index_dir)
    assert sorted(index.paths) == sorted(
        ["p0.png", "p1.png", "p3.png", "p4.png", "p5.png", "new/q0.png"]
    )
    hits = index.search(root / "p1.png", k=1)  # The new content of p1.
    assert hits[0].path == str(root / "p1.png")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)

    # Nothing changed: nothing described, nothing rebuilt.
    described.clear()
    assert cli(_index_args(root, index_dir, tiny_keras)) == 0
    assert described == []
    report = _report(index_dir)
    assert (report["extracted"], report["rebuilt"]) == (0, False)


def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path, tiny_keras):
    root = tmp_path / "photos"
    for i in range(10):
        photos.save(root / f"p{i:02d}.png", photos.photo(i))
    (root / "p03.png").write_bytes(b"")  # A bad file in the first shard.
    crashed = tmp_path / "crashed"
    args = _index_args(root, crashed, tiny_keras, "--shard-size", "3")
    interrupt.kill_at("commit:2", args, tmp_path)  # kill -9 after shard 2
    shards = sorted(os.listdir(crashed / ".work" / "shards"))
    assert shards == ["000001.json", "000001.npy", "000002.json", "000002.npy"]
    assert indexing.current_generation(crashed) is None

    assert cli(args) == 0  # Restart: finishes the job.
    report = _report(crashed)
    # The first 6 files (5 readable) were committed before the kill.
    assert report["extracted"] == 4
    assert report["reused"] == 6
    assert [f["path"] for f in report["failed"]] == ["p03.png"]

    clean = tmp_path / "clean"
    assert cli(_index_args(root, clean, tiny_keras, "--shard-size", "3")) == 0
    a, b = indexing.PhotoIndex(crashed), indexing.PhotoIndex(clean)
    assert a.paths == b.paths and len(a) == 9
    ids = np.arange(len(a))
    np.testing.assert_allclose(
        a.stored_descriptors(ids), b.stored_descriptors(ids), atol=1e-6
    )
    for name in ("p00.png", "p07.png"):
        hits_a = a.search(root / name, k=9)
        hits_b = b.search(root / name, k=9)
        assert [h.path for h in hits_a] == [h.path for h in hits_b]
        np.testing.assert_allclose(
            [h.score for h in hits_a], [h.score for h in hits_b], atol=1e-5
        )


def test_other_model_refused_unless_rebuild(mixed, tmp_path, caplog):
    photos_dir, index_dir, _, _ = mixed
    other = tmp_path / "other.keras"
    photos.tiny_model(seed=1).save(other)
    work = tmp_path / "index"
    # A copy of the index, so the module fixture stays intact.
    shutil.copytree(index_dir, work)
    code = cli(_index_args(photos_dir, work, str(other)))
    assert code == 1
    assert "built with another model" in caplog.text
    before = indexing.PhotoIndex(work).fingerprint
    assert cli(_index_args(photos_dir, work, str(other), "--rebuild")) == 0
    after = indexing.PhotoIndex(work)
    assert after.fingerprint != before
    assert after.fingerprint == indexing.load_rmac_model(other).fingerprint()


def test_search_prints_table_sheet_and_html(mixed, tmp_path, capsys):
    photos_dir, index_dir, good, _ = mixed
    query = photos_dir / "good1.png"
    # Output folders that do not exist yet are created.
    sheet = tmp_path / "new" / "sheet.png"
    page = tmp_path / "other" / "page.html"
    capsys.readouterr()
    code = cli(
        [
            "search",
            "--index",
            str(index_dir),
            str(query),
            "-k",
            "4",
            "--sheet",
            str(sheet),
            "--html",
            str(page),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "score", "path"]
    rows = [line.split(None, 2) for line in out[1:5]]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert rows[0][2] == str(query)
    assert all(os.path.relpath(r[2], photos_dir) in good for r in rows)

    with Image.open(sheet) as im:
        im.verify()
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width >= 2 * 160
    text = page.read_text()
    assert text.count('src="data:image/jpeg;base64,') == 5  # query + 4
    assert 'src="http' not in text and 'src="/' not in text


def test_search_json_and_query_expansion(mixed, capsys):
    photos_dir, index_dir, good, _ = mixed
    query = str(photos_dir / "good3.png")
    capsys.readouterr()
    assert cli(["search", "--index", str(index_dir), query, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert len(plain) == min(10, len(good))
    assert plain[0]["path"] == query

    qe = cli(
        ["search", "--index", str(index_dir), query, "--json", "--qe", "2"]
    )
    assert qe == 0
    expanded = json.loads(capsys.readouterr().out)
    # Oracle: the query plus its two best matches, summed and normalised,
    # ranked by inner product with every stored descriptor.
    index = indexing.PhotoIndex(index_dir)
    db = index.stored_descriptors(np.arange(len(index)))
    q = index.extract(query)
    top2 = np.argsort(-(db @ q), kind="stable")[:2]
    expected_query = q + db[top2].sum(axis=0)
    expected_query /= np.linalg.norm(expected_query)
    scores = db @ expected_query
    order = np.argsort(-scores, kind="stable")[: len(expanded)]
    assert [e["path"] for e in expanded] == [index.path(i) for i in order]
    np.testing.assert_allclose(
        [e["score"] for e in expanded], scores[order], atol=1e-5
    )


def test_search_errors(mixed, tmp_path, capsys):
    photos_dir, index_dir, _, _ = mixed
    bad_query = photos_dir / "notes.jpg"
    assert cli(["search", "--index", str(index_dir), str(bad_query)]) == 1
    assert cli(["search", "--index", str(tmp_path), str(bad_query)]) == 1


@pytest.mark.slow
def test_coil100_same_object_on_top(coil_dir, weights_dir, tmp_path, capsys):
    objects = (5, 42, 77)
    root = tmp_path / "coil"
    root.mkdir()
    for obj in objects:
        for deg in range(0, 360, 15):
            src = coil_dir / f"obj{obj}__{deg}.png"
            os.symlink(src, root / src.name)
    weights = weights_dir / (
        "mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"
    )
    index_dir = tmp_path / "index"
    code = cli(
        [
            "index",
            str(root),
            "--index",
            str(index_dir),
            "--backbone",
            "mobilenet_v2",
            "--weights",
            str(weights),
            "--max-size",
            "224",
            "-q",
        ]
    )
    assert code == 0
    report = _report(index_dir)
    assert report["indexed"] == 72 and report["failed"] == []
    capsys.readouterr()
    query = coil_dir / "obj42__5.png"  # A view that is not indexed.
    args = ["search", "--index", str(index_dir), str(query), "--json"]
    assert cli(args) == 0
    hits = json.loads(capsys.readouterr().out)
    top = [os.path.basename(h["path"]).split("__")[0] for h in hits[:8]]
    assert top == ["obj42"] * 8, top


@pytest.mark.parametrize(
    "extra, params",
    [
        (["--mode", "fast"], {"mode": "fast"}),
        (
            ["--mode", "compact", "--bytes-per-vector", "128"],
            {"mode": "compact", "bytes_per_vector": 128},
        ),
    ],
)
def test_operating_points(tmp_path, tiny_keras, extra, params, capsys):
    root = tmp_path / "photos"
    for i in range(20):
        photos.save(root / f"p{i:02d}.png", photos.photo(i))
    index_dir = tmp_path / "index"
    args = _index_args(root, index_dir, tiny_keras)
    args[args.index("exact")] = extra[1]
    capsys.readouterr()
    assert cli(args + extra[2:]) == 0
    # The measured operating point, in one line (issue 11).
    search_lines = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("Search: ")
    ]
    assert len(search_lines) == 1 and "recall@" in search_lines[0], search_lines
    version = layout.current_version(index_dir)
    with open(os.path.join(version.searchable, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["index_type"] == "scann"
    for key, value in params.items():
        assert manifest["params"][key] == value
    index = indexing.PhotoIndex(index_dir)
    for name in ("p00.png", "p05.png", "p19.png"):
        hits = index.search(root / name, k=3)
        assert hits[0].path == str(root / name)
    # Query expansion: floats from the index (fast) or the store (compact).
    hits = index.search(root / "p05.png", k=3, qe=2)
    assert len(hits) == 3


def test_compact_without_descriptors_refuses_qe(tmp_path, tiny_keras, caplog):
    root = tmp_path / "photos"
    for i in range(20):
        photos.save(root / f"p{i:02d}.png", photos.photo(i))
    index_dir = tmp_path / "index"
    args = _index_args(root, index_dir, tiny_keras, "--no-keep-descriptors")
    args[args.index("exact")] = "compact"
    assert cli(args) == 0
    query = str(root / "p01.png")
    assert cli(["search", "--index", str(index_dir), query]) == 0
    assert cli(["search", "--index", str(index_dir), query, "--qe", "2"]) == 1
    assert "keeps no float descriptors" in caplog.text
