"""Progress reports: a plain line every ~10% off a terminal, no escapes."""

import io

from keras_rmac import progress


def _lines(target, updates, **kwargs):
    stream = io.StringIO()
    report = progress.LineProgress(target, stream=stream, **kwargs)
    for current in updates:
        report.update(current)
    return stream.getvalue()


def test_a_line_every_tenth_and_one_at_the_end():
    text = _lines(1000, range(1, 1001), unit_name="image")
    lines = text.splitlines()
    assert len(lines) == 11  # 0.1% (first), 10%, 20% ... 90%, 100%
    assert lines[0].startswith("progress: 1/1000 images (0%")
    assert lines[-1].startswith("progress: 1000/1000 images (100%")
    assert "\r" not in text and "\x1b" not in text


def test_add_counts_like_update_and_the_end_is_written_once():
    stream = io.StringIO()
    report = progress.LineProgress(3, stream=stream, label="indexing")
    report.add(1)
    report.add(2)
    report.close()
    lines = stream.getvalue().splitlines()
    assert lines == [lines[0], lines[1]]
    assert lines[0].startswith("indexing: 1/3 steps (33%")
    assert lines[1].startswith("indexing: 3/3 steps (100%")


def test_progress_bar_off_a_terminal_is_plain_and_quiet_when_asked(
    monkeypatch,
):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert progress.progress_bar(10, verbose=0) is None
    assert isinstance(progress.progress_bar(10), progress.LineProgress)
