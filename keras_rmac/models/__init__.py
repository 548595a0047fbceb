"""Keras models of keras_rmac."""

from keras_rmac.models.listwise_model import ListwiseModel
from keras_rmac.models.listwise_model import two_pass_gradients
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
from keras_rmac.models.value_range import DEFAULT_VALUE_RANGE
from keras_rmac.models.value_range import ValueRangeWarning
from keras_rmac.models.value_range import rescale_to_255
from keras_rmac.models.value_range import validate_value_range

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_VALUE_RANGE",
    "POOLINGS",
    "FeatureEmbedding",
    "ListwiseModel",
    "RMACModel",
    "TripletModel",
    "ValueRangeWarning",
    "make_optimizer",
    "optimizer_step",
    "rescale_to_255",
    "scale_sizes",
    "set_trainable",
    "split_backbone",
    "two_pass_gradients",
    "sum_over_scales",
    "validate_scales",
    "validate_value_range",
]
