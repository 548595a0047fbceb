"""Easy / Medium / Hard protocols of revisited Oxford and Paris.

The revisited ground truth (`gnd_roxford5k.pkl`, `gnd_rparis6k.pkl`) gives
each query the keys ``"easy"``, ``"hard"``, ``"junk"`` and ``"bbx"``. The
three protocols of Radenovic et al. (CVPR 2018) relabel them, exactly as
revisitop's ``example_evaluate.py`` does:

| protocol | ok            | junk          |
|----------|---------------|---------------|
| easy     | easy          | junk + hard   |
| medium   | easy + hard   | junk          |
| hard     | hard          | junk + easy   |

Reference: https://arxiv.org/abs/1803.11285
"""

from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from keras_rmac.evaluation.average_precision import compute_map

PROTOCOLS = ("easy", "medium", "hard")

# protocol -> (keys concatenated into "ok", keys concatenated into "junk")
_PROTOCOL_KEYS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
_ALIASES = {"e": "easy", "m": "medium", "h": "hard"}


def _protocol_name(protocol: str) -> str:
    name = str(protocol).lower()
    name = _ALIASES.get(name, name)
    if name not in _PROTOCOL_KEYS:
        raise ValueError(
            f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS} "
            "(or 'E', 'M', 'H')."
        )
    return name


def revisited_gnd(gnd: Sequence[Mapping], protocol: str) -> list[dict]:
    """Ground truth of one revisited protocol, ready for `compute_map`.

    Args:
        gnd: sequence of mappings with keys `"easy"`, `"hard"` and
            `"junk"` (database index arrays), as in revisitop's
            `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl`.
        protocol: str. `"easy"`, `"medium"` or `"hard"` (or `"E"`, `"M"`,
            `"H"`).

    Returns:
        A list of dicts with int64 arrays `"ok"` and `"junk"`, one per
        query.

    Example:

    >>> g = revisited_gnd([{"easy": [1], "hard": [2], "junk": [3]}], "hard")
    >>> g[0]["ok"].tolist(), g[0]["junk"].tolist()
    ([2], [3, 1])
    """
    ok_keys, junk_keys = _PROTOCOL_KEYS[_protocol_name(protocol)]
    out = []
    for i, entry in enumerate(gnd):
        missing = [k for k in ("easy", "hard", "junk") if k not in entry]
        if missing:
            raise KeyError(
                f"gnd[{i}] lacks {missing} (keys: {sorted(entry)}); the "
                "revisited protocols need 'easy', 'hard' and 'junk'. For "
                "ground truth with 'ok'/'junk', call compute_map directly."
            )

        def cat(keys, entry=entry):
            parts = [np.asarray(entry[k]).reshape(-1) for k in keys]
            return np.concatenate(parts).astype(np.int64)

        out.append({"ok": cat(ok_keys), "junk": cat(junk_keys)})
    return out


def evaluate_revisited(
    ranks: np.ndarray,
    gnd: Sequence[Mapping],
    kappas: Sequence[int] = (1, 5, 10),
) -> dict[str, dict]:
    """mAP and mP@k of a ranking under the Easy, Medium and Hard protocols.

    Args:
        ranks: int array of shape `(n_db, n_queries)`, one ranked list of
            database indices per column (see `compute_map`).
        gnd: revisited ground truth, one mapping per query with `"easy"`,
            `"hard"` and `"junk"`.
        kappas: sequence of positive ints. The `k` of mP@k. Defaults to
            `(1, 5, 10)`.

    Returns:
        A dict with keys `"easy"`, `"medium"`, `"hard"`; each value is a
        dict with `"map"` (float), `"mp@k"` (dict int -> float), `"aps"`
        (per-query AP) and `"prs"` (per-query P@k, `(n_queries,
        len(kappas))`). As in revisitop, queries with no positives under a
        protocol are left out of its means.

    Example:

    >>> import numpy as np
    >>> gnd = [{"easy": [0], "hard": [2], "junk": [1]}]
    >>> ranks = np.array([[3], [2], [1], [0]])
    >>> res = evaluate_revisited(ranks, gnd, kappas=(1,))
    >>> [round(res[p]["map"], 4) for p in ("easy", "medium", "hard")]
    [0.25, 0.4167, 0.25]
    """
    results = {}
    for protocol in PROTOCOLS:
        mean_ap, aps, pr, prs = compute_map(
            ranks, revisited_gnd(gnd, protocol), kappas
        )
        results[protocol] = {
            "map": mean_ap,
            "mp@k": {int(k): float(v) for k, v in zip(kappas, pr)},
            "aps": aps,
            "prs": prs,
        }
    return results
