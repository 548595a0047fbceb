"""The measured build of a `ScannIndex`: tune it, rebuild when it misses.

`tune_built_index` measures a freshly built searcher
(`keras_rmac.search.scann_tuning.tune`). When a fast-mode build left to
the policy (no leaf count or leaves searched given) misses its recall
target, it tries other builds, in order, until one reaches it:

1. a tree with `REBUILD_LEAVES_FACTOR` times more (smaller) leaves, from
   `MIN_TREE_SIZE` vectors on (a smaller collection skips to 2);
2. no tree: every row's PQ codes scored, the best candidates re-ordered
   exactly (exact float32 scores below `MAX_BRUTE_FORCE_SIZE` rows), as
   the policy does for small collections.

A k-means tree needs neighbourhoods that its leaves can hold: on rows
without cluster structure (about one row per centre) a query's
neighbours spread over many leaves, and no leaf count reaches 0.95 within
`MAX_SEARCHED_SHARE` of the leaves. Measured (`benchmarks.search.synthetic`,
one row per centre, 2 shared cores): 20,000 x 128 tree 0.69 recall@10 on
independent queries, no tree 0.96 at 1.5x the tree's speed; 100,000 x 64
0.90, no tree 0.96 at 1.4x. With structure (10 and 20 rows per centre)
the tree reaches the target at 1.4x (20,000 x 128) and 3.5x (100,000 x
64) the queries per second of no tree: a larger size threshold for the
tree would cost structured collections that speed, hence a measured
fallback rather than a size rule.

Each build is kept only when it reaches the target or beats the best
sample recall of the builds before it; otherwise the best one is built
and measured again (ScaNN's k-means is not reproducible bit for bit).
The builds measured and discarded are in `OperatingPoint.discarded`.

Cost: the fallback runs only when the target was missed, after the trees:
one build without a tree (PQ encoding of the N rows, no k-means) and its
measurement (the sample scored against every row, a few searches). Built
alone (`num_leaves=0`, load 4-7 on 2 shared cores) it took 3.3 s at
20,000 x 128 and 6.9 s at 100,000 x 64, where the two trees took 6.0 s
and 22 s. On 20,000 x 512 (one row per centre, `benchmarks/beam.py`
part b's collection) the build went from 16 s (recall@10 0.58 on
independent queries, target missed) to 24 s (0.96). Its searches cost
O(N D) per query: at 1,000,000 x 512 expect about a minute more (not
measured).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from keras_rmac.search import scann_policy
from keras_rmac.search import scann_tuning
from keras_rmac.search.scann_policy import ScannOptions
from keras_rmac.search.scann_policy import ScannParams
from keras_rmac.search.scann_tuning import OperatingPoint

logger = logging.getLogger(__name__)


def rebuild_leaves(n: int, num_leaves: int) -> list[int]:
    """Leaf counts tried, in order, after a build of `num_leaves` leaves
    over `n` rows missed its target (0: no tree).

    >>> rebuild_leaves(5000, 71), rebuild_leaves(20_000, 141)
    ([0], [282, 0])
    """
    leaves = rebuild_num_leaves(n, num_leaves)
    return [leaves, 0] if leaves else [0]


def rebuild_num_leaves(
    n: int, num_leaves: int, factor: int | None = None
) -> int:
    """Leaves of the rebuild after a build of `num_leaves` leaves over `n`
    rows missed its target: `factor` (default `REBUILD_LEAVES_FACTOR`)
    times as many, or no tree (0) below `MIN_TREE_SIZE` rows. The one rule
    for an index, a `ShardedIndex`'s shards and parts built elsewhere.

    >>> rebuild_num_leaves(5000, 71), rebuild_num_leaves(20_000, 141, 3)
    (0, 423)
    """
    if n < scann_policy.MIN_TREE_SIZE:
        return 0
    return (factor or scann_tuning.REBUILD_LEAVES_FACTOR) * num_leaves


def best_recall(point: OperatingPoint) -> float:
    """The highest sample recall among the settings of `point`."""
    return max([float(p[2]) for p in point.points] + [point.recall])


def tune_built_index(
    x: np.ndarray,
    params: ScannParams,
    options: ScannOptions,
    search: Callable,
    rebuild: Callable[[ScannParams], None] | None = None,
    sample: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[OperatingPoint, ScannParams]:
    """The operating point of a freshly built `ScannIndex` searcher.

    Args:
        x: float32 `(N, D)`: the indexed rows (not copied).
        params: `ScannParams` the searcher was built with.
        options: `ScannOptions`: `target_recall`, `recall_k` and the
            knobs the user fixed (kept as they are).
        search: callable `(queries, k, leaves, pre_reorder) -> (rows,
            scores)` on the built searcher.
        rebuild: callable `params -> None` rebuilding the searcher, or
            None for no rebuild. Called with the builds of
            `rebuild_leaves` while the target is missed (see the module
            docstring).
        sample: `(rows, truth)` of `scann_tuning.draw_sample`, or None
            to draw it.

    Returns:
        `(point, params)`: the `OperatingPoint`, whose `seconds` is the
        time spent measuring (and rebuilding), and the parameters of the
        searcher left built.
    """
    start = time.perf_counter()
    rows, truth = sample or scann_tuning.draw_sample(x, options.recall_k)[:2]
    k = truth.shape[1]
    queries = x[rows]

    def measure(built):
        def run(leaves, reorder):
            pre = scann_policy.pre_reorder_neighbors(
                k + 1, built.reorder_num_neighbors, reorder
            )
            found, _ = search(queries, k + 1, leaves, pre)
            return scann_tuning.drop_own_rows(found, rows, k)

        return scann_tuning.tune(
            run,
            truth,
            scann_tuning.tuning_leaves_grid(
                built.num_leaves, options.num_leaves_to_search
            ),
            scann_tuning.tuning_reorder_grid(
                built, k, options.reorder_num_neighbors
            ),
            options.target_recall,
        )

    point = measure(params)
    if rebuild is not None and not point.reached:
        point, params = _rebuild_until_reached(
            x, params, point, options, rebuild, measure
        )
    if not point.reached:
        logger.warning(
            "ScannIndex: recall target %g not reached (%s).%s",
            options.target_recall,
            point.describe(),
            " A larger `bytes_per_vector` raises the recall of a compact index."
            if options.mode == "compact"
            else "",
        )
    point = dataclasses.replace(
        point, seconds=round(time.perf_counter() - start, 3)
    )
    return point, params


def _rebuild_until_reached(x, params, point, options, rebuild, measure):
    """The builds of `rebuild_leaves` in turn, the best one kept."""
    best, best_params, built = point, params, params
    discarded = []
    for leaves in rebuild_leaves(len(x), params.num_leaves):
        logger.info(
            "Recall target %g not reached with %s (best sample recall "
            "%.3f); rebuilding with %s.",
            options.target_recall,
            _leaves(built.num_leaves),
            best_recall(best),
            _leaves(leaves),
        )
        built = scann_policy.resolve_params(
            dataclasses.replace(options, num_leaves=leaves), len(x)
        )
        rebuild(built)
        candidate = measure(built)
        if candidate.reached or best_recall(candidate) > best_recall(best):
            discarded.append([best_params.num_leaves, best_recall(best)])
            best, best_params = candidate, built
        else:
            discarded.append([leaves, best_recall(candidate)])
        if best.reached:
            break
    if built is not best_params:
        logger.info(
            "Recall target %g not reached; keeping the most accurate "
            "build, %s, and building it again.",
            options.target_recall,
            _leaves(best_params.num_leaves),
        )
        rebuild(best_params)
        best = measure(best_params)
    return dataclasses.replace(best, discarded=discarded), best_params


def _leaves(count: int) -> str:
    return f"a tree of {count} leaves" if count else "no tree"
