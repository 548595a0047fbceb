"""One training procedure shared by `keras-rmac train` and the examples.

`train(config)` runs the whole recipe of Gordo et al. (2017) on a labelled
image list:

1. read the list (CSV, folder per class or COIL-100's train split) and
   decode every image once, dropping and listing the bad ones;
2. build the `RMACModel`, learn shift + PCA-whitening from the region
   vectors of training images (`adapt_pca`);
3. wrap it in a `TripletModel` (BatchNorm frozen, early backbone layers
   optionally frozen) and compile it with the triplet or contrastive loss
   (`loss="triplet" | "contrastive"`), or, for `loss="ap"`, in a
   `ListwiseModel` with the listwise AP loss;
4. `model.fit` on the triplet dataset, with hard-negative mining (or, for
   the AP loss, on class-balanced P x K batches), a CSV log of the loss,
   and `ResumableBackupAndRestore` checkpoints every `checkpoint_every`
   steps;
5. save the trained `RMACModel` as `<output_dir>/model.keras`.

Resuming: run the same command again after an interruption (even
`kill -9`): weights, optimizer state, the triplet table and the position in
the epoch are restored from `<output_dir>/backup`, and the remaining steps
see the same triplets, in the same order and with the same augmentation, as
an uninterrupted run (the epoch order and augmentation are seeded by epoch
and position, see `keras_rmac.data.triplets`).

Distribution: pass a `tf.distribute` strategy (`MirroredStrategy` for
several devices of one machine, `MultiWorkerMirroredStrategy` for several
machines with `TF_CONFIG` set); the model is built and compiled in its
scope and `batch_size` is the global batch. Every worker writes its own
backup folder (non-chief workers under `<output_dir>/workers/<id>`), and
only the chief writes the final model.

Learned regions (the paper's region proposal network): `train_rpn(RPNConfig)`
trains the RPN of an `RMACModel(regions="rpn")` on the boxes of a cleaned
list, backbone frozen (module `rpn`); `train` then trains the descriptor on
the learned regions with `TrainConfig(rpn_model=<its model.keras>)`.

Modules: `config` (`TrainConfig`, `RPNConfig`), `callbacks`
(`ResumableBackupAndRestore`, `RandomTriplets`), `feature_cache` (cached
frozen-prefix features) and `loop` (`train` and its steps), `rpn`
(`train_rpn`) and `rpn_features` (the RPN trainer's feature maps, cached on
disk).

The names of `config` are imported with the package, the others on first
use, so that the settings and their defaults can be read (as `keras-rmac
train --help` does) without loading TensorFlow.
"""

from keras_rmac._lazy import lazy_attributes
from keras_rmac.training.config import DEFAULT_MARGINS
from keras_rmac.training.config import LOSSES
from keras_rmac.training.config import OPTIMIZERS
from keras_rmac.training.config import RPNConfig
from keras_rmac.training.config import TrainConfig

_LAZY = {
    "RandomTriplets": "keras_rmac.training.callbacks",
    "ResumableBackupAndRestore": "keras_rmac.training.callbacks",
    "adapt_pca_from_features": "keras_rmac.training.feature_cache",
    "cache_key": "keras_rmac.training.feature_cache",
    "cached_features": "keras_rmac.training.feature_cache",
    "feature_extract_fn": "keras_rmac.training.feature_cache",
    "features_key": "keras_rmac.training.feature_cache",
    "TrainResult": "keras_rmac.training.loop",
    "adapt_pca": "keras_rmac.training.loop",
    "build_loss": "keras_rmac.training.loop",
    "build_optimizer": "keras_rmac.training.loop",
    "load_training_images": "keras_rmac.training.loop",
    "train": "keras_rmac.training.loop",
    "optimizer_step": "keras_rmac.models",
    "RPNResult": "keras_rmac.training.rpn",
    "train_rpn": "keras_rmac.training.rpn",
}
"""Names imported on first use: their modules import Keras and TensorFlow."""

__all__ = [
    "DEFAULT_MARGINS",
    "LOSSES",
    "OPTIMIZERS",
    "RPNConfig",
    "RPNResult",
    "RandomTriplets",
    "ResumableBackupAndRestore",
    "TrainConfig",
    "TrainResult",
    "adapt_pca",
    "adapt_pca_from_features",
    "build_loss",
    "build_optimizer",
    "cache_key",
    "cached_features",
    "feature_extract_fn",
    "features_key",
    "load_training_images",
    "optimizer_step",
    "train",
    "train_rpn",
]


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
