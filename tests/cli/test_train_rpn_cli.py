"""`keras-rmac train-rpn` and `train --rpn-model` from the command line."""

import os

import keras
import numpy as np

from keras_rmac.cli import main as cli_main
from keras_rmac.cli import train_rpn as cli_train_rpn
from tests.test_train_rpn import _write_rectangles


def test_train_rpn_cli_trains_and_saves_an_rpn_model(tmp_path):
    csv = _write_rectangles(str(tmp_path), 4, seed=2)
    out = str(tmp_path / "run")
    argv = [
        "train-rpn",
        csv,
        "--out",
        out,
        "--weights",
        "none",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--top-n",
        "5",
        "--hidden",
        "8",
        "--sizes",
        "1,2",
        "--ratios",
        "1",
        "--workers",
        "0",
    ]
    assert cli_main.main(argv) == 0
    model = keras.models.load_model(os.path.join(out, "model.keras"))
    assert model.regions == "rpn"
    assert model.rpn_options["top_n"] == 5
    assert model.rpn_options["sizes"] == [1.0, 2.0]
    assert model.extract(np.zeros((40, 30, 3), np.float32)).shape == (1, 1280)
    with open(os.path.join(out, "rpn_log.csv")) as f:
        assert f.read().startswith("epoch,loss\n0,")


def test_train_rpn_cli_refuses_pca_dim_and_a_list_without_boxes(tmp_path):
    parser = cli_main.build_parser("train-rpn")
    args = parser.parse_args(["train-rpn", "a.csv", "--out", "o"])
    args.pca_dim = 8
    assert cli_train_rpn.run(args) == 1
    csv = os.path.join(tmp_path, "plain.csv")
    with open(csv, "w") as f:
        f.write("path,label\na.png,0\n")
    argv = ["train-rpn", csv, "--out", str(tmp_path / "o")]
    assert cli_main.main([*argv, "--weights", "none"]) == 1


def test_train_accepts_rpn_model():
    parser = cli_main.build_parser("train")
    args = parser.parse_args(
        ["train", "--train-dir", "d", "--out", "o", "--rpn-model", "r.keras"]
    )
    from keras_rmac.cli.train import config_from_args

    assert config_from_args(args).rpn_model == "r.keras"


def test_train_no_fixed_proposals_flag():
    from keras_rmac.cli.train import config_from_args

    parser = cli_main.build_parser("train")
    argv = ["train", "--train-dir", "d", "--out", "o", "--rpn-model", "r"]
    assert config_from_args(parser.parse_args(argv)).fixed_proposals
    args = parser.parse_args([*argv, "--no-fixed-proposals"])
    assert config_from_args(args).fixed_proposals is False
