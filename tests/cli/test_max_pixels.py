"""`--max-pixels` of `keras-rmac index` and `keras-rmac search`."""

import json

import pytest
from PIL import Image

from tests.cli import photos
from tests.cli.photos import cli


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    photos.tiny_model(seed=0).save(path)
    return str(path)


def _index(photos_dir, index_dir, model, max_pixels):
    return cli(
        [
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
            "--max-pixels",
            str(max_pixels),
        ]
    )


def _search(index_dir, query, max_pixels):
    return cli(
        [
            "search",
            "--index",
            str(index_dir),
            str(query),
            "-k",
            "1",
            "--json",
            "--max-pixels",
            str(max_pixels),
        ]
    )


def test_index_and_search_take_max_pixels(tmp_path, tiny_keras, capsys, caplog):
    root = tmp_path / "photos"
    big = photos.save(root / "big.png", photos.photo(0, 200, 150))  # 30,000
    photos.save(root / "small.png", photos.photo(1))
    index_dir = tmp_path / "index"
    assert _index(root, index_dir, tiny_keras, 20_000) == 0
    report = json.loads((index_dir / "report.json").read_text())
    assert [f["path"] for f in report["failed"]] == ["big.png"]
    assert "max_pixels=20,000" in report["failed"][0]["reason"]
    # Raised: the file refused before is indexed.
    assert _index(root, index_dir, tiny_keras, 40_000) == 0
    report = json.loads((index_dir / "report.json").read_text())
    assert (report["indexed"], report["failed"]) == (2, [])
    settings = json.loads((index_dir / "index.json").read_text())
    assert settings["max_pixels"] == 40_000
    assert settings["draft_above"] == 100_000_000
    capsys.readouterr()
    assert _search(index_dir, big, 20_000) == 1
    assert "Cannot read the query image" in caplog.text
    assert "max_pixels=20,000" in caplog.text
    assert _search(index_dir, big, 40_000) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["path"] == str(big)


def test_max_pixels_above_pillows_limit_raises_it(
    tmp_path, tiny_keras, monkeypatch, capsys
):
    """Pillow refuses images over 2 x MAX_IMAGE_PIXELS whatever our limit;
    a larger --max-pixels raises Pillow's limit with it."""
    root = tmp_path / "photos"
    big = photos.save(root / "big.png", photos.photo(0, 200, 150))  # 30,000
    photos.save(root / "small.png", photos.photo(1))
    index_dir = tmp_path / "index"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Refused: 20,000
    assert _index(root, index_dir, tiny_keras, 40_000) == 0
    assert Image.MAX_IMAGE_PIXELS == 20_000
    report = json.loads((index_dir / "report.json").read_text())
    assert (report["indexed"], report["failed"]) == (2, [])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    capsys.readouterr()
    assert _search(index_dir, big, 40_001) == 0
    assert Image.MAX_IMAGE_PIXELS == 20_001
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(big)
    # Not lowered when --max-pixels is within Pillow's limit.
    assert _search(index_dir, big, 40_000) == 0
    assert Image.MAX_IMAGE_PIXELS == 20_001


def test_help_explains_the_limit(capsys):
    for command in ("index", "search"):
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--max-pixels N" in text
        assert "decoded at reduced scale" in text
        assert "(default: 100,000,000)" in text
    with pytest.raises(SystemExit):
        cli(["search", "--help"])
    assert "the query image may be decoded" in " ".join(
        capsys.readouterr().out.split()
    )
