"""Tests for the revisited Oxford/Paris Easy / Medium / Hard protocols."""

import numpy as np
import pytest

from keras_rmac.evaluation import compute_map
from keras_rmac.evaluation import evaluate_revisited
from keras_rmac.evaluation import revisited_gnd

GND = [
    {
        "easy": np.array([0, 1]),
        "hard": np.array([2]),
        "junk": np.array([3]),
        "bbx": np.array([1.0, 2.0, 30.5, 40.0]),
    },
    {
        "easy": np.array([], dtype=np.int64),
        "hard": np.array([4, 5]),
        "junk": np.array([], dtype=np.int64),
        "bbx": np.array([0.0, 0.0, 5.0, 5.0]),
    },
]


@pytest.mark.parametrize(
    "protocol, ok, junk",
    [
        ("easy", [[0, 1], []], [[3, 2], [4, 5]]),
        ("E", [[0, 1], []], [[3, 2], [4, 5]]),
        ("medium", [[0, 1, 2], [4, 5]], [[3], []]),
        ("hard", [[2], [4, 5]], [[3, 0, 1], []]),
        ("H", [[2], [4, 5]], [[3, 0, 1], []]),
    ],
)
def test_revisited_gnd_relabels(protocol, ok, junk):
    got = revisited_gnd(GND, protocol)
    assert [sorted(g["ok"].tolist()) for g in got] == [sorted(x) for x in ok]
    assert [sorted(g["junk"].tolist()) for g in got] == [
        sorted(x) for x in junk
    ]
    assert all(g["ok"].dtype == np.int64 for g in got)


def test_evaluate_revisited_hand_computed():
    # Query 0 list: 3, 2, 0, 6, 1, 4, 5   (easy {0,1}, hard {2}, junk {3})
    # Query 1 list: 0, 4, 1, 2, 5, 3, 6   (hard {4,5})
    #
    # Easy (ok = easy, junk = junk + hard):
    #   q0: drop 3, 2 -> 0, 6, 1, ...: positives at ranks 0, 2; nok = 2.
    #       AP = [ (1 + 1)/2 + (1/2 + 2/3)/2 ] / 2 = (1 + 7/12) / 2 = 19/24.
    #       P = 1, 3: P@1 = 1; P@5: kq = 3 -> 2/3.
    #   q1: no easy positives -> excluded.  mAP_E = 19/24.
    # Medium (ok = easy + hard, junk = junk):
    #   q0: drop 3 -> 2, 0, 6, 1: ranks 0, 1, 3; nok = 3.
    #       AP = [ 1 + 1 + (2/3 + 3/4)/2 ] / 3 = (2 + 17/24) / 3 = 65/72.
    #       P = 1, 2, 4: P@1 = 1; P@5: kq = 4 -> 3/4.
    #   q1: no junk: 4, 5 at ranks 1, 4; nok = 2.
    #       AP = [ (0/1 + 1/2)/2 + (1/4 + 2/5)/2 ] / 2
    #          = (1/4 + 13/40) / 2 = 23/80.
    #       P = 2, 5: P@1: kq = 1 -> 0; P@5: kq = 5 -> 2/5.
    #   mAP_M = (65/72 + 23/80) / 2;  mP@5 = (3/4 + 2/5) / 2.
    # Hard (ok = hard, junk = junk + easy):
    #   q0: drop 3, 0, 1 -> 2, 6, 4, 5: rank 0; AP = 1; P@1 = P@5 = 1.
    #   q1: same as Medium (no easy, no junk): AP = 23/80.
    ranks = np.array([[3, 2, 0, 6, 1, 4, 5], [0, 4, 1, 2, 5, 3, 6]]).T
    res = evaluate_revisited(ranks, GND, kappas=(1, 5))
    assert res["easy"]["map"] == pytest.approx(19 / 24, abs=1e-12)
    assert res["easy"]["mp@k"] == pytest.approx({1: 1.0, 5: 2 / 3})
    assert np.isnan(res["easy"]["aps"][1])
    m_ap = (65 / 72 + 23 / 80) / 2
    assert res["medium"]["map"] == pytest.approx(m_ap, abs=1e-12)
    assert res["medium"]["mp@k"] == pytest.approx(
        {1: 0.5, 5: (3 / 4 + 2 / 5) / 2}
    )
    assert res["hard"]["map"] == pytest.approx((1 + 23 / 80) / 2, abs=1e-12)
    np.testing.assert_allclose(res["hard"]["prs"], [[1, 1], [0, 2 / 5]])


def test_evaluate_revisited_agrees_with_compute_map():
    rng = np.random.default_rng(3)
    n_db, n_q = 60, 5
    gnd = []
    for _ in range(n_q):
        idx = rng.permutation(n_db)
        gnd.append(
            {"easy": idx[:4], "hard": idx[4:9], "junk": idx[9:12], "bbx": []}
        )
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)
    res = evaluate_revisited(ranks, gnd)
    for name in ("easy", "medium", "hard"):
        m, aps, pr, _ = compute_map(ranks, revisited_gnd(gnd, name))
        assert res[name]["map"] == m
        np.testing.assert_array_equal(res[name]["aps"], aps)
        assert list(res[name]["mp@k"].values()) == pr.tolist()
    # The protocols differ on a random ranking.
    assert len({res[n]["map"] for n in ("easy", "medium", "hard")}) == 3


def test_revisited_gnd_errors():
    with pytest.raises(ValueError, match="protocol"):
        revisited_gnd(GND, "extreme")
    with pytest.raises(KeyError, match="easy"):
        revisited_gnd([{"ok": [1], "junk": []}], "medium")
