"""Nearest-neighbour search over R-MAC descriptors.

`ExactIndex` (NumPy brute force, the oracle), `ScannIndex` (ScaNN tree +
product quantisation, `mode="fast"` or `mode="compact"`) and `ShardedIndex`
(one of those per shard, top-k merged by score) share the `Index`
interface: `add`, `search`, `save`, `load`, `metadata`, `get_config` /
`from_config`. `make_index(kind, dimension, **options)` makes any of them;
`load_index` opens any saved index; `keras_rmac.search.expansion` holds
query expansion and database-side augmentation;
`keras_rmac.search.scann_policy` the rules that pick ScaNN's parameters,
`keras_rmac.search.scann_tuning` the recall measurement behind
`ScannIndex.operating_point` (`saved_operating_point` reads it from disk),
`keras_rmac.search.scann_builds` the rebuilds of a build that misses its
recall target (more leaves, then no tree).
"""

import warnings

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
from keras_rmac.search.scann_tuning import OperatingPoint
from keras_rmac.search.scann_tuning import saved_operating_point
from keras_rmac.search.sharded import ShardedIndex
from keras_rmac.search.storage import INDEX_FORMAT_VERSION
from keras_rmac.search.storage import IndexMismatchError

__all__ = [
    "INDEX_FORMAT_VERSION",
    "KINDS",
    "ExactIndex",
    "Index",
    "IndexMismatchError",
    "OperatingPoint",
    "ScannIndex",
    "ShardedIndex",
    "alpha_query_expansion",
    "average_query_expansion",
    "database_side_augmentation",
    "expand_queries",
    "load_index",
    "make_index",
    "saved_operating_point",
    "search_with_query_expansion",
    "top_k_inner_product",
]


def __getattr__(name):
    # Deprecated spelling of 0.2.0: `FORMAT_VERSION` also named the folder
    # index's settings version in keras_rmac.indexing.
    if name == "FORMAT_VERSION":
        warnings.warn(
            "keras_rmac.search.FORMAT_VERSION is deprecated; use "
            "keras_rmac.search.INDEX_FORMAT_VERSION.",
            DeprecationWarning,
            stacklevel=2,
        )
        return INDEX_FORMAT_VERSION
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
