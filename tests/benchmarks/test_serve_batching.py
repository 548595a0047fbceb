"""The serve batching benchmark's bookkeeping, on made-up rounds."""

import pytest

pytest.importorskip("starlette", reason="needs the serve extra")

from benchmarks import serve_batching  # noqa: E402
from tests.serve.load import Answer  # noqa: E402


def _answer(seconds, paths, scores, status=200):
    results = [{"path": p, "score": s} for p, s in zip(paths, scores)]
    return Answer(("upload", b"", 10), status, seconds, {"results": results})


def test_summary_rates_latencies_and_batch_sizes():
    one = [_answer(0.1, ["a"], [0.9])] * 4
    runs = {
        1: [(2.0, one, {1: 4}), (4.0, one, {1: 4})],  # 2 and 1 queries/s
        8: [(1.0, one, {3: 1, 1: 1}), (1.0, one, {4: 1})],  # 4 and 4
    }
    rows, ratios = serve_batching.summarise(runs)
    # Ratios per round (4/2, 4/1), then their median.
    assert ratios == {1: 1.0, 8: 3.0}
    assert rows[0] == [1, "1.5", "1.0-2.0", "100", "100", "1.00", "1.00"]
    # 8 images in 3 forward calls.
    assert rows[1] == [8, "4.0", "4.0-4.0", "100", "100", "2.67", "3.00"]


def test_answers_must_match_the_unbatched_ones():
    want = [_answer(0.1, ["a", "b"], [0.9, 0.8])]
    serve_batching.check_answers(want, [_answer(0.2, ["a", "b"], [0.9, 0.8])])
    for bad in (
        _answer(0.2, ["b", "a"], [0.9, 0.8]),
        _answer(0.2, ["a", "b"], [0.9, 0.7]),
        _answer(0.2, ["a", "b"], [0.9, 0.8], status=503),
    ):
        with pytest.raises(AssertionError):
            serve_batching.check_answers(want, [bad])
