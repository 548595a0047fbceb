"""One way to make a search index: `make_index(kind, dimension, **options)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras_rmac.search.base import Index
from keras_rmac.search.exact import ExactIndex
from keras_rmac.search.scann_index import ScannIndex

KINDS = ("exact", "fast", "compact")
"""Index kinds: exact brute force, ScaNN fast (re-ordered), ScaNN compact."""


def make_index(
    kind: str | Callable[[int], Index], dimension: int, **options: Any
) -> Index:
    """A new, empty search index.

    Args:
        kind: `"exact"` (`ExactIndex`, NumPy brute force), `"fast"`
            (`ScannIndex(mode="fast")`: tree + PQ + exact re-ordering),
            `"compact"` (`ScannIndex(mode="compact")`: PQ codes only,
            `bytes_per_vector` bytes each), or a callable
            `dimension -> Index`.
        dimension: int. The descriptor dimension.
        **options: passed to the index class (e.g. `bytes_per_vector`,
            `num_leaves`, `metadata`).

    Returns:
        An `Index`.

    Example:

    >>> make_index("exact", 4)
    <ExactIndex dimension=4 count=0>
    """
    if callable(kind):
        return kind(dimension, **options)
    if kind == "exact":
        return ExactIndex(dimension, **options)
    if kind in ("fast", "compact"):
        return ScannIndex(dimension, mode=kind, **options)
    raise ValueError(
        f"`kind` must be one of {KINDS} or a callable dimension -> Index. "
        f"Received: kind={kind!r}"
    )
