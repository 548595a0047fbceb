"""The report of a cleaning run: what was kept and dropped, and why."""

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from keras_rmac.data.cleaning.config import DROP_REASONS


@dataclasses.dataclass
class CleaningReport:
    """What `clean_dataset` kept and dropped, and why.

    Args:
        output_path: str. The clean list.
        num_images: int. Input images.
        num_kept: int. Images in the clean list.
        num_classes: int. Input classes.
        num_classes_kept: int. Classes in the clean list.
        dropped_counts: dict reason -> number of images.
        dropped: list of dicts (path, label, reason, detail).
        classes: list of per-class dicts (label, num_images, num_kept,
            num_pairs, num_verified_pairs, seconds, resumed).
        seconds: float. Wall time of the run.
        config: dict. The `CleaningConfig` used.
    """

    output_path: str
    num_images: int
    num_kept: int
    num_classes: int
    num_classes_kept: int
    dropped_counts: dict[str, int]
    dropped: list[dict[str, str]]
    classes: list[dict[str, Any]]
    seconds: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self, max_listed: int = 20) -> str:
        """A short human-readable account of the run."""
        computed = [c["seconds"] for c in self.classes if not c["resumed"]]
        lines = [
            f"Clean list: {self.output_path}",
            f"Images: {self.num_images} in, {self.num_kept} kept, "
            f"{self.num_images - self.num_kept} dropped",
            f"Classes: {self.num_classes} in, {self.num_classes_kept} kept",
        ]
        for reason in DROP_REASONS:
            lines.append(
                f"  dropped {reason}: {self.dropped_counts.get(reason, 0)}"
            )
        resumed = sum(1 for c in self.classes if c["resumed"])
        lines.append(
            f"Classes computed: {len(computed)} (resumed from work dir: "
            f"{resumed}); median {_median(computed):.2f} s per class; "
            f"wall time {self.seconds:.1f} s"
        )
        if self.dropped:
            lines.append(f"First dropped images (of {len(self.dropped)}):")
            for d in self.dropped[:max_listed]:
                detail = f" ({d['detail']})" if d["detail"] else ""
                lines.append(
                    f"  {d['path']} [{d['label']}]: {d['reason']}{detail}"
                )
        return "\n".join(lines) + "\n"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0
