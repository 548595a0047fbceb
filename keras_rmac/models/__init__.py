"""Keras models of keras_rmac."""

from keras_rmac.models.rmac_model import RMACModel
from keras_rmac.models.triplet_model import TripletModel

__all__ = ["RMACModel", "TripletModel"]
