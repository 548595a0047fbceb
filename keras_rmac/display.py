r"""File names shown to people: one readable, unambiguous, one-line form.

A Linux file name may hold any byte but `/` and NUL: newlines, terminal
escape sequences, right-to-left overrides, zero-width characters, bytes
that are not UTF-8 (Python hands those over as surrogate escapes, e.g.
`os.fsdecode(b"\xff")` is `"\udcff"`). Printed as they are, such names
break lines and tables, recolour the terminal, hide or reorder letters,
crash a UTF-8 writer, or crash Pillow's one-line text drawing.

`display_path` is the one form the console, the contact sheet and the
HTML page show. Printable characters stay as they are; everything else
becomes a Python-style escape, so that two different names never look
alike:

- a backslash is doubled: `\\`;
- newline, carriage return and tab: `\n`, `\r`, `\t`;
- other ASCII controls and DEL: `\x1b`, `\x7f`;
- a byte that is not valid UTF-8: `\xff` (always >= `\x80`, so never
  confused with an ASCII control);
- any other character Python's `str.isprintable` rejects (C1 controls,
  bidirectional and zero-width format characters, spaces other than
  U+0020, unassigned code points): `\u0085`, `\u202e`, `\U000e0001`;
- a space at the very start or end: `\x20`, so that it can be seen.

A width limit shortens the form in the middle with `…`, on escape
boundaries, keeping the start and the end (usually the extension).
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["ELLIPSIS", "display_path"]

ELLIPSIS = "\u2026"

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# os.fsdecode turns each undecodable byte 0x80..0xff into U+DC80..U+DCFF.
_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)


def _escape(char: str) -> str:
    """The display form of one character."""
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if code in _SURROGATE_ESCAPES:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _pieces(path: str | bytes | os.PathLike) -> list[str]:
    """The display form of `path`, one piece per character."""
    name = os.fsdecode(path)
    pieces = [_escape(char) for char in name]
    for end in (0, -1):
        if pieces and pieces[end] == " ":
            pieces[end] = "\\x20"
    return pieces


def display_path(
    path: str | bytes | os.PathLike,
    *,
    width: float | None = None,
    measure: Callable[[str], float] = len,
) -> str:
    r"""A file name or path as one readable, unambiguous line of text.

    See the module docstring for the escapes. Different names always give
    different forms, unless a width limit shortens them.

    Args:
        path: str, bytes or os.PathLike. The name; bytes are decoded as
            `os.fsdecode` does (undecodable bytes become `\xNN`).
        width: float or None. Longest allowed `measure(form)`; a longer
            form loses characters in the middle, replaced by `…`. Defaults
            to None (never shortened).
        measure: callable. The size of a string in `width`'s unit, e.g. a
            font's `textlength` for pixels. Defaults to `len` (characters).

    Returns:
        The display form, a str with no control character, no surrogate
        and no line break.

    Example:

    >>> import os
    >>> display_path("new\nline.jpg")
    'new\\nline.jpg'
    >>> print(display_path(os.fsdecode(b"bad\xff.jpg")))
    bad\xff.jpg
    >>> print(display_path("a" * 20 + ".jpg", width=12))
    aaaaa…aa.jpg
    """
    pieces = _pieces(path)
    text = "".join(pieces)
    if width is None or measure(text) <= width:
        return text

    def cut(head: int, tail: int) -> str:
        return (
            "".join(pieces[:head])
            + ELLIPSIS
            + "".join(pieces[len(pieces) - tail :])
        )

    # The most pieces, half from each end, that still fit (binary search:
    # the width grows with the pieces kept) ...
    low, high = 0, len(pieces) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if measure(cut(middle // 2, middle - middle // 2)) <= width:
            low = middle
        else:
            high = middle - 1
    head, tail = low // 2, low - low // 2
    # ... then one more piece at the end, or the start, while one fits
    # (pieces differ in width: an escape is four characters).
    while head + tail < len(pieces) - 1:
        if measure(cut(head, tail + 1)) <= width:
            tail += 1
        elif measure(cut(head + 1, tail)) <= width:
            head += 1
        else:
            break
    return cut(head, tail)
