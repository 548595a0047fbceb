"""Keras layers of the R-MAC network.

Each layer is a thin wrapper over a pure function of
`keras_rmac.layers.functional`, where the R-MAC math lives.
"""

from keras_rmac.layers import functional
from keras_rmac.layers.gem_pooling import GeMPooling
from keras_rmac.layers.l2_normalize import L2Normalize
from keras_rmac.layers.mac_pooling import MACPooling
from keras_rmac.layers.preprocess import Preprocess
from keras_rmac.layers.region_proposal import RegionProposal
from keras_rmac.layers.rmac_pooling import RMACPooling
from keras_rmac.layers.shift_pca import ShiftPCA
from keras_rmac.layers.spoc_pooling import SPoCPooling

__all__ = [
    "GeMPooling",
    "L2Normalize",
    "MACPooling",
    "Preprocess",
    "RMACPooling",
    "RegionProposal",
    "SPoCPooling",
    "ShiftPCA",
    "functional",
]
