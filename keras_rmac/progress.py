"""Progress for long loops: a live bar on a terminal, a few lines elsewhere.

`keras.utils.Progbar` redraws itself with carriage returns and ANSI codes
on every update, which fills a log file or a pipe with hundreds of escape
sequences. `progress_bar` gives the Keras bar only when the stream is a
terminal; otherwise it writes one plain line every ~10% (and at the end).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["LineProgress", "progress_bar"]


class LineProgress:
    """A `Progbar`-compatible progress report as plain lines.

    Writes `"{label}: {done}/{total} {unit}s (P%, T s)"` each time the
    count crosses another `every` fraction of `total`, and once at the end.
    Without a total (`None`), one line every 10 updates' worth is not
    meaningful, so it writes only the final count via `close()`.

    Args:
        target: int or None. The total count.
        unit_name: str. What is counted. Defaults to `"step"`.
        stream: text stream. Defaults to `sys.stderr`.
        every: float. Fraction of `target` between lines. Defaults to 0.1.
        label: str. Prefix of each line. Defaults to `"progress"`.
    """

    def __init__(
        self,
        target: int | None,
        unit_name: str = "step",
        stream: TextIO | None = None,
        every: float = 0.1,
        label: str = "progress",
    ):
        self.target = target
        self.unit_name = unit_name
        self.stream = stream
        self.every = every
        self.label = label
        self._seen = 0
        self._next = 0.0
        self._start = time.monotonic()
        self._closed = False

    def update(self, current: int, values=None, finalize=None) -> None:
        """Sets the count to `current` (like `Progbar.update`)."""
        del values, finalize
        self._seen = int(current)
        if not self.target:
            return
        fraction = self._seen / self.target
        if fraction >= 1.0:
            self.close()
        elif fraction >= self._next:
            self._write()
            while self._next <= fraction:
                self._next += self.every

    def add(self, n: int, values=None) -> None:
        """Adds `n` to the count (like `Progbar.add`)."""
        del values
        self.update(self._seen + int(n))

    def close(self) -> None:
        """Writes the final line (once)."""
        if not self._closed:
            self._closed = True
            self._write()

    def _write(self) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        elapsed = time.monotonic() - self._start
        if self.target:
            percent = 100.0 * self._seen / self.target
            text = (
                f"{self.label}: {self._seen}/{self.target} "
                f"{self.unit_name}s ({percent:.0f}%, {elapsed:.0f} s)"
            )
        else:
            text = (
                f"{self.label}: {self._seen} {self.unit_name}s "
                f"({elapsed:.0f} s)"
            )
        stream.write(text + "\n")
        stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(
    target: int | None,
    verbose: int = 1,
    unit_name: str = "step",
    label: str = "progress",
):
    """A progress reporter with `update(current)` and `add(n)`, or None.

    Args:
        target: int or None. The total count.
        verbose: int. 0 returns None (no progress), anything else a
            reporter. Defaults to 1.
        unit_name: str. What is counted. Defaults to `"step"`.
        label: str. Prefix of the plain lines. Defaults to `"progress"`.

    Returns:
        `keras.utils.Progbar` when standard output is a terminal, else a
        `LineProgress` writing to standard error, or None when `verbose` is
        0.

    Example:

    >>> import io
    >>> report = LineProgress(4, unit_name="image", stream=io.StringIO())
    >>> for i in range(4):
    ...     report.update(i + 1)
    >>> print(report.stream.getvalue().splitlines()[-1][:22])
    progress: 4/4 images (
    """
    if not verbose:
        return None
    if _is_terminal(sys.stdout):
        import keras

        return keras.utils.Progbar(target, verbose=1, unit_name=unit_name)
    return LineProgress(target, unit_name=unit_name, label=label)
