"""Tests for revisitop-compatible AP / mAP / mP@k.

The oracle below walks each ranked list item by item in exact rational
arithmetic (fractions.Fraction), straight from the definitions, instead of
the position-shifting used by the library.
"""

import math
from fractions import Fraction

import numpy as np
import pytest

from keras_rmac.evaluation import compute_ap
from keras_rmac.evaluation import compute_map


def oracle_query(ranked, ok, junk, kappas):
    """AP and P@k of one query, or None when it has no positives."""
    ok = list(ok)
    if not ok:
        return None
    ok_set, junk_set = set(ok), set(junk)
    # Junk-free 0-based rank of each retrieved positive: the number of
    # non-junk items strictly before it in the list.
    ranks = []
    kept = 0
    for item in ranked:
        if item in ok_set:
            ranks.append(kept)
        # Junk never takes a place, even when also listed as ok (such an
        # item is still counted as a positive above, as in revisitop).
        if item not in junk_set:
            kept += 1
    # Trapezoids of the precision/recall curve; recall grows by 1/len(ok)
    # at each retrieved positive.
    area = Fraction(0)
    for found_before, r in enumerate(ranks):
        prec_before = Fraction(1) if r == 0 else Fraction(found_before, r)
        prec_after = Fraction(found_before + 1, r + 1)
        area += (prec_before + prec_after) / 2 * Fraction(1, len(ok))
    precisions = []
    for k in kappas:
        if not ranks:
            precisions.append(Fraction(0))
            continue
        one_based = [r + 1 for r in ranks]
        kq = min(max(one_based), k)
        hits = sum(1 for p in one_based if p <= kq)
        precisions.append(Fraction(hits, kq))
    return area, precisions


def oracle_map(ranks, gnd, kappas):
    aps, prs = [], []
    for i, g in enumerate(gnd):
        res = oracle_query(
            ranks[:, i].tolist(), list(g["ok"]), list(g.get("junk", [])), kappas
        )
        if res is None:
            aps.append(math.nan)
            prs.append([math.nan] * len(kappas))
        else:
            aps.append(float(res[0]))
            prs.append([float(p) for p in res[1]])
    aps = np.array(aps)
    prs = np.array(prs).reshape(len(gnd), len(kappas))
    valid = ~np.isnan(aps)
    return aps[valid].mean(), aps, prs[valid].mean(axis=0), prs


def random_case(rng, n_db, n_q, n_rows):
    ranks = np.stack(
        [rng.permutation(n_db)[:n_rows] for _ in range(n_q)], axis=1
    )
    gnd = []
    for q in range(n_q):
        n_ok = int(rng.integers(0, 8))
        n_junk = int(rng.integers(0, 6))
        chosen = rng.choice(n_db, size=n_ok + n_junk, replace=False)
        entry = {"ok": chosen[:n_ok]}
        if q % 3 != 0:  # some queries without a 'junk' key at all
            entry["junk"] = chosen[n_ok:]
        gnd.append(entry)
    # Make sure at least one query has positives.
    gnd[0]["ok"] = np.array([int(ranks[-1, 0])])
    return ranks, gnd


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("truncate", [False, True])
def test_matches_oracle_on_random_rankings(seed, truncate):
    rng = np.random.default_rng(seed)
    n_db, n_q = 40, 9
    n_rows = 12 if truncate else n_db
    ranks, gnd = random_case(rng, n_db, n_q, n_rows)
    # Kappas beyond the list length and beyond the database size.
    kappas = (1, 3, 5, 10, 25, 100)
    got = compute_map(ranks, gnd, kappas)
    want = oracle_map(ranks, gnd, kappas)
    np.testing.assert_allclose(got[0], want[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got[1], want[1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got[2], want[2], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got[3], want[3], atol=1e-6, rtol=0)
    assert got[1].shape == (n_q,)
    assert got[2].shape == (len(kappas),)
    assert got[3].shape == (n_q, len(kappas))


def test_random_cases_exercise_the_edge_cases():
    # Guard against the random test silently losing its coverage.
    rng = np.random.default_rng(0)
    ranks, gnd = random_case(rng, 40, 9, 12)
    empty = [len(g["ok"]) == 0 for g in gnd]
    missing = [
        len(g["ok"]) > 0 and not np.isin(g["ok"], ranks[:, i]).all()
        for i, g in enumerate(gnd)
    ]
    junk_hit = [
        np.isin(g.get("junk", []), ranks[:, i]).any() for i, g in enumerate(gnd)
    ]
    assert any(empty) and any(missing) and any(junk_hit)


def test_overlapping_ok_and_junk_matches_oracle():
    # An item in both lists: positive at its own place, yet removed in
    # front of later positives.
    rng = np.random.default_rng(7)
    ranks = np.stack([rng.permutation(15) for _ in range(4)], axis=1)
    gnd = [
        {"ok": [1, 2, 3, 4], "junk": [2, 9]},
        {"ok": [0, 5], "junk": [0, 5, 7]},
        {"ok": [14], "junk": [14]},
        {"ok": [3, 6, 8], "junk": [6]},
    ]
    got = compute_map(ranks, gnd, (1, 2, 4))
    want = oracle_map(ranks, gnd, (1, 2, 4))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-12)


def test_hand_computed_case():
    # Query 0: list a=0, j=4, b=1, x=3, c=2; ok = {0, 1, 2, 5}; junk = {4}.
    #   Without junk: 0, 1, 3, 2 -> positives at 0-based ranks 0, 1, 3.
    #   Item 5 is never retrieved but counts: nok = 4.
    #   AP = 1/4 * [ (1 + 1/1)/2 + (1/1 + 2/2)/2 + (2/3 + 3/4)/2 ]
    #      = 1/4 * [ 1 + 1 + 17/24 ] = 65/96.
    #   1-based ranks P = 1, 2, 4; max(P) = 4.
    #   P@1: kq = 1, #{P<=1} = 1 -> 1.   P@5: kq = 4 -> 3/4.   P@10: 3/4.
    # Query 1: no positives -> NaN, excluded from the means.
    # Query 2: list 2, 1, 0, 3, 4; ok = {0}; no junk key.
    #   Positive at rank 2 of nok = 1: AP = (0/2 + 1/3) / 2 = 1/6.
    #   P = 3. P@1: kq = 1 -> 0.  P@5: kq = 3 -> 1/3.  P@10: 1/3.
    # mAP = (65/96 + 1/6) / 2 = 81/192.
    # mP@k = ((1 + 0)/2, (3/4 + 1/3)/2, (3/4 + 1/3)/2) = (1/2, 13/24, 13/24).
    ranks = np.array([[0, 0, 2], [4, 1, 1], [1, 2, 0], [3, 3, 3], [2, 4, 4]])
    gnd = [
        {"ok": np.array([0, 1, 2, 5]), "junk": np.array([4])},
        {"ok": np.array([], dtype=int), "junk": np.array([1])},
        {"ok": np.array([0])},
    ]
    mean_ap, aps, pr, prs = compute_map(ranks, gnd, (1, 5, 10))
    assert mean_ap == pytest.approx(81 / 192, abs=1e-12)
    np.testing.assert_allclose(aps[[0, 2]], [65 / 96, 1 / 6], atol=1e-12)
    assert np.isnan(aps[1]) and np.isnan(prs[1]).all()
    np.testing.assert_allclose(prs[0], [1, 0.75, 0.75], atol=1e-12)
    np.testing.assert_allclose(prs[2], [0, 1 / 3, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(pr, [1 / 2, 13 / 24, 13 / 24], atol=1e-12)


def test_perfect_ranking_has_precision_one_at_large_k():
    # revisitop's kq = min(max(P), k): 3 positives ranked 1..3 give P@10 = 1
    # (a plain P@10 would be 3/10).
    ranks = np.arange(20).reshape(20, 1)
    mean_ap, _, pr, _ = compute_map(ranks, [{"ok": [0, 1, 2]}], (1, 10))
    assert mean_ap == 1.0
    np.testing.assert_array_equal(pr, [1.0, 1.0])


def test_truncated_list_without_any_positive():
    # Positives exist but none are in the truncated top 3: AP 0, P@k 0
    # (revisitop would raise on max() of an empty array here).
    ranks = np.array([[5, 0], [6, 1], [7, 2]])
    gnd = [{"ok": [0, 1]}, {"ok": [0, 9]}]
    mean_ap, aps, pr, prs = compute_map(ranks, gnd, (1, 5))
    # Query 1: positive 0 at rank 0 of nok = 2: AP = (1 + 1)/2 / 2 = 1/2.
    np.testing.assert_allclose(aps, [0.0, 0.5])
    assert mean_ap == pytest.approx(0.25)
    np.testing.assert_allclose(prs, [[0, 0], [1, 1]])
    np.testing.assert_allclose(pr, [0.5, 0.5])


def test_all_queries_empty_gives_nan():
    ranks = np.arange(4).reshape(4, 1)
    mean_ap, aps, pr, prs = compute_map(ranks, [{"ok": []}], (1,))
    assert math.isnan(mean_ap) and np.isnan(pr).all()
    assert np.isnan(aps).all() and np.isnan(prs).all()


def test_empty_kappas():
    ranks = np.arange(4).reshape(4, 1)
    mean_ap, _, pr, prs = compute_map(ranks, [{"ok": [1]}], ())
    assert mean_ap == pytest.approx(0.25)  # rank 1: (0/1 + 1/2) / 2
    assert pr.shape == (0,) and prs.shape == (1, 0)


def test_padding_entries_are_ignored():
    # -1 padding (e.g. from an index returning fewer than k results).
    ranks = np.array([[3], [-1], [-1]])
    mean_ap, _, _, _ = compute_map(ranks, [{"ok": [3, 4]}], ())
    assert mean_ap == pytest.approx(0.5)


def test_compute_ap_hand_values():
    # ranks 0, 1, 3 of nok=4: see test_hand_computed_case.
    assert compute_ap([0, 1, 3], 4) == pytest.approx(65 / 96, abs=1e-15)
    # Single positive at rank 1 of 1: (0/1 + 1/2) / 2 = 1/4.
    assert compute_ap(np.array([1]), 1) == pytest.approx(0.25)
    assert compute_ap([], 3) == 0.0


def test_compute_ap_rejects_bad_input():
    with pytest.raises(ValueError, match="nok"):
        compute_ap([0], 0)
    with pytest.raises(ValueError, match="increasing"):
        compute_ap([2, 1], 3)
    with pytest.raises(ValueError, match="repeats"):
        compute_ap([0, 1, 2], 2)


def test_compute_map_rejects_transposed_ranks():
    ranks = np.zeros((3, 10), dtype=int)  # (n_queries, k) by mistake
    with pytest.raises(ValueError, match="transpose"):
        compute_map(ranks, [{"ok": [1]}] * 3)


def test_compute_map_rejects_bad_kappas_and_revisited_gnd():
    ranks = np.arange(3).reshape(3, 1)
    with pytest.raises(ValueError, match="kappas"):
        compute_map(ranks, [{"ok": [1]}], (0,))
    with pytest.raises(KeyError, match="evaluate_revisited"):
        compute_map(ranks, [{"easy": [1], "hard": [], "junk": []}])
