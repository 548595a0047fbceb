"""`train(config)` with each objective: triplet, contrastive, AP loss.

Toy problem of tests/test_training.py (tiny backbone, 24x24 images of 6
classes of 4 images): seconds per test.
"""

import os

import numpy as np
import pytest

from tests.test_training import make_images
from tests.test_training import tiny_embedding
from tests.test_training import toy_config


def _weights(embedding):
    return [np.asarray(w) for w in embedding.get_weights()]


def test_build_loss_and_margins_follow_the_config():
    from keras_rmac import losses
    from keras_rmac.training import TrainConfig
    from keras_rmac.training import build_loss

    default = build_loss(TrainConfig(train_dir="x"))
    assert isinstance(default, losses.ContrastiveTupleLoss)
    triplet = build_loss(TrainConfig(train_dir="x", loss="triplet"))
    assert isinstance(triplet, losses.TripletMarginLoss)
    assert triplet.margin == 0.1
    contrastive = build_loss(
        TrainConfig(train_dir="x", loss="contrastive", negatives_per_query=3)
    )
    assert isinstance(contrastive, losses.ContrastiveTupleLoss)
    assert (contrastive.margin, contrastive.negatives_per_query) == (0.7, 3)
    no_mining = build_loss(
        TrainConfig(train_dir="x", loss="contrastive", mining=False, margin=0.5)
    )
    assert (no_mining.margin, no_mining.negatives_per_query) == (0.5, 1)
    ap = build_loss(TrainConfig(train_dir="x", loss="ap", ap_bins=7))
    assert isinstance(ap, losses.APLoss) and ap.bins == 7


def test_config_validation_of_the_loss_settings():
    from keras_rmac.training import TrainConfig

    with pytest.raises(ValueError, match="loss='listnet'"):
        TrainConfig(train_dir="x", loss="listnet").validate()
    with pytest.raises(ValueError, match="images_per_class"):
        TrainConfig(train_dir="x", loss="ap", images_per_class=1).validate()
    with pytest.raises(ValueError, match="chunk_size"):
        TrainConfig(train_dir="x", loss="ap", chunk_size=0).validate()
    with pytest.raises(ValueError, match="resize='square'"):
        TrainConfig(train_dir="x", loss="ap", resize="longest").validate()


def test_cli_loss_options_map_to_config(tmp_path):
    import argparse

    from keras_rmac.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        "train --train-dir photos --out o --loss ap --ap-bins 10 "
        "--classes-per-batch 5 --images-per-class 3 --chunk-size 4".split()
    )
    config = cli_train.config_from_args(args)
    assert (config.loss, config.ap_bins, config.chunk_size) == ("ap", 10, 4)
    assert (config.classes_per_batch, config.images_per_class) == (5, 3)
    default = cli_train.config_from_args(
        parser.parse_args("train --train-dir p --out o".split())
    )
    # The default follows benchmarks/RESULTS.md (train_losses).
    assert default.loss == "contrastive" and default.margin is None
    with pytest.raises(SystemExit):
        parser.parse_args("train --train-dir p --out o --loss x".split())


@pytest.mark.parametrize("cached", [False, True])
def test_ap_loss_trains_on_class_batches(tmp_path, cached):
    import keras

    from keras_rmac.models import ListwiseModel
    from keras_rmac.training import train

    data = make_images(str(tmp_path / "data"))
    extra = {}
    if cached:
        extra = dict(trainable_from="conv2", cache_features=True, augment=False)
    config = toy_config(
        data,
        str(tmp_path / "run"),
        loss="ap",
        classes_per_batch=3,
        images_per_class=3,
        chunk_size=4,
        **extra,
    )
    start = _weights(tiny_embedding(config))
    result = train(config, embedding_fn=tiny_embedding)
    assert isinstance(result.triplet_model, ListwiseModel)
    losses = result.history["loss"]
    assert len(losses) == 2 and all(0 <= v <= 1 for v in losses)
    assert int(result.triplet_model.optimizer.iterations.numpy()) == 6
    moved = max(
        np.abs(a - b).max()
        for a, b in zip(start, _weights(result.embedding))
        if a.shape == b.shape
    )
    assert moved > 1e-4
    reloaded = keras.models.load_model(result.model_path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 24, 24, 3))
    np.testing.assert_allclose(
        reloaded(x.astype("float32")),
        result.embedding(x.astype("float32")),
        atol=1e-6,
    )


def test_triplet_loss_trains_with_mined_triplets(tmp_path):
    from keras_rmac.losses import TripletMarginLoss
    from keras_rmac.training import train

    data = make_images(str(tmp_path / "data"))
    config = toy_config(data, str(tmp_path / "run"), loss="triplet")
    result = train(config, embedding_fn=tiny_embedding)
    loss = result.triplet_model.loss
    assert isinstance(loss, TripletMarginLoss) and loss.margin == 0.1
    assert len(result.history["loss"]) == 2
    assert np.all(np.isfinite(result.history["loss"]))


def test_contrastive_loss_trains_with_mined_tuples(tmp_path):
    from keras_rmac.losses import ContrastiveTupleLoss
    from keras_rmac.training import train

    data = make_images(str(tmp_path / "data"))
    config = toy_config(
        data, str(tmp_path / "run"), loss="contrastive", negatives_per_query=2
    )
    result = train(config, embedding_fn=tiny_embedding)
    loss = result.triplet_model.loss
    assert isinstance(loss, ContrastiveTupleLoss)
    assert loss.negatives_per_query == 2 and loss.margin == 0.7
    assert len(result.history["loss"]) == 2
    assert np.all(np.isfinite(result.history["loss"]))


def test_ap_run_resumes_mid_epoch_with_the_same_batches(tmp_path):
    """Stopped after step 4 of 6 (checkpoint every step), run again: the
    remaining 2 steps see the same batches, final weights equal."""
    import keras

    from keras_rmac.training import train

    data = make_images(str(tmp_path / "data"))

    def config(out):
        return toy_config(
            data,
            str(tmp_path / out),
            loss="ap",
            classes_per_batch=2,
            images_per_class=3,
            trainable_from="conv2",
            cache_features=True,
            augment=False,
        )

    reference = train(config("ref"), embedding_fn=tiny_embedding)

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 4:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config("run"), embedding_fn=tiny_embedding, callbacks=[Stop()])
    assert os.path.exists(tmp_path / "run" / "backup")
    resumed = train(config("run"), embedding_fn=tiny_embedding)
    assert resumed.restored == {"epoch": 1, "batches_done": 1, "step": 4}
    for a, b in zip(_weights(resumed.embedding), _weights(reference.embedding)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
