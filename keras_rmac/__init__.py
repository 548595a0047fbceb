"""keras_rmac: end-to-end R-MAC image retrieval for Keras 3 / TensorFlow.

Gordo, Almazan, Revaud, Larlus. "End-to-end Learning of Deep Visual
Representations for Image Retrieval". IJCV 2017. arXiv:1610.07940.
"""

from keras_rmac.indexing import PhotoIndex
from keras_rmac.indexing import index_folder
from keras_rmac.layers import GeMPooling
from keras_rmac.layers import L2Normalize
from keras_rmac.layers import MACPooling
from keras_rmac.layers import RegionProposal
from keras_rmac.layers import RMACPooling
from keras_rmac.layers import ShiftPCA
from keras_rmac.layers import SPoCPooling
from keras_rmac.models import RMACModel
from keras_rmac.models import TripletModel
from keras_rmac.version import __version__

__all__ = [
    "GeMPooling",
    "L2Normalize",
    "MACPooling",
    "PhotoIndex",
    "RMACModel",
    "RMACPooling",
    "RegionProposal",
    "SPoCPooling",
    "ShiftPCA",
    "TripletModel",
    "__version__",
    "index_folder",
]
