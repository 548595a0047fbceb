"""The COIL-100 training protocol shared by the training benchmarks.

`split(data_dir, "test" | "val")` gives the project's split (train on
objects 1-50, test on 51-100) or the validation split of the train
objects (train on 1-40, validate on 41-50); `evaluation_callback` measures
mAP from cached backbone-prefix features of the database during `fit`.
Used by `benchmarks/train_coil100.py` and `benchmarks/train_losses.py`.
"""

import os
import re

import numpy as np

WEIGHTS = "weights/mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"

_NAME = re.compile(r"obj(\d+)__(\d+)\.png$")


def split(data_dir, split):
    """`(train LabelledImages, db paths, db labels, query db indices, gnd)`."""
    from keras_rmac.data.datasets import load_coil100
    from keras_rmac.data.triplets import LabelledImages

    coil = load_coil100(os.path.join(data_dir, "coil100"))
    train = LabelledImages.from_labels(coil.train_paths, coil.train_labels)
    if split == "test":
        return (
            train,
            coil.db_paths,
            np.asarray(coil.db_labels),
            np.asarray(coil.query_db_indices),
            coil.gnd,
        )
    # Validation: objects 41-50 of the train split, same database rule;
    # four queries per object (0, 90, 180, 270 degrees) to halve the noise
    # of a 10-object estimate.
    views = [
        (int(m.group(1)), int(m.group(2)), p)
        for p in coil.train_paths
        for m in [_NAME.search(os.path.basename(p))]
    ]
    fit = [(o, p) for o, _, p in views if o <= 40]
    db = [(o, d, p) for o, d, p in views if o > 40 and d % 15 == 0]
    train = LabelledImages.from_labels([p for _, p in fit], [o for o, _ in fit])
    labels = np.array([o for o, _, _ in db])
    queries = np.array([i for i, (_, d, _) in enumerate(db) if d % 90 == 0])
    gnd = []
    for q in queries:
        same = np.flatnonzero(labels == labels[q])
        gnd.append({"ok": same[same != q], "junk": np.array([q])})
    return train, [p for _, _, p in db], labels, queries, gnd


def mean_ap(descriptors, queries, gnd):
    from keras_rmac.evaluation import compute_map

    scores = descriptors @ descriptors[queries].T  # (n_db, n_queries)
    ranks = np.argsort(-scores, axis=0, kind="stable")
    return float(compute_map(ranks, gnd)[0])


def evaluation_callback(db_features, queries, gnd):
    import keras
    import tensorflow as tf

    class Evaluate(keras.callbacks.Callback):
        """Test mAP from cached db features at train start and each epoch."""

        def __init__(self):
            super().__init__()
            self.maps = {}
            self.step_losses = []
            self._fn = None

        def _evaluate(self):
            head = self.model.embedding
            if self._fn is None:
                self._fn = tf.function(
                    lambda x: head(x, training=False), autograph=False
                )
            out = [
                np.asarray(self._fn(db_features[i : i + 64]))
                for i in range(0, len(db_features), 64)
            ]
            return mean_ap(np.concatenate(out), queries, gnd)

        def on_train_begin(self, logs=None):
            if "before" not in self.maps:
                self.maps["before"] = self._evaluate()
                print(f"mAP before training: {self.maps['before']:.4f}")

        def on_train_batch_end(self, batch, logs=None):
            self.step_losses.append(float(logs["loss"]))

        def on_epoch_end(self, epoch, logs=None):
            self.maps[epoch] = self._evaluate()
            print(
                f"epoch {epoch + 1}: loss {logs['loss']:.4f}, "
                f"mAP {self.maps[epoch]:.4f}"
            )

    return Evaluate()
