"""Keras models of keras_rmac."""

from keras_rmac.models.rmac_model import RMACModel

__all__ = ["RMACModel"]
