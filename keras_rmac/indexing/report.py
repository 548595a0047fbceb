"""`IndexReport`: what one indexing run did."""

from __future__ import annotations

import dataclasses
import os

from keras_rmac.indexing.layout import REPORT_FILE

__all__ = ["IndexReport"]


@dataclasses.dataclass
class IndexReport:
    """What one `index_folder` run did.

    Attributes:
        photos_dir: absolute path of the indexed folder.
        index_dir: absolute path of the index directory.
        listed: image files found in the folder.
        indexed: photos in the searchable index after the run.
        extracted: photos described by the model during this run.
        reused: photos whose stored descriptor (or stored failure) was
            still valid.
        removed: photos dropped because their file is gone.
        failed: every unreadable file of the folder, as
            `{"path": ..., "reason": ...}` (relative paths), including
            those found by earlier runs and not retried.
        new_failures: how many of `failed` were found during this run.
        rebuilt: whether the searchable index was (re)built.
        mode: search mode of the searchable index.
        bytes_per_vector: bytes per photo of the compact index, or None.
        seconds: wall-clock time of the run.
        seconds_extracting: time spent decoding and describing.
    """

    photos_dir: str
    index_dir: str
    listed: int = 0
    indexed: int = 0
    extracted: int = 0
    reused: int = 0
    removed: int = 0
    failed: list = dataclasses.field(default_factory=list)
    new_failures: int = 0
    rebuilt: bool = False
    mode: str = "fast"
    bytes_per_vector: int | None = None
    seconds: float = 0.0
    seconds_extracting: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """Human-readable summary, a few lines."""
        lines = [
            f"Indexed {self.indexed} photos from {self.photos_dir} into "
            f"{self.index_dir} ({self.mode} mode"
            + (
                f", {self.bytes_per_vector} bytes/vector"
                if self.mode == "compact"
                else ""
            )
            + ")",
            f"  listed {self.listed}, described {self.extracted}, reused "
            f"{self.reused}, removed {self.removed}, unreadable "
            f"{len(self.failed)} ({self.new_failures} new)",
            f"  {self.seconds:.1f} s in all, {self.seconds_extracting:.1f} s "
            "describing",
        ]
        for item in self.failed[:20]:
            lines.append(f"  skipped {item['path']}: {item['reason']}")
        if len(self.failed) > 20:
            lines.append(
                f"  ... and {len(self.failed) - 20} more, see "
                f"{os.path.join(self.index_dir, REPORT_FILE)}"
            )
        return "\n".join(lines)
