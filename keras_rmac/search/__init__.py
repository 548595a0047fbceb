"""Nearest-neighbour search over R-MAC descriptors.

`ExactIndex` (NumPy brute force, the oracle) and `ScannIndex` (ScaNN tree +
product quantisation, `mode="fast"` or `mode="compact"`) share the `Index`
interface: `add`, `search`, `save`, `load`, `metadata`. `load_index` opens
any saved index; `keras_rmac.search.expansion` holds query expansion and
database-side augmentation.
"""

from keras_rmac.search.base import Index
from keras_rmac.search.base import load_index
from keras_rmac.search.exact import ExactIndex
from keras_rmac.search.exact import top_k_inner_product
from keras_rmac.search.expansion import alpha_query_expansion
from keras_rmac.search.expansion import average_query_expansion
from keras_rmac.search.expansion import database_side_augmentation
from keras_rmac.search.expansion import expand_queries
from keras_rmac.search.expansion import search_with_query_expansion
from keras_rmac.search.factory import KINDS
from keras_rmac.search.factory import make_index
from keras_rmac.search.scann_index import ScannIndex
from keras_rmac.search.storage import FORMAT_VERSION
from keras_rmac.search.storage import IndexMismatchError
from keras_rmac.search.storage import fingerprint_arrays

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "ExactIndex",
    "Index",
    "IndexMismatchError",
    "ScannIndex",
    "alpha_query_expansion",
    "average_query_expansion",
    "database_side_augmentation",
    "expand_queries",
    "fingerprint_arrays",
    "load_index",
    "make_index",
    "search_with_query_expansion",
    "top_k_inner_product",
]
