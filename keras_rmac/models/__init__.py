"""Keras models of keras_rmac."""

from keras_rmac.models.multiscale import scale_sizes
from keras_rmac.models.multiscale import sum_over_scales
from keras_rmac.models.multiscale import validate_scales
from keras_rmac.models.rmac_model import POOLINGS
from keras_rmac.models.rmac_model import RMACModel
from keras_rmac.models.triplet_model import DEFAULT_LEARNING_RATE
from keras_rmac.models.triplet_model import FeatureEmbedding
from keras_rmac.models.triplet_model import TripletModel
from keras_rmac.models.triplet_model import make_optimizer
from keras_rmac.models.triplet_model import optimizer_step
from keras_rmac.models.triplet_model import set_trainable
from keras_rmac.models.triplet_model import split_backbone

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "POOLINGS",
    "FeatureEmbedding",
    "RMACModel",
    "TripletModel",
    "make_optimizer",
    "optimizer_step",
    "scale_sizes",
    "set_trainable",
    "split_backbone",
    "sum_over_scales",
    "validate_scales",
]
