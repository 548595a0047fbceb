"""`keras-rmac export` sub-command."""

import argparse
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.cli import _common
from keras_rmac.cli import export

WARMUP = "tf_serving_warmup_requests"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="keras-rmac")
    export.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["export"] + argv)


def test_export_from_saved_keras_model(
    tiny_model, image_files, tmp_path, capsys
):
    model_path = tmp_path / "rmac.keras"
    tiny_model.save(model_path)
    out = tmp_path / "serving"
    args = _parse(
        [
            "--model",
            str(model_path),
            "--out",
            str(out),
            "--max-size",
            "40",
            "--scales",
            "1,0.5",
            "--warmup",
            image_files[0],
            image_files[4],
        ]
    )
    assert args.run(args) == 0
    version_dir = os.path.join(str(out), "1")
    warmup = os.path.join(version_dir, "assets.extra", WARMUP)
    assert sum(1 for _ in tf.data.TFRecordDataset(warmup)) == 2

    loaded = tf.saved_model.load(version_dir)
    data = [open(p, "rb").read() for p in image_files]
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(data))
    expected = tiny_model.extract(image_files, max_size=40, scales=(1.0, 0.5))
    np.testing.assert_allclose(got["descriptor"].numpy(), expected, atol=1e-5)

    # The summary: what was written where, its signatures and sizes.
    lines = capsys.readouterr().out.splitlines()
    size = sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(version_dir)
        for name in names
    )
    assert lines[0] == (
        f"Exported SavedModel: {version_dir} ({size / 1e6:.1f} MB)"
        if size >= 1e6
        else f"Exported SavedModel: {version_dir} ({size / 1e3:.1f} KB)"
    )
    assert lines[1:] == [
        "  signatures: serving_default (image_bytes -> descriptor); "
        "serving_images (images -> descriptor)",
        f"  descriptor: {expected.shape[1]} float32 values, L2-normalised",
        "  images: longest side 40 px at scale 1, scales 1, 0.5",
        "  warm-up requests: 2",
    ]

    # Same command again: the next version; --no-warmup writes no file.
    args = _parse(
        ["--model", str(model_path), "--out", str(out), "--no-warmup"]
    )
    assert args.run(args) == 0
    out_text = capsys.readouterr().out
    assert f"Exported SavedModel: {out / '2'} (" in out_text
    assert "warm-up requests: 0" in out_text
    # The defaults of every sub-command: max size 512, scale 1.
    assert "longest side 512 px at scale 1, scales 1\n" in out_text
    assert not os.path.exists(out / "2" / "assets.extra" / WARMUP)


def test_errors_return_1(tmp_path, tiny_model, caplog):
    args = _parse(["--model", str(tmp_path / "nope.keras"), "--out", "x"])
    assert args.run(args) == 1
    assert "nope.keras" in caplog.text
    args = _parse(
        ["--backbone", "mobilenet_v2", "--weights", str(tmp_path / "w.h5")]
        + ["--out", str(tmp_path / "o")]
    )
    assert args.run(args) == 1
    assert "w.h5" in caplog.text
    os.makedirs(tmp_path / "o" / "4")
    model_path = tmp_path / "rmac.keras"
    tiny_model.save(model_path)
    args = _parse(
        ["--model", str(model_path), "--out", str(tmp_path / "o")]
        + ["--version", "4"]
    )
    assert args.run(args) == 1
    assert "already exists" in caplog.text
    # Export has no photos to learn shift + PCA-whitening from.
    args = _parse(["--pca-dim", "8", "--out", str(tmp_path / "p")])
    assert args.run(args) == 1
    assert "--pca-dim needs photos" in caplog.text
    assert not os.path.exists(tmp_path / "p")


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "m.keras", "--backbone", "vgg16", "--out", "x"],
        ["--model", "m.keras", "--weights", "none", "--out", "x"],
        ["--backbone", "vgg17", "--out", "x"],
        ["--model", "m.keras"],  # No --out.
        ["--model", "m.keras", "--out", "x", "--scales", "1,-2"],
        ["--model", "m.keras", "--out", "x", "--scales", "big"],
        ["--model", "m.keras", "--out", "x", "--max-size", "0"],
        ["--model", "m.keras", "--out", "x", "--version", "-1"],
        ["--model", "m.keras", "--out", "x", "--warmup", "a", "--no-warmup"],
        ["--model", "m.keras", "--out", "x", "--value-range", "0"],
        ["--model", "m.keras", "--out", "x", "--value-range", "a,b"],
    ],
)
def test_bad_arguments_exit(argv, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(argv)
    assert info.value.code == 2


def test_parsed_defaults(tmp_path, monkeypatch):
    # The same model options with the same defaults as `index`: neither
    # --model nor --backbone needed, the offline weights file when found.
    from keras_rmac.cli import index

    monkeypatch.chdir(tmp_path)
    args = _parse(["--out", "x"])
    assert args.model is None and args.backbone is None
    assert args.weights is None and args.pooling is None
    assert args.version is None
    assert args.warmup is None and not args.no_warmup
    assert args.value_range is None
    assert _parse(["--out", "x", "--value-range", "0,1"]).value_range == (0, 1)
    parser = argparse.ArgumentParser(prog="keras-rmac")
    index.add_parser(parser.add_subparsers(dest="command"))
    index_args = parser.parse_args(["index", "photos", "--index", "i"])
    assert _common.model_spec(args) == _common.model_spec(index_args)
    assert _common.model_spec(args)["backbone"] == "mobilenet_v2"
    assert _common.image_settings(args) == (512, (1.0,))
    assert _common.image_settings(args) == _common.image_settings(index_args)
    args = _parse(["--model", "m.keras", "--out", "x", "--scales", "1 0.707"])
    assert _common.image_settings(args) == (512, (1.0, 0.707))
