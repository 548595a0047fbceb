"""Recall-targeted operating points for `ScannIndex`: measure, then choose.

A built ScaNN searcher is fast or accurate depending on two search-time
knobs: the leaves scored per query and the candidates re-ordered exactly
(fast mode). Which values reach a given recall depends on the data's
neighbourhood structure far more than on its size, so `ScannIndex`
measures it at build time instead of guessing:

1. `sample_rows` draws `sample_size_for(N)` rows of the indexed data as queries;
2. `exact_neighbours` finds their exact top-k among the *other* rows (a
   query is never its own trivial neighbour: each query asks for k + 1
   results and its own row is dropped, in the truth and in every
   approximate result alike);
3. `tune` walks the (leaves searched, re-order depth) grid along the
   frontier of the target recall (more leaves, then fewer candidates
   while the target holds), times the settings on that frontier, and
   keeps the fastest one;
4. the result is an `OperatingPoint`: the chosen knobs, the recall@k
   measured on the sample (with its size), the queries per second of the
   batched sample search, and every setting measured on the way, which
   `ScannIndex.search(..., recall=...)` uses to trade speed for recall
   without a rebuild.

"Reaching" a recall level means a sample recall of at least the level
plus two standard errors of the sample mean (of that setting's
per-query recalls), so that the recall of independent queries from the
same distribution is at least the level too; the recorded `recall` is
the plain sample mean (see `benchmarks/search.py` for how it compares
with independent queries). The same rule holds for the build target, for
`RECALL_LEVELS` and for any `recall=` level of a search
(`OperatingPoint.setting_for`, used by `ScannIndex` and `ShardedIndex`
alike).

The sample queries are indexed rows, and the tree was trained on them:
at few leaves searched they land in the leaf of their neighbours a little
more often than independent queries do. Measured on 8000 x 32 clustered
rows (400 centres, 2000 independent queries around the same centres, 3
seeds): a `ScannIndex` with 89 leaves overstates recall@10 by 0.024-0.030
at 1 leaf searched, 0.018-0.032 at 2, about 0.01 at 4-6 and under 0.005
from 8 leaves on; 4 shards merged (`ShardedIndex`) by at most 0.016. The
margin of a 1000-row sample (two standard errors: about 0.023 at a recall
of 0.7, 0.018 at 0.8, 0.0065 near 0.95) absorbs most of it: over 10 seeds
the recall of the setting chosen for 0.5, 0.7, 0.8 and 0.9 was at worst
0.002 below the level on independent queries (without the margin, 0.017
below 0.8). Queries from elsewhere (around centres the collection does
not have) get far less at every setting (0.66-0.83 at the setting
reaching 0.95 on the sample, 0.19-0.20 at 1 leaf of 4 shards where the
sample had 0.36): no measurement on indexed rows can promise their
recall.

Example:

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((300, 16)).astype(np.float32)
>>> x /= np.linalg.norm(x, axis=1, keepdims=True)
>>> rows = sample_rows(len(x), 50)
>>> truth = exact_neighbours(x, rows, k=5)
>>> truth.shape, bool((truth != rows[:, None]).all())
((50, 5), True)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_rmac.search import storage
from keras_rmac.search.exact import top_k_inner_product
from keras_rmac.search.scann_policy import ScannParams

logger = logging.getLogger(__name__)

# Queries of the build-time measurement (all rows when fewer): up to
# SAMPLE_SIZE (a standard error of about 0.003 on a recall@10 near 0.95),
# fewer for big collections, so that the exact ground truth (sample x N
# inner products) stays within SAMPLE_PAIRS, at least MIN_SAMPLE_SIZE.
# The measurement must add at most 25% to the build at 1M x 512
# (benchmarks/search.py --recall): 250 queries added 7% there but their
# wider margin cost 1.5x speed; 1000 added 21% on one run and 28% on
# another (2 shared cores, load 15); 600 (standard error about 0.004)
# keeps a margin below 25%.
SAMPLE_SIZE = 1000
MIN_SAMPLE_SIZE = 250
SAMPLE_PAIRS = 600_000_000
# A setting reaches the target when its sample recall is at least
# target + MARGIN_STANDARD_ERRORS standard errors of the sample mean.
MARGIN_STANDARD_ERRORS = 2.0
# The settings timed on the frontier: the sample searched at least
# TIMING_REPEATS times and for TIMING_SECONDS, the best time kept (one
# search of a fast setting takes milliseconds; the machine may be shared).
TIMING_REPEATS = 2
TIMING_SECONDS = 0.2
# The walk stops adding leaves once a frontier setting is this much
# slower than the fastest one found.
SLOWER_STOP = 2.0
# Compact mode without a reachable target: the cheapest setting within
# this much of the best measured recall.
PLATEAU_TOLERANCE = 0.005
# Besides the target, the frontiers of these recall levels are measured
# too (one timing each), for `ScannIndex.search(..., recall=...)`.
RECALL_LEVELS = (0.99,)
# The largest share of the leaves the tuner searches (beyond it, a
# fast-mode build is redone with more leaves), and the re-order depths it
# tries, as multiples of k.
MAX_SEARCHED_SHARE = 0.25
REORDER_DEPTHS_PER_K = (1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 100)
# A fast-mode build whose target is out of reach within
# `MAX_SEARCHED_SHARE` of its leaves is rebuilt with this many times
# more (smaller) leaves, then without a tree
# (`keras_rmac.search.scann_builds`).
REBUILD_LEAVES_FACTOR = 2


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A measured search setting of a built `ScannIndex`.

    Recorded in the manifest (`params.operating_point`) and exposed as
    `ScannIndex.operating_point`; None for indexes built without a
    measurement (`target_recall=None`) or saved by keras_rmac < 0.3.

    Attributes:
        recall: float. Mean recall@`k` of the sample queries with the
            chosen setting (their own rows excluded).
        k: int. The `k` of the recall.
        sample_size: int. Sample queries measured.
        num_leaves_to_search: int. Chosen leaves searched (0: no tree).
        reorder_num_neighbors: int or None. Chosen re-order depth (fast
            mode with codes), else None.
        queries_per_second: float. Batched sample search at build time.
        target_recall: float or None. What was asked for.
        reached: bool. Whether the target was reached (with the margin).
        points: list of `[leaves, reorder, recall, queries_per_second,
            standard_error]`, every setting measured (QPS from one
            timing, or the best of `TIMING_REPEATS` for the settings on
            the frontier; the standard error of its sample recall).
            Points saved before the standard error was recorded have
            four elements (`reaches` bounds their error).
        seconds: float. Time the measurement took at build (ground
            truth, searches and any rebuild).
        discarded: list of `[num_leaves, recall]`, the builds measured
            and discarded before this one because they missed the
            target (0 leaves: no tree), each with its best sample recall
            (`keras_rmac.search.scann_builds`); empty when the first
            build was kept.
    """

    recall: float
    k: int
    sample_size: int
    num_leaves_to_search: int
    reorder_num_neighbors: int | None
    queries_per_second: float
    target_recall: float | None
    reached: bool
    points: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    discarded: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (the manifest's form)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None) -> OperatingPoint | None:
        """The inverse of `to_dict` (None stays None)."""
        if not config:
            return None
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def describe(self) -> str:
        """One line: recall, sample, setting and speed."""
        setting = (
            f"{self.num_leaves_to_search} leaves searched"
            if self.num_leaves_to_search
            else "no tree"
        )
        if self.reorder_num_neighbors:
            setting += f", {self.reorder_num_neighbors} re-ordered"
        target = ""
        if self.target_recall is not None:
            target = f" (target {self.target_recall:g}"
            target += ")" if self.reached else ", not reached)"
        tried = ", ".join(
            f"{f'{leaves} leaves' if leaves else 'no tree'} "
            f"(recall {recall:.3f})"
            for leaves, recall in self.discarded
        )
        return (
            f"recall@{self.k} {self.recall:.3f} on {self.sample_size} "
            f"sample rows, own row excluded{target}; {setting}; "
            f"{self.queries_per_second:.0f} queries/s at build"
            + (f"; builds discarded: {tried}" if tried else "")
        )

    def setting_for(self, recall: float) -> tuple[int, int | None]:
        """The fastest measured `(leaves, reorder)` reaching `recall`.

        A setting reaches `recall` when its sample recall is at least
        `recall` plus `MARGIN_STANDARD_ERRORS` of its standard errors
        (`reaches`), as the build target must. Settings measured but not
        timed count as slower than every timed one. When no measured
        setting reaches `recall`, the fastest of the most accurate ones.

        Example (the second point misses 0.8 by its margin):

        >>> point = OperatingPoint(0.9, 10, 100, 4, 20, 900.0, 0.9, True,
        ...     points=[[1, 20, 0.7, 2000.0, 0.02],
        ...             [2, 20, 0.82, 1500.0, 0.015],
        ...             [4, 20, 0.9, 900.0, 0.01]])
        >>> point.setting_for(0.5), point.setting_for(0.8)
        ((1, 20), (4, 20))
        """
        points = [p for p in self.points if self.reaches(p, recall)]
        if not points:
            top = max(p[2] for p in self.points)
            points = [p for p in self.points if p[2] == top]
        best = max(points, key=lambda p: (p[3] or 0.0, -p[0], -(p[1] or 0)))
        return int(best[0]), best[1]

    def reaches(self, point: Sequence, recall: float) -> bool:
        """Whether a measured point's sample recall reaches `recall` with
        the margin of `MARGIN_STANDARD_ERRORS` standard errors.

        A point saved without its standard error (four elements) gets
        the largest one a mean of `sample_size` recalls in [0, 1] can
        have, `sqrt(r (1 - r) / sample_size)`. The stored recall is
        rounded to 4 decimals: half a unit of that counts as reached.

        >>> point = OperatingPoint(0.9, 10, 100, 4, 20, 900.0, 0.9, True)
        >>> point.reaches([4, 20, 0.9, 900.0, 0.01], 0.88)
        True
        >>> point.reaches([4, 20, 0.9, 900.0], 0.88)  # 2 x 0.03 margin
        False
        """
        mean = float(point[2])
        if len(point) > 4 and point[4] is not None:
            error = float(point[4])
        else:
            error = math.sqrt(
                max(0.0, mean * (1.0 - mean)) / max(1, self.sample_size)
            )
        return mean >= recall + MARGIN_STANDARD_ERRORS * error - 5e-5


def tuning_leaves_grid(num_leaves: int, requested: int | None = None) -> list:
    """Leaves-searched values the tuner tries, increasing.

    `[0]` without a tree; `[requested]` (capped) when the user fixed it;
    else 1, 2, 3, 4, 6, 8, 12 ... and `MAX_SEARCHED_SHARE` of the leaves
    (at least 1).
    """
    if not num_leaves:
        return [0]
    if requested is not None:
        return [min(requested, num_leaves)]
    cap = max(1, int(MAX_SEARCHED_SHARE * num_leaves))
    grid, value = {cap}, 1
    while value <= cap:
        grid.update({value, min(cap, value + value // 2)})
        value *= 2
    return sorted(grid)


def tuning_reorder_grid(
    params: ScannParams, k: int, requested: int | None = None
) -> list:
    """Re-order depths the tuner tries, increasing: `[None]` when the
    index does not re-order, `[requested]` when the user fixed it, else
    `REORDER_DEPTHS_PER_K` times `k` (all above `k`)."""
    if not params.reorder_num_neighbors:
        return [None]
    if requested is not None:
        return [requested]
    return sorted({max(k + 1, int(f * k)) for f in REORDER_DEPTHS_PER_K})


def saved_operating_point(directory: str) -> OperatingPoint | None:
    """The operating point recorded in a saved index's manifest.

    Reads only `manifest.json` (no ScaNN). None for exact indexes, indexes
    built with `target_recall=None` and those saved before format 3.

    Example (`describe()` is the line `keras-rmac index` prints):

    >>> import os, tempfile
    >>> from keras_rmac.search import ScannIndex
    >>> x = np.random.default_rng(0).standard_normal((50, 8))
    >>> index = ScannIndex(8)
    >>> index.add(x / np.linalg.norm(x, axis=1, keepdims=True))
    >>> path = os.path.join(tempfile.mkdtemp(), "index")
    >>> index.save(path)
    >>> point = saved_operating_point(path)
    >>> point.recall, point.sample_size
    (1.0, 50)
    """
    manifest = storage.read_manifest(directory)
    return OperatingPoint.from_dict(manifest["params"].get("operating_point"))


def sample_size_for(n: int) -> int:
    """Sample queries measured for `n` indexed rows (see `SAMPLE_SIZE`).

    >>> sample_size_for(500), sample_size_for(10**6), sample_size_for(10**7)
    (500, 600, 250)
    """
    budget = max(MIN_SAMPLE_SIZE, SAMPLE_PAIRS // max(1, n))
    return int(min(n, SAMPLE_SIZE, budget))


def draw_sample(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`(rows, truth)`: `sample_size_for(N)` rows of `x` and their exact
    top-`k` other rows."""
    rows = sample_rows(len(x), sample_size_for(len(x)))
    return rows, exact_neighbours(x, rows, k)


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """`min(n, size)` distinct rows out of `n`, sorted (reproducible)."""
    size = min(int(n), int(size))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(int(n), size, replace=False)).astype(np.int64)


def drop_own_rows(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first `k` results of each row that are not the query's own row.

    Args:
        found: int array `(S, k + 1)` of result rows (-1: missing).
        rows: int array `(S,)`: the database row of each query.
        k: int.

    Returns:
        int64 array `(S, k)`, -1 padded.
    """
    out = np.full((len(found), k), -1, np.int64)
    for i, (result, own) in enumerate(zip(found, rows)):
        kept = result[result != own][:k]
        out[i, : len(kept)] = kept
    return out


def exact_neighbours(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Exact top-`k` rows of `x` for the queries `x[rows]`, own row excluded.

    Memory stays bounded (block-wise, `top_k_inner_product`); `x` is not
    copied.
    """
    k = min(k, len(x) - 1)
    found, _ = top_k_inner_product(x[rows], x, k + 1)
    return drop_own_rows(found, rows, k)


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fraction of each row of `truth` found in the row of `found`."""
    hits = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    return hits.any(axis=1).sum(axis=1) / max(1, truth.shape[1])


def standard_error(per_query: np.ndarray) -> float:
    """Standard error of the mean of the per-query recalls."""
    return float(np.std(per_query)) / math.sqrt(max(1, len(per_query)))


def goal(per_query: np.ndarray, target: float) -> float:
    """The sample recall a setting must reach for `target` (with margin)."""
    return target + MARGIN_STANDARD_ERRORS * standard_error(per_query)


class _Measurer:
    """Recall (and optionally time) of one search setting on the sample."""

    def __init__(self, search: Callable, truth: np.ndarray):
        self.search = search
        self.truth = truth
        self.recalls: dict[tuple, np.ndarray] = {}
        self.seconds: dict[tuple, float] = {}

    def recall(self, setting: tuple) -> np.ndarray:
        if setting not in self.recalls:
            start = time.perf_counter()
            found = self.search(*setting)
            self.seconds[setting] = time.perf_counter() - start
            self.recalls[setting] = recall_per_query(found, self.truth)
        return self.recalls[setting]

    def reaches(self, setting: tuple, target: float) -> bool:
        per_query = self.recall(setting)
        return float(per_query.mean()) >= goal(per_query, target)

    def timed(self, setting: tuple) -> float:
        """Best time (seconds) of the sample search (see `TIMING_SECONDS`)."""
        best = self.seconds.get(setting, math.inf)
        spent, runs = 0.0, 1
        while runs < TIMING_REPEATS or spent < TIMING_SECONDS:
            start = time.perf_counter()
            self.search(*setting)
            took = time.perf_counter() - start
            best, spent, runs = min(best, took), spent + took, runs + 1
        self.seconds[setting] = best
        return best


def tune(
    search: Callable[[int, int | None], np.ndarray],
    truth: np.ndarray,
    leaves: Sequence[int],
    reorders: Sequence[int | None],
    target: float | None,
) -> OperatingPoint:
    """The fastest (leaves, reorder) setting reaching `target` on a sample.

    Args:
        search: callable `(leaves, reorder) -> (S, k)` result rows of the
            sample queries (own rows dropped).
        truth: int array `(S, k)`: their exact neighbours.
        leaves: increasing candidate leaf counts (`[0]` without a tree).
        reorders: increasing candidate re-order depths (`[None]` without
            re-ordering).
        target: float or None. None measures `(leaves[-1], reorders[-1])`
            only (explicit knobs).

    Returns:
        An `OperatingPoint` (its `queries_per_second` from the best time of
        the chosen setting; `k` and `sample_size` from `truth`).
    """
    measure = _Measurer(search, truth)
    if target is None:
        chosen = (leaves[-1], reorders[-1])
        measure.timed(chosen)
        return _point(measure, chosen, truth, None, True)
    for level in RECALL_LEVELS:
        if level != target:
            _walk(measure, list(leaves), list(reorders), level, repeat=False)
    frontier = _walk(measure, list(leaves), list(reorders), target)
    reached = bool(frontier)
    if not frontier:
        frontier = _plateau(measure)
    times = {s: measure.timed(s) for s in frontier}
    chosen = min(frontier, key=lambda s: (times[s], s[0], s[1] or 0))
    return _point(measure, chosen, truth, target, reached)


def _walk(measure, leaves, reorders, target, repeat=True):
    """Settings on the frontier of `target`: per leaf count, the fewest
    candidates reaching it (walking leaves up, bisecting candidates); each
    timed `TIMING_REPEATS` times with `repeat`, else once."""
    frontier = []
    j = len(reorders) - 1
    fastest = math.inf
    for count in leaves:
        if not measure.reaches((count, reorders[j]), target):
            continue
        # The fewest candidates reaching the target (bisection: recall
        # grows with the re-order depth).
        low = 0
        while low < j:
            middle = (low + j) // 2
            if measure.reaches((count, reorders[middle]), target):
                j = middle
            else:
                low = middle + 1
        setting = (count, reorders[j])
        frontier.append(setting)
        seconds = measure.timed(setting) if repeat else measure.seconds[setting]
        if j == 0 or seconds > SLOWER_STOP * fastest:
            break
        fastest = min(fastest, seconds)
    return frontier


def _plateau(measure):
    """Settings within `PLATEAU_TOLERANCE` of the best measured recall."""
    best = max(float(r.mean()) for r in measure.recalls.values())
    return [
        s
        for s, r in measure.recalls.items()
        if float(r.mean()) >= best - PLATEAU_TOLERANCE
    ]


def _point(measure, chosen, truth, target, reached):
    samples = len(truth)
    points = [
        [
            int(s[0]),
            s[1],
            round(float(r.mean()), 4),
            round(samples / measure.seconds[s], 1)
            if s in measure.seconds and measure.seconds[s] > 0
            else None,
            round(standard_error(r), 5),
        ]
        for s, r in sorted(
            measure.recalls.items(), key=lambda i: (i[0][0], i[0][1] or 0)
        )
    ]
    seconds = measure.seconds[chosen]
    return OperatingPoint(
        recall=round(float(measure.recall(chosen).mean()), 4),
        k=int(truth.shape[1]),
        sample_size=samples,
        num_leaves_to_search=int(chosen[0]),
        reorder_num_neighbors=chosen[1],
        queries_per_second=round(samples / seconds, 1) if seconds else 0.0,
        target_recall=target,
        reached=reached,
        points=points,
    )
