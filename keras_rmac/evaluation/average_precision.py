"""Average precision and mean precision@k, compatible with revisitop.

These functions reproduce the evaluation of the revisited Oxford/Paris
benchmark (Radenovic et al., CVPR 2018; `filipradenovic/revisitop`,
``python/evaluate.py``) number for number. The semantics, precisely:

- ``ranks`` has shape ``(n_db, n_queries)``; column ``i`` lists database
  indices in ranked order for query ``i``. It may be truncated (fewer rows
  than the database); items that are missing are simply never retrieved.
- ``gnd[i]`` is a mapping with ``"ok"`` (positives) and optionally
  ``"junk"`` (index arrays). A query whose ``"ok"`` is empty is skipped:
  its AP and its precisions@k are NaN and it is left out of both means,
  which divide by ``n_queries - n_empty``.
- Junk removal: a positive found at 0-based position ``p`` of the list gets
  the rank ``p - (number of junk positions strictly before p)``. An item
  listed both as ok and junk therefore counts as a positive at its own
  position and is still removed from in front of later positives (as in
  revisitop).
- AP is the trapezoid rule over the precision-recall curve. With ``r_j``
  the junk-free 0-based rank of the ``j``-th retrieved positive
  (``j = 0, 1, ...``) and ``nok = len(ok)``::

      AP = sum_j (p0_j + p1_j) / (2 * nok),
      p0_j = 1 if r_j == 0 else j / r_j,   p1_j = (j + 1) / (r_j + 1).

  ``nok`` counts every positive, so positives absent from a truncated
  list count as misses.
- Precision@k: with ``P`` the 1-based junk-free ranks of the retrieved
  positives, ``kq = min(max(P), k)`` and ``P@k = #{P <= kq} / kq``. When
  the last positive comes before ``k``, the denominator shrinks to its
  rank (so a perfect ranking of 3 positives has P@10 = 1).

One deliberate difference: revisitop raises an error for P@k when a query
with positives retrieves none of them (``max`` of an empty array, possible
only with truncated lists); here P@k is 0 for such a query, as is its AP.
"""

import logging
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def compute_ap(
    ranks_of_positives: Sequence[int] | np.ndarray, nok: int
) -> float:
    """Average precision from the ranks of the retrieved positives.

    Trapezoid rule over the precision-recall curve, exactly as revisitop's
    ``compute_ap``: each retrieved positive adds a trapezoid of width
    ``1 / nok`` between the precision just before it and just after it.

    Args:
        ranks_of_positives: 1-D int array-like. 0-based ranks of the
            retrieved positives in increasing order, after junk removal.
        nok: int. Number of positives of the query, retrieved or not.

    Returns:
        The average precision, a float in ``[0, 1]``.

    Example:

    >>> compute_ap([0, 1, 3], nok=4)  # = 65/96
    0.6770833333333333
    """
    r = np.asarray(ranks_of_positives, dtype=np.float64).reshape(-1)
    if nok <= 0:
        raise ValueError(
            f"`nok` must be a positive number of positives, got {nok}. "
            "Queries without positives have no AP; compute_map skips them."
        )
    if r.size > nok:
        raise ValueError(
            f"Got {r.size} positive ranks but `nok`={nok}: the ranking "
            "repeats an item or `nok` is wrong."
        )
    if r.size and (r[0] < 0 or np.any(np.diff(r) <= 0)):
        raise ValueError(
            "`ranks_of_positives` must be non-negative and strictly "
            f"increasing, got {r.tolist()}."
        )
    j = np.arange(r.size, dtype=np.float64)
    # Precision just before the j-th positive; 1 when it is ranked first.
    p0 = np.divide(j, r, out=np.ones_like(r), where=r > 0)
    # Precision just after it.
    p1 = (j + 1.0) / (r + 1.0)
    return float(np.sum(p0 + p1) / (2.0 * nok))


def _index_array(value, what: str, query: int) -> np.ndarray:
    arr = np.asarray(value if value is not None else [])
    if arr.size == 0:
        return np.zeros((0,), dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(
            arr == np.round(arr)
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(
                f"gnd[{query}][{what!r}] must hold integer database "
                f"indices, got dtype {arr.dtype}."
            )
    return arr.reshape(-1)


def compute_map(
    ranks: np.ndarray,
    gnd: Sequence[Mapping],
    kappas: Sequence[int] = (1, 5, 10),
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Mean average precision and mean precision@k over queries.

    Reproduces revisitop's ``compute_map`` (see the module docstring for
    the exact rules on junk, truncated lists, queries without positives
    and precision@k).

    Args:
        ranks: int array of shape `(n_db, n_queries)`. Column `i` holds
            database indices ranked for query `i`; may be truncated to the
            top rows. Entries that are not database indices (e.g. -1
            padding) are never positive or junk.
        gnd: sequence of `n_queries` mappings with key `"ok"` and
            optionally `"junk"`, each an array-like of database indices.
        kappas: sequence of positive ints. The `k` of precision@k.
            Defaults to `(1, 5, 10)`.

    Returns:
        A tuple `(map, aps, pr, prs)`: the mAP (float), per-query APs of
        shape `(n_queries,)`, mean precision@k of shape `(len(kappas),)`
        and per-query precision@k of shape `(n_queries, len(kappas))`.
        Queries with no positives hold NaN and are left out of the means;
        if every query is empty, both means are NaN.

    Example:

    >>> import numpy as np
    >>> ranks = np.array([[0], [4], [1], [3], [2]])
    >>> gnd = [{"ok": [0, 1, 2, 5], "junk": [4]}]
    >>> m, aps, pr, prs = compute_map(ranks, gnd, kappas=(1, 5))
    >>> round(m, 6), pr.tolist()
    (0.677083, [1.0, 0.75])
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(
            "`ranks` must be 2-D with shape (n_db, n_queries), got shape "
            f"{ranks.shape}."
        )
    nq = len(gnd)
    if ranks.shape[1] != nq:
        raise ValueError(
            f"`ranks` has shape {ranks.shape} but `gnd` has {nq} queries; "
            "`ranks` must be (n_db, n_queries), one column per query. A "
            "search index usually returns (n_queries, k): pass its "
            "transpose."
        )
    kappas = [int(k) for k in kappas]
    if any(k <= 0 for k in kappas):
        raise ValueError(f"`kappas` must be positive ints, got {kappas}.")

    aps = np.zeros(nq, dtype=np.float64)
    prs = np.zeros((nq, len(kappas)), dtype=np.float64)
    nempty = 0
    for i in range(nq):
        if "ok" not in gnd[i]:
            raise KeyError(
                f"gnd[{i}] has no 'ok' key (keys: {sorted(gnd[i])}). For "
                "revisited Oxford/Paris ground truth with 'easy'/'hard', "
                "use evaluate_revisited or revisited_gnd."
            )
        ok = _index_array(gnd[i]["ok"], "ok", i)
        if ok.size == 0:
            # No positives: excluded from the averages.
            aps[i] = np.nan
            prs[i, :] = np.nan
            nempty += 1
            continue
        junk = _index_array(gnd[i].get("junk"), "junk", i)

        column = ranks[:, i]
        pos = np.flatnonzero(np.isin(column, ok))
        junk_pos = np.flatnonzero(np.isin(column, junk))
        # Shift each positive up by the junk items strictly before it.
        pos = pos - np.searchsorted(junk_pos, pos, side="left")

        aps[i] = compute_ap(pos, len(ok))

        if pos.size == 0:
            # revisitop errors here (max of an empty list); count 0.
            prs[i, :] = 0.0
            continue
        pos1 = pos + 1  # 1-based ranks
        last = pos1[-1]
        for j, k in enumerate(kappas):
            kq = min(last, k)
            prs[i, j] = np.count_nonzero(pos1 <= kq) / kq

    n_valid = nq - nempty
    if n_valid == 0:
        logger.warning(
            "compute_map: none of the %d queries has a positive; mAP and "
            "mP@k are NaN.",
            nq,
        )
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    valid = ~np.isnan(aps)
    mean_ap = float(np.sum(aps[valid]) / n_valid)
    pr = np.sum(prs[valid], axis=0) / n_valid
    return mean_ap, aps, pr, prs
