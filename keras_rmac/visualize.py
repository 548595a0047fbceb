"""Pictures of search results: a contact sheet PNG and a self-contained HTML.

Both show the query first, then the ranked results with their rank and
score. Photos are read with `keras_rmac.data.image_io.load_image`, so they
appear upright (EXIF orientation applied); a result whose file can no
longer be read is drawn as a grey tile saying why, never an error. File
names are shown in `keras_rmac.display.display_path`'s one-line form
(control characters and undecodable bytes as escapes such as `\\n` and
`\\xff`), the same form `keras-rmac search` prints.
"""

import base64
import html
import io
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from PIL import ImageOps

from keras_rmac import fileio
from keras_rmac.data import image_io
from keras_rmac.display import display_path

logger = logging.getLogger(__name__)

_BACKGROUND = (255, 255, 255)
_QUERY_FRAME = (220, 40, 40)
_TEXT = (20, 20, 20)
_MISSING = (200, 200, 200)


def _as_results(results) -> list[tuple[int, float, str]]:
    """`(rank, score, path)` triples from SearchResult-like objects or
    `(path, score)` pairs."""
    out = []
    for i, item in enumerate(results):
        if hasattr(item, "path") and hasattr(item, "score"):
            rank = getattr(item, "rank", i + 1)
            out.append((int(rank), float(item.score), os.fspath(item.path)))
        else:
            path, score = item
            out.append((i + 1, float(score), os.fspath(path)))
    return out


def _thumbnail(source, size: int) -> tuple[Image.Image, str | None]:
    """A thumbnail fitting in `size` x `size`, and an error or None."""
    if isinstance(source, np.ndarray):
        image = Image.fromarray(np.asarray(source, np.uint8))
        error = None
    else:
        try:
            image = Image.fromarray(image_io.load_image(source))
            error = None
        except image_io.ImageError as err:
            image = Image.new("RGB", (size, size), _MISSING)
            error = err.reason
    # Scaled up or down to fill the tile, aspect ratio kept.
    image = ImageOps.contain(image, (size, size), Image.Resampling.LANCZOS)
    return image, error


# Tried in order: DejaVu Sans (on most Linux systems) draws Greek,
# Cyrillic, Hebrew and Arabic names that Pillow's own font shows as boxes.
_FONT_FILES = ("DejaVuSans.ttf",)


def _font(size: int):
    for name in _FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font.
        return ImageFont.load_default()


def _left_to_right(font) -> dict:
    """`draw.text` options for a left-to-right line where Pillow lays text
    out with libraqm: a Hebrew or Arabic name then keeps its extension on
    the right, as a terminal or a browser shows it. Without libraqm, text
    is drawn left to right anyway and `direction` is refused."""
    if getattr(font, "layout_engine", None) == ImageFont.Layout.RAQM:
        return {"direction": "ltr"}
    return {}


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """`text` broken into at most `max_lines` lines of `width` pixels."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    return [_fit_text(draw, line, font, width) for line in lines]


def _fit_text(draw, text: str, font, width: int) -> str:
    """`text` cut on the right with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def contact_sheet(
    query,
    results: Sequence,
    path: str | os.PathLike | None = None,
    *,
    thumb_size: int = 160,
    columns: int | None = None,
) -> Image.Image:
    """Draws the query and its ranked results on one image.

    The query comes first in a red frame, then one tile per result with
    `#rank  score` and the file name under its thumbnail, in its display
    form (`keras_rmac.display.display_path`), shortened in the middle
    with `…` when it is wider than the thumbnail.

    Args:
        query: str, os.PathLike or `(H, W, 3)` uint8 array. The query.
        results: sequence of `SearchResult` (anything with `.path`,
            `.score` and optionally `.rank`) or `(path, score)` pairs,
            best first.
        path: str, os.PathLike or None. Where to write the sheet (format
            from the extension, e.g. `.png`). Defaults to None (not saved).
        thumb_size: int. Longest side of each thumbnail in pixels. Defaults
            to 160.
        columns: int or None. Tiles per row; None picks
            `min(6, ceil(sqrt(tiles)))`-ish. Defaults to None.

    Returns:
        The sheet as an RGB `PIL.Image.Image`.

    Example:

    >>> import numpy as np
    >>> photo = np.zeros((40, 60, 3), np.uint8)
    >>> contact_sheet(photo, []).mode
    'RGB'
    """
    if int(thumb_size) < 16:
        raise ValueError(
            f"`thumb_size` must be >= 16. Received: thumb_size={thumb_size}"
        )
    thumb_size = int(thumb_size)
    items = _as_results(results)
    tiles = 1 + len(items)
    if columns is None:
        columns = min(6, max(1, math.ceil(math.sqrt(tiles * 1.5))))
    columns = max(1, min(int(columns), tiles))
    rows = math.ceil(tiles / columns)
    font_size = max(10, thumb_size // 12)
    font = _font(font_size)
    ltr = _left_to_right(font)
    pad = 8
    text_h = 2 * (font_size + 4)
    cell_w = thumb_size + 2 * pad
    cell_h = thumb_size + 2 * pad + text_h
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    entries = [("query", None, query)] + [
        (f"#{rank}  {score:.4f}", path, path) for rank, score, path in items
    ]
    for i, (label, name, source) in enumerate(entries):
        x0 = (i % columns) * cell_w
        y0 = (i // columns) * cell_h
        thumb, error = _thumbnail(source, thumb_size)
        tx = x0 + pad + (thumb_size - thumb.width) // 2
        ty = y0 + pad + (thumb_size - thumb.height) // 2
        sheet.paste(thumb, (tx, ty))
        if i == 0:
            draw.rectangle(
                (tx - 3, ty - 3, tx + thumb.width + 2, ty + thumb.height + 2),
                outline=_QUERY_FRAME,
                width=3,
            )
        if error is not None:
            max_lines = max(1, (thumb_size - 8) // (font_size + 2))
            for j, line in enumerate(
                _wrap(draw, error, font, thumb_size - 8, max_lines)
            ):
                draw.text(
                    (x0 + pad + 4, y0 + pad + 4 + j * (font_size + 2)),
                    line,
                    fill=_TEXT,
                    font=font,
                )
        if name is None and not isinstance(source, np.ndarray):
            name = source
        lines = [label]
        if name is not None:
            # One line, escaped, shortened in the middle (keeps the end).
            lines.append(
                display_path(
                    os.path.basename(os.fsdecode(name)),
                    width=thumb_size,
                    measure=lambda text: draw.textlength(
                        text, font=font, **ltr
                    ),
                )
            )
        for j, line in enumerate(lines):
            draw.text(
                (x0 + pad, y0 + pad + thumb_size + 4 + j * (font_size + 4)),
                line,
                fill=_QUERY_FRAME if i == 0 and j == 0 else _TEXT,
                font=font,
                **ltr,
            )
    if path is not None:
        # The temporary file keeps the extension, which picks the format.
        with fileio.atomic_write(path) as tmp:
            sheet.save(tmp)
    return sheet


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return "data:image/jpeg;base64," + encoded


def results_html(
    query,
    results: Sequence,
    *,
    title: str = "keras-rmac search results",
    thumb_size: int = 200,
) -> str:
    """A self-contained HTML page of the query and its ranked results.

    Every thumbnail is embedded as a base64 JPEG `data:` URI, so the page
    references no other file and can be mailed or archived on its own.
    Paths are shown in their display form (`keras_rmac.display`), then
    HTML-escaped.

    Args:
        query: str, os.PathLike or `(H, W, 3)` uint8 array. The query.
        results: as in `contact_sheet`.
        title: str. Page title. Defaults to "keras-rmac search results".
        thumb_size: int. Longest side of each thumbnail. Defaults to 200.

    Returns:
        The page as a str.

    Example:

    >>> import numpy as np
    >>> page = results_html(np.zeros((40, 60, 3), np.uint8), [])
    >>> "data:image/jpeg;base64," in page
    True
    """
    items = _as_results(results)
    esc = html.escape

    def figure(source, caption, name, extra_class=""):
        thumb, error = _thumbnail(source, int(thumb_size))
        note = f'<div class="err">{esc(error)}</div>' if error else ""
        link = (
            f'<div class="path">{esc(display_path(name))}</div>' if name else ""
        )
        return (
            f'<figure class="{extra_class}"><img src="{_data_uri(thumb)}" '
            f'alt="{esc(caption)}"><figcaption><b>{esc(caption)}</b>'
            f"{link}{note}</figcaption></figure>"
        )

    query_name = None if isinstance(query, np.ndarray) else os.fspath(query)
    parts = [figure(query, "query", query_name, "query")]
    for rank, score, path in items:
        parts.append(figure(path, f"#{rank}  {score:.4f}", path))
    rows = "".join(
        f"<tr><td>{rank}</td><td>{score:.4f}</td>"
        f"<td>{esc(display_path(path))}</td></tr>"
        for rank, score, path in items
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
figure {{ display: inline-block; margin: 6px; width: {thumb_size}px;
  vertical-align: top; }}
figure img {{ max-width: {thumb_size}px; max-height: {thumb_size}px; }}
figure.query img {{ outline: 3px solid #dc2828; }}
figcaption {{ font-size: 12px; word-break: break-all; }}
.path {{ color: #555; }} .err {{ color: #b00; }}
table {{ border-collapse: collapse; margin-top: 1em; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>{esc(title)}</h1>
<div>{"".join(parts)}</div>
<table><tr><th>rank</th><th>score</th><th>path</th></tr>{rows}</table>
</body></html>
"""


def write_html(
    query,
    results: Sequence,
    path: str | os.PathLike,
    **kwargs,
) -> None:
    """Writes `results_html(query, results, **kwargs)` to `path` (UTF-8),
    atomically (see `keras_rmac.fileio.atomic_write`)."""
    fileio.atomic_write_text(path, results_html(query, results, **kwargs))
