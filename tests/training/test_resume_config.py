"""A run resumes only under the settings it was started with."""

import json
import os

import pytest

from keras_rmac.training import TrainConfig
from keras_rmac.training import train
from keras_rmac.training.loop import check_resumed_config


def interrupted_run(tmp_path, **settings):
    """An output folder as an interrupted run leaves it."""
    out = tmp_path / "run"
    config = TrainConfig(
        train_dir=str(tmp_path), output_dir=str(out), **settings
    )
    os.makedirs(out / "backup")
    (out / "config.json").write_text(config.to_json())
    return out


def test_other_training_settings_are_refused_naming_them(tmp_path):
    out = interrupted_run(tmp_path, loss="triplet", learning_rate=1e-4)
    again = TrainConfig(
        train_dir=str(tmp_path),
        output_dir=str(out),
        loss="contrastive",
        learning_rate=1e-4,
    )
    with pytest.raises(ValueError) as error:
        check_resumed_config(again, str(out))
    message = str(error.value)
    assert "loss='triplet' there, 'contrastive' now" in message
    assert "learning_rate" not in message
    assert "another output directory" in message
    # `train` refuses before touching the folder.
    before = (out / "config.json").read_text()
    with pytest.raises(ValueError, match="loss="):
        train(again)
    assert (out / "config.json").read_text() == before


def test_same_settings_more_epochs_or_a_fresh_folder_pass(tmp_path):
    out = interrupted_run(tmp_path, epochs=3, verbose=1, num_workers=4)
    more = TrainConfig(
        train_dir=str(tmp_path),
        output_dir=str(out),
        epochs=5,
        verbose=0,
        num_workers=0,
        checkpoint_every=7,
    )
    check_resumed_config(more, str(out))
    # No checkpoint: nothing to resume, any settings.
    fresh = tmp_path / "fresh"
    os.makedirs(fresh)
    (fresh / "config.json").write_text(
        TrainConfig(train_dir=str(tmp_path), loss="ap").to_json()
    )
    check_resumed_config(more, str(fresh))


def test_settings_missing_from_an_older_config_are_not_compared(tmp_path):
    out = interrupted_run(tmp_path)
    saved = json.loads((out / "config.json").read_text())
    del saved["loss"]  # Written before the setting existed.
    (out / "config.json").write_text(json.dumps(saved))
    check_resumed_config(
        TrainConfig(train_dir=str(tmp_path), output_dir=str(out), loss="ap"),
        str(out),
    )
