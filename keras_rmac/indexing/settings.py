"""How a folder is indexed: one settings dataclass and its defaults.

Light on purpose (standard library only at import time): the command line
reads `DEFAULT_MAX_SIZE` and `BYTES_PER_VECTOR` from here before any
framework is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from keras_rmac.checks import check_int
from keras_rmac.data.pixel_limits import DEFAULT_DRAFT_ABOVE
from keras_rmac.data.pixel_limits import DEFAULT_MAX_PIXELS

__all__ = [
    "BYTES_PER_VECTOR",
    "DEFAULT_BYTES_PER_VECTOR",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MODE",
    "DEFAULT_SCALES",
    "IndexSettings",
    "LEGACY_DRAFT_ABOVE",
    "recorded_draft_above",
]

DEFAULT_MAX_SIZE = 512
"""Longest image side at scale 1 of a new index."""
DEFAULT_SCALES = (1.0,)
DEFAULT_MODE = "fast"
DEFAULT_BYTES_PER_VECTOR = 64
BYTES_PER_VECTOR = (64, 128)
"""Bytes per photo of the compact search mode."""
LEGACY_DRAFT_ABOVE = 100_000_000
"""`draft_above` of an index that does not record it: keras_rmac 0.2.0
refused every image over 100 megapixels, so it decoded all its photos
whole, as `draft_above=100_000_000` does."""


def recorded_draft_above(recorded: Mapping[str, Any] | None) -> int | None:
    """The `draft_above` an index was built with (from `index.json` or the
    search index's metadata); `LEGACY_DRAFT_ABOVE` when not recorded."""
    if not recorded or "draft_above" not in recorded:
        return LEGACY_DRAFT_ABOVE
    return recorded["draft_above"]


def _kinds() -> tuple[str, ...]:
    from keras_rmac.search import KINDS

    return KINDS


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """How `index_folder` describes photos and builds the search index.

    Fields left at None take the value the index was built with, or the
    default for a new index. `max_size` and `scales` of an existing index
    and `draft_above` cannot change (descriptors at different sizes, or
    of two decodings, do not mix) unless it is rebuilt; `mode`,
    `bytes_per_vector` and `max_pixels` can (only the search index is
    rebuilt, from the stored descriptors; `max_pixels` only decides which
    files are accepted).

    Attributes:
        mode: str or None. Search operating point, one of
            `keras_rmac.search.KINDS`: `"fast"` (ScaNN, float
            re-ordering), `"compact"` (ScaNN codes only,
            `bytes_per_vector` bytes per photo) or `"exact"` (brute
            force). None: the index's (`"fast"` for a new index).
        bytes_per_vector: int or None. 64 or 128, for `"compact"`. None:
            the index's (64 for a new index).
        max_size: int or None. Longest image side at scale 1. None: the
            index's (`DEFAULT_MAX_SIZE` = 512 for a new index).
        scales: sequence of float or None. Multi-resolution scales. None:
            the index's (`(1.0,)` for a new index).
        keep_descriptors: bool. Keep the float descriptors in `.work/`
            after the run, so later runs only describe new or changed
            photos. Defaults to True.
        hash_contents: bool. Decide whether a file changed by its sha256
            (and size) instead of its modification time. Defaults to False.
        shard_size: int. Files per committed shard. Defaults to 256.
        batch_size: int. Images per forward pass. Defaults to 8.
        num_workers: int. Image decoding threads (0: the main thread).
            Defaults to 4.
        model_spec: dict or None. How the model was asked for (recorded
            for the command line). None: the index's. Defaults to None.
        max_pixels: int. Largest width x height a photo may be decoded to
            (larger files are skipped as possible decompression bombs; see
            `keras_rmac.data.pixel_limits`). Files refused as too large are
            tried again by every later run (a header read), so raising it
            indexes them. Defaults to `DEFAULT_MAX_PIXELS` (100 MP).
        draft_above: int or None. A JPEG declaring more pixels than this
            is decoded at reduced scale (1/2 to 1/8, at least twice the
            largest resized size), and only that reduced size must fit
            `max_pixels`; None decodes every photo whole. Recorded in the
            index: an existing index cannot change it without a rebuild.
            Defaults to `DEFAULT_DRAFT_ABOVE` (100 MP).

    Example:

    >>> IndexSettings(mode="compact", max_size=384).bytes_per_vector is None
    True
    >>> IndexSettings(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: `batch_size` must be an int >= 1. Received: batch_size=0
    """

    mode: str | None = None
    bytes_per_vector: int | None = None
    max_size: int | None = None
    scales: tuple[float, ...] | None = None
    keep_descriptors: bool = True
    hash_contents: bool = False
    shard_size: int = 256
    batch_size: int = 8
    num_workers: int = 4
    model_spec: dict | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft_above: int | None = DEFAULT_DRAFT_ABOVE

    def __post_init__(self):
        kinds = _kinds()
        if self.mode is not None and self.mode not in kinds:
            raise ValueError(
                f"`mode` must be one of {kinds}. Received: {self.mode!r}"
            )
        if (
            self.bytes_per_vector is not None
            and self.bytes_per_vector not in BYTES_PER_VECTOR
        ):
            raise ValueError(
                f"`bytes_per_vector` must be one of {BYTES_PER_VECTOR}. "
                f"Received: {self.bytes_per_vector!r}"
            )
        if self.max_size is not None and (
            isinstance(self.max_size, bool)
            or int(self.max_size) != self.max_size
            or self.max_size < 1
        ):
            raise ValueError(
                "`max_size` must be a positive int or None. Received: "
                f"{self.max_size!r}"
            )
        if self.scales is not None:
            scales = tuple(float(s) for s in self.scales)
            if not scales or any(not s > 0 for s in scales):
                raise ValueError(
                    f"`scales` must be positive numbers. Received: {scales!r}"
                )
            object.__setattr__(self, "scales", scales)
        for name in ("shard_size", "batch_size"):
            check_int(name, getattr(self, name))
        check_int("num_workers", self.num_workers, minimum=0)
        check_int("max_pixels", self.max_pixels)
        check_int("draft_above", self.draft_above, minimum=0, allow_none=True)

    def replace(self, **changes: Any) -> IndexSettings:
        """A copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def resolve(
        self, recorded: Mapping[str, Any] | None, where: str = "the index"
    ) -> IndexSettings:
        """Fills the fields left at None from an index's recorded settings.

        Args:
            recorded: dict or None. The index's recorded settings
                (`index.json`), None for a new index.
            where: str. Names the index in error messages.

        Returns:
            A copy with every field set.

        Raises:
            keras_rmac.search.IndexMismatchError: `max_size`, `scales` or
                `draft_above` differ from the recorded ones (an index
                that does not record `draft_above` was built with
                `LEGACY_DRAFT_ABOVE`).
        """
        recorded = recorded or {}
        max_size = self.max_size or recorded.get("max_size") or DEFAULT_MAX_SIZE
        scales = self.scales or tuple(recorded.get("scales", DEFAULT_SCALES))
        for name, value, old in (
            ("max_size", max_size, recorded.get("max_size")),
            ("scales", list(scales), recorded.get("scales")),
        ):
            if old is not None and value != old:
                from keras_rmac.search import IndexMismatchError

                raise IndexMismatchError(
                    f"The index in {where} was built with {name}={old}, "
                    f"not {value}: descriptors at different sizes do not "
                    f"mix. Pass the same {name}, or rebuild the index "
                    "(--rebuild)."
                )
        if recorded:
            old = recorded_draft_above(recorded)
            if self.draft_above != old:
                from keras_rmac.search import IndexMismatchError

                raise IndexMismatchError(
                    f"The index in {where} was built with draft_above="
                    f"{_pixels(old)} (JPEGs declaring more pixels are "
                    "decoded at reduced scale), not "
                    f"{_pixels(self.draft_above)}: descriptors of two "
                    "decodings do not mix. Pass the same draft_above, or "
                    "rebuild the index (--rebuild)."
                )
        return self.replace(
            max_size=int(max_size),
            scales=scales,
            mode=self.mode or recorded.get("mode", DEFAULT_MODE),
            bytes_per_vector=self.bytes_per_vector
            or recorded.get("bytes_per_vector", DEFAULT_BYTES_PER_VECTOR),
            model_spec=self.model_spec
            if self.model_spec is not None
            else recorded.get("model_spec"),
        )


def _pixels(value: int | None) -> str:
    return "None" if value is None else f"{value:,}"
