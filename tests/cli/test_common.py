"""Shared CLI helpers: model options, default weights, --pca-dim."""

import argparse
import json
import os

import numpy as np
import pytest

from keras_rmac import indexing
from keras_rmac.cli import _common
from keras_rmac.models import rmac_model
from tests.cli import photos
from tests.cli.photos import cli

V2 = _common.SHARED_WEIGHTS["mobilenet_v2"]


def _parse(*argv):
    parser = argparse.ArgumentParser()
    _common.add_model_arguments(parser)
    return parser.parse_args(list(argv))


def test_default_weights_search_order(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    (env_dir / "weights").mkdir(parents=True)
    (env_dir / "weights" / V2).write_bytes(b"x")
    cwd = tmp_path / "project" / "repo"
    cwd.mkdir(parents=True)
    sibling = tmp_path / "project" / "shared" / "data" / "weights"
    sibling.mkdir(parents=True)
    (sibling / V2).write_bytes(b"y")
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(_common, "_REPO_ROOT", tmp_path / "nowhere")

    monkeypatch.setenv("KERAS_RMAC_DATA", str(env_dir))
    assert _common.default_weights("mobilenet_v2") == str(
        (env_dir / "weights" / V2).resolve()
    )
    monkeypatch.delenv("KERAS_RMAC_DATA")
    assert _common.default_weights("mobilenet_v2") == str(
        (sibling / V2).resolve()
    )
    os.remove(sibling / V2)
    assert _common.default_weights("mobilenet_v2") == "imagenet"
    assert _common.default_weights("resnet50") == "imagenet"


def test_parse_scales():
    assert _common.parse_scales("1,0.707 0.5") == (1.0, 0.707, 0.5)
    for bad in ("", "1,x", "1,-1", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            _common.parse_scales(bad)
    with pytest.raises(SystemExit):
        _parse("--max-size", "0")


def test_model_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_RMAC_DATA", str(tmp_path / "none"))
    monkeypatch.setattr(_common, "_REPO_ROOT", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    default = _common.model_spec(_parse())
    assert default == {
        "model": None,
        "backbone": "mobilenet_v2",
        "weights": "imagenet",
        "pooling": "rmac",
        "pca_dim": None,
    }
    # Nothing given: an existing index's spec is kept.
    recorded = dict(default, backbone="vgg16", pca_dim=64)
    assert _common.model_spec(_parse(), recorded) == recorded
    # Anything given: a new spec from the options and the defaults.
    spec = _common.model_spec(_parse("--pooling", "gem"), recorded)
    assert spec == dict(default, pooling="gem")
    spec = _common.model_spec(_parse("--weights", "none"))
    assert spec["weights"] is None
    spec = _common.model_spec(_parse("--weights", "w.h5"))
    assert spec["weights"] == str(tmp_path / "w.h5")
    spec = _common.model_spec(_parse("--model", "m.keras"))
    assert spec == {
        "model": str(tmp_path / "m.keras"),
        "backbone": None,
        "weights": None,
        "pooling": None,
        "pca_dim": None,
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "m.keras", "--pooling", "mac"],
        ["--pooling", "mac", "--model", "m.keras"],
        ["--weights", "none", "--model", "m.keras"],
        ["--model", "m.keras", "--pca-dim", "8"],
        ["--model", "m.keras", "--backbone", "vgg16"],
    ],
)
def test_model_excludes_network_options(argv, capsys):
    # A --model file fixes its network: other network options are an error
    # (they used to be ignored without a word).
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2
    assert "cannot be combined with" in capsys.readouterr().err


def test_network_choices(capsys):
    from keras_rmac.backbones import BACKBONES

    # The light lists name exactly what the registries build, sorted.
    assert _common.BACKBONE_CHOICES == tuple(sorted(BACKBONES))
    assert _common.POOLING_CHOICES == tuple(sorted(rmac_model.POOLINGS))
    assert _parse("--backbone", "vgg16").backbone == "vgg16"
    with pytest.raises(SystemExit):
        _parse("--backbone", "vgg17")
    assert "invalid choice: 'vgg17'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("--pooling", "max")


def test_image_settings():
    assert _common.image_settings(_parse()) == (512, (1.0,))
    args = _parse("--max-size", "64", "--scales", "1,0.5")
    assert _common.image_settings(args) == (64, (1.0, 0.5))


def test_weights_file_checked_before_building(tmp_path):
    spec = {
        "model": None,
        "backbone": "mobilenet_v2",
        "weights": str(tmp_path / "w.h5"),
        "pooling": "rmac",
        "pca_dim": None,
    }
    with pytest.raises(FileNotFoundError, match="--weights file not found"):
        _common.build_model(spec)


def test_is_download_failure():
    import urllib.error

    assert _common.is_download_failure(urllib.error.URLError("no route"))
    # What keras.utils.get_file raises: a plain Exception, URLError context.
    try:
        try:
            raise urllib.error.URLError("[Errno -3] name resolution")
        except urllib.error.URLError:
            raise Exception("URL fetch failure on https://x/w.h5: None")
    except Exception as error:
        assert _common.is_download_failure(error)
    assert not _common.is_download_failure(ValueError("bad value"))
    assert not _common.is_download_failure(FileNotFoundError("w.h5"))


def test_build_model_errors(tmp_path):
    spec = {"model": str(tmp_path / "missing.keras")}
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        _common.build_model(spec)
    assert (
        cli(
            [
                "index",
                str(tmp_path),
                "--index",
                str(tmp_path / "i"),
                "--model",
                str(tmp_path / "missing.keras"),
            ]
        )
        == 1
    )


def test_pca_dim_learned_once(tmp_path, monkeypatch):
    built = []
    original = rmac_model.build_backbone

    def tiny_build_backbone(backbone, weights):
        # Stands in for MobileNet to keep the test fast: the plumbing
        # (spec -> build -> adapt -> index -> reuse) is what is tested.
        if not isinstance(backbone, str):  # Loading a saved model.
            return original(backbone, weights)
        built.append((backbone, weights))
        return photos.tiny_backbone(), "tf", None

    monkeypatch.setattr(rmac_model, "build_backbone", tiny_build_backbone)
    root = tmp_path / "photos"
    for i in range(6):
        photos.save(root / f"p{i}.png", photos.photo(i, 96, 80))
    index_dir = tmp_path / "index"
    args = [
        "index",
        str(root),
        "--index",
        str(index_dir),
        "--max-size",
        "64",
        "--mode",
        "exact",
        "-q",
    ]
    model_args = [
        "--backbone",
        "mobilenet_v1",
        "--weights",
        "none",
        "--pca-dim",
        "8",
    ]
    assert cli(args + model_args) == 0
    assert built == [("mobilenet_v1", None)]
    with open(index_dir / "index.json") as f:
        settings = json.load(f)
    assert settings["dimension"] == 8
    assert settings["model_spec"]["pca_dim"] == 8
    saved = indexing.load_rmac_model(index_dir / "model.keras")
    kernel, bias = (w.numpy() for w in saved.shift_pca.weights)
    assert kernel.shape == (16, 8)
    assert np.abs(bias).max() > 1e-3  # adapted: shift = -mean @ W != 0
    # Re-run, with the same or no model options: the index's own adapted
    # model is reused (not adapted again), so nothing is described.
    for again in (args + model_args, args):
        assert cli(again) == 0
        with open(index_dir / "report.json") as f:
            assert json.load(f)["extracted"] == 0
        with open(index_dir / "index.json") as f:
            assert json.load(f)["fingerprint"] == settings["fingerprint"]
    assert len(built) == 1
