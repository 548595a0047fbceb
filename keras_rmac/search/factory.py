"""One way to make a search index: `make_index(kind, dimension, **options)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras_rmac.search.base import Index
from keras_rmac.search.exact import ExactIndex
from keras_rmac.search.scann_index import ScannIndex
from keras_rmac.search.scann_policy import SCANN_MODES

KINDS = ("exact", *SCANN_MODES)
"""Index kinds: exact brute force, ScaNN fast (re-ordered), ScaNN compact."""


def make_index(
    kind: str | Callable[..., Index], dimension: int, **options: Any
) -> Index:
    """A new, empty search index.

    `make_index(index.kind, **index.get_config())` makes an empty index with
    the settings of `index`.

    Args:
        kind: `"exact"` (`ExactIndex`, NumPy brute force), `"fast"`
            (`ScannIndex(mode="fast")`: tree + PQ + exact re-ordering),
            `"compact"` (`ScannIndex(mode="compact")`: PQ codes only,
            `bytes_per_vector` bytes each), `"sharded"` (`ShardedIndex`,
            with `shard_kind=` the kind of its shards), or a callable
            `dimension, **options -> Index`.
        dimension: int. The descriptor dimension.
        **options: passed to the index class (e.g. `bytes_per_vector`,
            `num_leaves`, `metadata`). For the ScaNN kinds a `mode` option,
            as `get_config` writes it, must equal `kind`.

    Returns:
        An `Index`.

    Example:

    >>> make_index("exact", 4)
    <ExactIndex dimension=4 count=0>
    >>> make_index("compact", 8, bytes_per_vector=16).bytes_per_vector
    16
    """
    if callable(kind):
        return kind(dimension, **options)
    if kind == "exact":
        return ExactIndex(dimension, **options)
    if kind == "sharded":
        from keras_rmac.search.sharded import ShardedIndex

        return ShardedIndex(dimension, **options)
    if kind in SCANN_MODES:
        mode = options.pop("mode", kind)
        if mode != kind:
            raise ValueError(
                f"`mode` ({mode!r}) contradicts kind={kind!r}: give one of "
                "them, or both equal."
            )
        return ScannIndex(dimension, mode=kind, **options)
    raise ValueError(
        f"`kind` must be one of {KINDS} or a callable dimension -> Index. "
        f"Received: kind={kind!r}"
    )
