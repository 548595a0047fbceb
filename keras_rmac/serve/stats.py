"""Request counts and latencies for the service's stats endpoint."""

from __future__ import annotations

import collections
import threading

import numpy as np

__all__ = ["RequestStats"]

_WINDOW = 2048
"""Latencies kept per route (the most recent ones)."""


class RequestStats:
    """Counts answers by route and status, and keeps recent latencies.

    Thread-safe; `record` is called once per answered request.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = collections.Counter()
        self._latencies = collections.defaultdict(
            lambda: collections.deque(maxlen=_WINDOW)
        )

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[(route, int(status))] += 1
            self._latencies[route].append(float(seconds))

    def summary(self) -> dict:
        """`{route: {"count", "by_status", "p50_ms", "p95_ms"}}`."""
        with self._lock:
            counts = dict(self._counts)
            latencies = {r: list(d) for r, d in self._latencies.items()}
        out = {}
        for (route, status), n in sorted(counts.items()):
            entry = out.setdefault(route, {"count": 0, "by_status": {}})
            entry["count"] += n
            entry["by_status"][str(status)] = n
        for route, values in latencies.items():
            p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
            out[route]["p50_ms"] = round(float(p50), 2)
            out[route]["p95_ms"] = round(float(p95), 2)
        return out
