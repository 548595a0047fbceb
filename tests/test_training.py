"""The shared training procedure: fit, resume after kill -9, distribution.

Runs on a toy problem (tiny convolutional backbone, 24x24 synthetic images
of 6 classes) so that every test takes seconds. The kill -9, mirrored and
multi-worker tests run training in subprocesses: this file is also the
worker script (`python tests/test_training.py MODE ...`).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

NUM_CLASSES = 6
PER_CLASS = 4
SIDE = 24


def make_images(root):
    """Writes a toy labelled folder: each class a colour + stripe pattern."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(NUM_CLASSES):
        folder = os.path.join(root, f"class{c}")
        os.makedirs(folder, exist_ok=True)
        colour = rng.uniform(40, 215, size=3)
        for i in range(PER_CLASS):
            image = np.empty((SIDE, SIDE, 3))
            image[:] = colour
            image[:, c * 4 : c * 4 + 3] = 255 - colour  # class stripe
            image += rng.normal(0, 12, size=image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, f"{i}.png")
            )
    return root


def tiny_embedding(config):
    """A small R-MAC model: two convolutions with BatchNorm."""
    import keras

    from keras_rmac.models import RMACModel

    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.ReLU()(x)
    backbone = keras.Model(inputs, x, name="tiny")
    return RMACModel(backbone, weights=None, preprocessing="none", levels=2)


def toy_config(data_dir, output_dir, **overrides):
    from keras_rmac.training import TrainConfig

    settings = dict(
        train_dir=data_dir,
        output_dir=output_dir,
        image_size=SIDE,
        batch_size=4,
        steps_per_epoch=3,
        epochs=2,
        learning_rate=1e-2,
        pca_images=12,
        pool_size=16,
        checkpoint_every=1,
        num_workers=2,
        verbose=0,
        seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _final_weights(embedding):
    return [np.asarray(w) for w in embedding.get_weights()]


# ---------------------------------------------------------------------------
# In-process tests.


def test_train_runs_mines_logs_and_saves(tmp_path):
    import keras

    from keras_rmac.training import train

    data = make_images(str(tmp_path / "data"))
    # A corrupt file: skipped, listed, never fatal.
    with open(os.path.join(data, "class0", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    out = str(tmp_path / "run")
    result = train(toy_config(data, out), embedding_fn=tiny_embedding)
    assert len(result.history["loss"]) == 2
    assert [p for p, _ in result.bad_files] == [
        os.path.join(data, "class0", "broken.png")
    ]
    with open(os.path.join(out, "bad_files.txt")) as f:
        assert "broken.png" in f.read()
    with open(os.path.join(out, "log.csv")) as f:
        assert len(f.read().strip().splitlines()) == 3  # header + 2 epochs
    # The backup is deleted once fit completes.
    assert not os.path.exists(os.path.join(out, "backup"))
    reloaded = keras.models.load_model(result.model_path)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIDE, SIDE, 3))
    np.testing.assert_allclose(
        reloaded(x.astype("float32")),
        result.embedding(x.astype("float32")),
        atol=1e-6,
    )


def test_cached_features_mode_trains_the_tail_only(tmp_path):
    from keras_rmac.training import train

    data = make_images(str(tmp_path / "data"))
    config = toy_config(
        data,
        str(tmp_path / "run"),
        trainable_from="conv2",
        cache_features=True,
        augment=False,
    )
    start = tiny_embedding(config)
    result = train(config, embedding_fn=tiny_embedding)
    backbone = result.embedding.backbone
    np.testing.assert_array_equal(
        backbone.get_layer("conv1").kernel,
        start.backbone.get_layer("conv1").kernel,
    )
    assert not np.allclose(
        backbone.get_layer("conv2").kernel,
        start.backbone.get_layer("conv2").kernel,
    )
    assert set(result.timings) == {
        "cache_seconds",
        "pca_seconds",
        "fit_seconds",
    }
    cached = [f for f in os.listdir(tmp_path / "run") if f.startswith("feat")]
    assert len(cached) == 1
    with pytest.raises(ValueError, match="cache_features"):
        toy_config(data, "x", cache_features=True).validate()


@pytest.mark.parametrize("cached", [False, True])
def test_adapt_pca_from_few_regions_warns_and_does_not_whiten(
    tmp_path, caplog, cached
):
    # Issue 10 item 3: both training paths go through ShiftPCA.adapt, so
    # from no more region vectors than dimensions they warn with the counts
    # and learn shift + PCA without whitening (orthogonal kernel columns of
    # one norm), instead of a whitening that makes the training images'
    # descriptors nearly orthogonal.
    import logging

    from keras_rmac.models.triplet_model import FeatureEmbedding
    from keras_rmac.training import adapt_pca
    from keras_rmac.training import adapt_pca_from_features
    from keras_rmac.training import cached_features
    from keras_rmac.training import load_training_images

    data = make_images(str(tmp_path / "data"))
    config = toy_config(data, str(tmp_path / "run"), pca_images=2)
    images = load_training_images(config)
    embedding = tiny_embedding(config)
    with caplog.at_level(logging.WARNING, logger="keras_rmac"):
        if cached:
            head = FeatureEmbedding(embedding, "conv2")
            features = cached_features(head, images, config, str(tmp_path))
            used = adapt_pca_from_features(head, features, config)
        else:
            used = adapt_pca(embedding, images, config)
    channels = 16
    assert 2 <= used <= channels
    assert f"{used} vectors for {channels} dimensions" in caplog.text
    assert "without whitening" in caplog.text
    kernel = np.asarray(embedding.shift_pca.kernel, np.float64)
    gram = kernel.T @ kernel
    np.testing.assert_allclose(
        gram, np.eye(channels) * gram[0, 0], atol=1e-5 * gram[0, 0]
    )
    # With enough images the same path whitens as before, without a word.
    caplog.clear()
    config = toy_config(data, str(tmp_path / "run"), pca_images=24)
    with caplog.at_level(logging.WARNING, logger="keras_rmac"):
        assert adapt_pca(tiny_embedding(config), images, config) > channels
    assert "vectors for" not in caplog.text


def test_config_validation(tmp_path):
    from keras_rmac.training import TrainConfig

    with pytest.raises(ValueError, match="exactly one training source"):
        TrainConfig().validate()
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(train_dir="x", optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(train_dir="x", batch_size=0).validate()
    with pytest.raises(ValueError, match="negatives='hard'; choose one of"):
        TrainConfig(train_dir="x", negatives="hard").validate()
    TrainConfig(train_dir="x", negatives="semihard").validate()


def test_cli_arguments_map_to_config(tmp_path):
    import argparse

    from keras_rmac.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "train",
            "--train-dir",
            "photos",
            "--out",
            str(tmp_path),
            "--weights",
            "none",
            "--trainable-from",
            "0.75",
            "--batch-size",
            "3",
            "--accumulate",
            "2",
            "--learning-rate",
            "0.001",
            "--no-augment",
            "--no-mining",
            "--negatives",
            "semihard",
        ]
    )
    config = cli_train.config_from_args(args)
    assert config.train_dir == "photos" and config.weights is None
    assert config.trainable_from == 0.75 and config.batch_size == 3
    assert config.gradient_accumulation_steps == 2
    assert config.learning_rate == 0.001
    assert not config.augment and not config.mining
    assert config.negatives == "semihard"
    assert config.epochs == 10  # untouched default
    bad = parser.parse_args(
        ["train", "--coil100", "x", "--out", "y", "--cache-features"]
    )
    assert cli_train.run(bad) == 1  # needs --trainable-from and no augment


@pytest.mark.slow
def test_cli_trains_a_real_backbone_end_to_end(tmp_path):
    from keras_rmac.cli.main import main

    data = make_images(str(tmp_path / "data"))
    out = tmp_path / "run"
    status = main(
        [
            "train",
            "--train-dir",
            data,
            "--out",
            str(out),
            "--backbone",
            "mobilenet_v2",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "2",
            "--pool-size",
            "8",
            "--pca-images",
            "8",
            "--trainable-from",
            "block_16_expand",
            "--cache-features",
            "--no-augment",
        ]
    )
    assert status == 0
    assert (out / "model.keras").exists() and (out / "log.csv").exists()


# ---------------------------------------------------------------------------
# Subprocess workers.


def _env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("TF_CONFIG", None)
    env.update(extra or {})
    return env


def _run_worker(args, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, __file__, *args],
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _read_result(path):
    with np.load(path) as data:
        return [data[f"w{i}"] for i in range(len(data.files) - 1)], int(
            data["step"]
        )


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    """SIGKILL mid-epoch after a checkpoint, restart, compare final weights.

    What is checked: the restarted run resumes at the checkpoint (epoch and
    batch recorded in the backup), runs exactly the remaining steps, and its
    final weights equal those of an uninterrupted run, which holds only if
    the remaining batches had the same triplets, order and augmentation.
    """
    data = make_images(str(tmp_path / "data"))
    # The uninterrupted reference runs alongside the one we kill.
    ref = subprocess.Popen(
        [sys.executable, __file__, "run", data, str(tmp_path / "ref")],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = str(tmp_path / "run")
    marker = str(tmp_path / "paused")
    # Pauses (sleeps) in epoch 2 after its 1st batch, i.e. after a
    # checkpoint at step 4 of 6; we then kill it with SIGKILL.
    proc = subprocess.Popen(
        [sys.executable, __file__, "run", data, run, "--pause", marker],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not os.path.exists(marker):
        if proc.poll() is not None:
            pytest.fail(f"worker exited early: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("worker never reached the pause point")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with open(os.path.join(run, "backup", "training_metadata.json")) as f:
        meta = json.load(f)
    assert meta["epoch"] == 1 and meta["batches_done"] == 1
    assert meta["iterations"] == 4
    assert not os.path.exists(os.path.join(run, "model.keras"))

    _, ref_err = ref.communicate(timeout=240)
    assert ref.returncode == 0, ref_err[-3000:]
    resumed = _run_worker(["run", data, run])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert info["restored"] == {"epoch": 1, "batches_done": 1, "step": 4}
    assert info["steps_run"] == 2  # only the remaining steps of epoch 2
    want, want_step = _read_result(os.path.join(tmp_path / "ref", "w.npz"))
    got, got_step = _read_result(os.path.join(run, "w.npz"))
    assert got_step == want_step == 6
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    data = make_images(str(tmp_path / "data"))
    result = _run_worker(["mirrored", data, str(tmp_path / "run")])
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["replicas"] == 2
    assert info["step"] == 6
    assert np.isfinite(info["loss"]).all()


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_two_processes(tmp_path):
    data = make_images(str(tmp_path / "data"))
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = str(tmp_path / "run")
    procs = []
    for task in range(2):
        tf_config = {
            "cluster": cluster,
            "task": {"type": "worker", "index": task},
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "multiworker", data, out],
                env=_env({"TF_CONFIG": json.dumps(tf_config)}),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [o["replicas"] for o in outputs] == [2, 2]
    assert outputs[0]["step"] == outputs[1]["step"] == 6
    # Synchronous training: both workers end with the same weights.
    w0, _ = _read_result(os.path.join(out, "w_worker_0.npz"))
    w1, _ = _read_result(os.path.join(out, "w_worker_1.npz"))
    for a, b in zip(w0, w1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert os.path.exists(os.path.join(out, "model.keras"))  # chief only


# ---------------------------------------------------------------------------
# Worker entry point.


def _save_result(path, embedding, step):
    arrays = {f"w{i}": w for i, w in enumerate(_final_weights(embedding))}
    np.savez(path, step=step, **arrays)


def _worker(argv):
    mode, data, out = argv[:3]
    pause = argv[argv.index("--pause") + 1] if "--pause" in argv else None
    if mode == "mirrored":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    import keras
    import tensorflow as tf

    from keras_rmac.training import train

    tf.config.experimental.enable_op_determinism()
    keras.config.disable_traceback_filtering()

    class Pause(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 4:
                with open(pause, "w") as f:
                    f.write("paused")
                time.sleep(3600)

    callbacks = [Pause()] if pause else []
    strategy = None
    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    config = toy_config(data, out)
    if mode == "multiworker":
        config.checkpoint_every = 2
    result = train(
        config,
        strategy=strategy,
        embedding_fn=tiny_embedding,
        callbacks=callbacks,
    )
    step = int(result.triplet_model.optimizer.iterations.numpy())
    name = "w.npz"
    if mode == "multiworker":
        task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        name = f"w_worker_{task}.npz"
    _save_result(os.path.join(out, name), result.embedding, step)
    steps_run = sum(1 for _ in result.history.get("loss", []))
    print(
        json.dumps(
            {
                "restored": result.restored,
                "step": step,
                "steps_run": step - (result.restored or {}).get("step", 0),
                "epochs_run": steps_run,
                "replicas": strategy.num_replicas_in_sync if strategy else 1,
                "loss": result.history["loss"],
            }
        )
    )


if __name__ == "__main__":
    _worker(sys.argv[1:])


def test_config_negatives_reach_the_miner():
    import types

    from keras_rmac.data import triplets as T
    from keras_rmac.training import TrainConfig
    from keras_rmac.training import loop

    images = T.LabelledImages.from_labels(["a", "b", "c", "d"], [0, 0, 1, 1])
    table = T.TripletTable(T.random_triplets(images.labels, 4, 0))
    models = types.SimpleNamespace(features=None)
    for negatives in ("hardest", "semihard"):
        config = TrainConfig(train_dir="x", negatives=negatives)
        miner = loop._triplet_source(config, images, table, models)
        assert miner.negatives == negatives
