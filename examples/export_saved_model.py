"""Export an R-MAC model for TensorFlow Serving and check what it serves.

Writes OUT/VERSION/, a SavedModel whose `serving_default` signature turns
encoded image files into L2-normalised descriptors, then (with --check)
reloads it the way a server would and compares the served descriptors of
a few images with `RMACModel.extract` on the same files.

Usage:

    WEIGHTS=../shared/data/weights
    python examples/export_saved_model.py \
      --weights=$WEIGHTS/mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5 \
        --out=/tmp/models/rmac --max_size=512 --scales=1,0.707 \
        --check=photo1.jpg,photo2.png

    # or from a model saved after adapt_pca():
    python examples/export_saved_model.py --model=rmac.keras \
        --out=/tmp/models/rmac

Then serve it (see docs/serving.md):

    docker run -p 8501:8501 -v /tmp/models/rmac:/models/rmac \
        -e MODEL_NAME=rmac tensorflow/serving
"""

import base64
import json

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

import keras_rmac.models
from keras_rmac.export import export_saved_model

FLAGS = flags.FLAGS

flags.DEFINE_string("model", None, "A saved RMACModel (.keras).")
flags.DEFINE_string("backbone", "mobilenet_v2", "Backbone when no --model.")
flags.DEFINE_string(
    "weights", "imagenet", "Backbone weights: a file, 'imagenet' or 'none'."
)
flags.DEFINE_string("out", None, "Model base path (TF Serving's).")
flags.DEFINE_integer("version", None, "Version (default: next free).")
flags.DEFINE_integer("max_size", None, "Longest image side at scale 1.")
flags.DEFINE_list("scales", ["1"], "Multi-resolution scales.")
flags.DEFINE_list("warmup", None, "Warm-up images (default: generated).")
flags.DEFINE_list(
    "check", None, "Images to serve after export and compare with extract."
)
flags.mark_flag_as_required("out")


def _model():
    import keras

    if FLAGS.model:
        return keras.saving.load_model(FLAGS.model)
    weights = None if FLAGS.weights.lower() == "none" else FLAGS.weights
    return keras_rmac.models.RMACModel(FLAGS.backbone, weights=weights)


def main(argv):
    del argv
    model = _model()
    scales = tuple(float(s) for s in FLAGS.scales)
    version_dir = export_saved_model(
        model,
        FLAGS.out,
        scales=scales,
        max_size=FLAGS.max_size,
        version=FLAGS.version,
        warmup_images=FLAGS.warmup,
    )
    logging.info("SavedModel written to %s", version_dir)
    if not FLAGS.check:
        return

    # What a client sends: the files' bytes. This is the REST body too.
    data = [open(path, "rb").read() for path in FLAGS.check]
    body = {
        "signature_name": "serving_default",
        "instances": [
            {"image_bytes": {"b64": base64.b64encode(d).decode("ascii")}}
            for d in data
        ],
    }
    logging.info("REST request body: %s...", json.dumps(body)[:120])

    served = (
        tf.saved_model.load(version_dir)
        .signatures["serving_default"](image_bytes=tf.constant(data))[
            "descriptor"
        ]
        .numpy()
    )
    expected = model.extract(
        FLAGS.check, max_size=FLAGS.max_size, scales=scales
    )
    logging.info(
        "served %s descriptors; max |served - extract| = %.3g",
        served.shape,
        float(np.abs(served - expected).max()),
    )


if __name__ == "__main__":
    app.run(main)
