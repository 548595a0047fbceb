"""Keras layers of the R-MAC network.

Each layer is a thin wrapper over a pure function of
`keras_rmac.layers.functional`, where the R-MAC math lives.
"""

from keras_rmac.layers import box_ops
from keras_rmac.layers import functional
from keras_rmac.layers.anchors import AnchorGenerator
from keras_rmac.layers.box_pooling import BoxMaxPooling
from keras_rmac.layers.gem_pooling import GeMPooling
from keras_rmac.layers.l2_normalize import L2Normalize
from keras_rmac.layers.learned_regions import LearnedRegionPooling
from keras_rmac.layers.mac_pooling import MACPooling
from keras_rmac.layers.preprocess import Preprocess
from keras_rmac.layers.region_proposal import RegionProposal
from keras_rmac.layers.rmac_pooling import RMACPooling
from keras_rmac.layers.rpn_head import RPNHead
from keras_rmac.layers.shift_pca import ShiftPCA
from keras_rmac.layers.spoc_pooling import SPoCPooling

__all__ = [
    "AnchorGenerator",
    "BoxMaxPooling",
    "GeMPooling",
    "L2Normalize",
    "LearnedRegionPooling",
    "MACPooling",
    "Preprocess",
    "RMACPooling",
    "RPNHead",
    "RegionProposal",
    "SPoCPooling",
    "ShiftPCA",
    "box_ops",
    "functional",
]
