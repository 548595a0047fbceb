"""Fine-tune R-MAC on COIL-100 with triplets, then measure test mAP.

A complete run of the library's training recipe on a small real data set:
objects 1-50 train, objects 51-100 (every 15 degrees) are the test
database, their 0-degree views the queries.

    python examples/train_coil100.py --data_dir ../shared/data
    python examples/train_coil100.py --data_dir ../shared/data \\
        --nocache_features --augment --epochs 4   # the image pipeline

With `--cache_features` (the default) the frozen part of the backbone runs
once per training image and only the layers from `--trainable_from` on are
trained, which is what makes a CPU run take minutes instead of hours.
Interrupt it and run the same command again: it resumes.
"""

import os

import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir",
    os.environ.get("KERAS_RMAC_DATA", "../shared/data"),
    "Folder holding coil100/ and weights/.",
)
flags.DEFINE_string("output_dir", "runs/coil100", "Run folder.")
flags.DEFINE_string("trainable_from", "block_15_expand", "First layer trained.")
flags.DEFINE_bool("cache_features", True, "Cache the frozen backbone part.")
flags.DEFINE_bool("augment", False, "Light augmentation (not with cache).")
flags.DEFINE_integer("image_size", 224, "Image side.")
flags.DEFINE_integer("epochs", 8, "Epochs.")
flags.DEFINE_integer("steps_per_epoch", 100, "Steps per epoch.")
flags.DEFINE_integer("batch_size", 8, "Triplets per step.")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.")
flags.DEFINE_integer("negatives_per_query", 4, "Hard negatives per query.")

WEIGHTS = "weights/mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"


def test_map(model, coil, image_size):
    """mAP of `model` on the COIL-100 test split (50 queries)."""
    from keras_rmac.evaluation import compute_map

    descriptors = model.extract(coil.db_paths, max_size=image_size)
    queries = descriptors[np.asarray(coil.query_db_indices)]
    ranks = np.argsort(-(descriptors @ queries.T), axis=0, kind="stable")
    return compute_map(ranks, coil.gnd)[0]


def main(argv):
    del argv
    import logging

    from keras_rmac.data.datasets import load_coil100
    from keras_rmac.training import TrainConfig
    from keras_rmac.training import train

    logging.getLogger("keras_rmac").setLevel(logging.INFO)
    coil_dir = os.path.join(FLAGS.data_dir, "coil100")
    config = TrainConfig(
        coil100=coil_dir,
        output_dir=FLAGS.output_dir,
        weights=os.path.join(FLAGS.data_dir, WEIGHTS),
        trainable_from=FLAGS.trainable_from,
        cache_features=FLAGS.cache_features,
        augment=FLAGS.augment,
        image_size=FLAGS.image_size,
        pca_images=4000,  # the whole train split
        epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        negatives_per_query=FLAGS.negatives_per_query,
    )
    result = train(config)
    print("loss per epoch:", [round(v, 4) for v in result.history["loss"]])
    coil = load_coil100(coil_dir)
    print(f"test mAP: {test_map(result.embedding, coil, FLAGS.image_size):.4f}")
    print("trained model:", result.model_path)


if __name__ == "__main__":
    app.run(main)
