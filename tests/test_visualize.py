"""Contact sheet and HTML page of search results."""

import base64
import html
import io
import os
import re

import numpy as np
import pytest
from PIL import Image
from PIL import ImageDraw

from keras_rmac import visualize
from keras_rmac.display import ELLIPSIS
from keras_rmac.display import display_path
from keras_rmac.indexing import SearchResult
from tests import odd_names
from tests.cli import photos

WHITE = np.array([255, 255, 255])


def _tile(sheet: np.ndarray, index: int, columns: int, thumb: int):
    """The thumbnail box of tile `index` (layout of `contact_sheet`)."""
    pad = 8
    font = max(10, thumb // 12)
    cell_w = thumb + 2 * pad
    cell_h = thumb + 2 * pad + 2 * (font + 4)
    x0 = (index % columns) * cell_w + pad
    y0 = (index // columns) * cell_h + pad
    return sheet[y0 : y0 + thumb, x0 : x0 + thumb]


def _content_box(tile: np.ndarray):
    """Height and width of the non-white part of a tile."""
    mask = np.any(tile != 255, axis=-1)
    rows, cols = np.nonzero(mask)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


@pytest.fixture
def results(tmp_path):
    red = photos.save(
        tmp_path / "red.png", np.full((30, 40, 3), (250, 0, 0), np.uint8)
    )
    exif = tmp_path / "exif.jpg"
    photos.exif_rotated_jpeg(exif, photos.quadrants(48, 64))
    return [
        SearchResult(1, 0.97, str(red)),
        SearchResult(2, 0.5, str(exif)),
        SearchResult(3, 0.25, str(tmp_path / "gone.png")),
    ]


def test_contact_sheet_layout_and_tiles(results, tmp_path):
    query = np.full((60, 80, 3), (0, 0, 250), np.uint8)
    out = tmp_path / "sheet.png"
    sheet = visualize.contact_sheet(
        query, results, out, thumb_size=64, columns=2
    )
    with Image.open(out) as reloaded:
        assert reloaded.format == "PNG"
        pixels = np.asarray(reloaded.convert("RGB")).astype(int)
    assert sheet.size == reloaded.size
    cell_w, cell_h = 64 + 16, 64 + 16 + 2 * (10 + 4)
    assert reloaded.size == (2 * cell_w, 2 * cell_h)  # 4 tiles, 2 columns

    # Query: blue, framed in red, 64x48 after thumbnailing.
    q = _tile(pixels, 0, 2, 64)
    assert np.all(q[40, 32] == (0, 0, 250))
    blue = np.all(q == (0, 0, 250), axis=-1)
    assert blue.sum() == 48 * 64 and blue[8:56].all()
    assert np.all(q[6, 32] == visualize._QUERY_FRAME)  # frame above
    # Result 1: the red photo.
    r1 = _tile(pixels, 1, 2, 64)
    assert np.abs(r1[32, 32] - (250, 0, 0)).max() <= 2
    # Result 2: the EXIF-rotated photo is drawn upright (landscape), white
    # marker top-left.
    r2 = _tile(pixels, 2, 2, 64)
    height, width = _content_box(r2)
    assert (height, width) == (48, 64)
    top = (64 - 48) // 2
    assert np.all(r2[top + 2, 2] > 230)
    assert r2[top + 30, 50][2] < 100  # bottom-right quadrant is yellow
    # Result 3: the missing file is a grey tile, not an error.
    r3 = _tile(pixels, 3, 2, 64)
    assert np.all(r3[60, 60] == (200, 200, 200))
    # Every tile has a caption (dark pixels under the thumbnail).
    for i in range(4):
        y0 = (i // 2) * cell_h + 8 + 64 + 2
        x0 = (i % 2) * cell_w
        caption = pixels[y0 : y0 + 28, x0 : x0 + cell_w]
        assert (caption.sum(axis=-1) < 500).any(), i


def test_contact_sheet_accepts_pairs_and_no_results(tmp_path, results):
    pairs = [(r.path, r.score) for r in results]
    sheet = visualize.contact_sheet(results[0].path, pairs, thumb_size=32)
    assert sheet.mode == "RGB"
    assert visualize.contact_sheet(results[0].path, []).size[0] > 0
    with pytest.raises(ValueError, match="thumb_size"):
        visualize.contact_sheet(results[0].path, [], thumb_size=4)


def test_html_is_self_contained(results, tmp_path):
    weird = photos.save(
        tmp_path / "a<b>&c.png", np.full((20, 20, 3), 9, np.uint8)
    )
    hits = results + [SearchResult(4, 0.1, str(weird))]
    out = tmp_path / "page.html"
    visualize.write_html(results[0].path, hits, out, title="t<1>")
    page = out.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 1 + len(hits)
    for src in sources:
        assert src.startswith("data:image/jpeg;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "JPEG" and max(im.size) <= 200
    assert "<title>t&lt;1&gt;</title>" in page
    assert "a&lt;b&gt;&amp;c.png" in page and "a<b>" not in page
    assert "file not found" in page  # the missing result says why
    assert not re.search(r'(src|href)="(?!data:)', page)
    rows = re.findall(r"<tr><td>(\d+)</td><td>([\d.]+)</td>", page)
    assert rows == [
        ("1", "0.9700"),
        ("2", "0.5000"),
        ("3", "0.2500"),
        ("4", "0.1000"),
    ]


@pytest.fixture
def odd_results(tmp_path):
    """One result per odd name (see `tests.odd_names`), best first."""
    paths = odd_names.make_odd_folder(str(tmp_path / "odd"))
    return [
        SearchResult(i + 1, 1 - i / 100, path) for i, path in enumerate(paths)
    ]


@pytest.fixture
def drawn(monkeypatch):
    """`(method, text)` for every string handed to Pillow's text drawing
    (`text`) and measuring (`textlength`, `textbbox`)."""
    texts = []
    for method in ("text", "textlength", "textbbox"):
        original = getattr(ImageDraw.ImageDraw, method)

        def spy(
            self, xy_or_text, *args, _original=original, _method=method, **kw
        ):
            text = xy_or_text if isinstance(xy_or_text, str) else args[0]
            texts.append((_method, text))
            return _original(self, xy_or_text, *args, **kw)

        monkeypatch.setattr(ImageDraw.ImageDraw, method, spy)
    return texts


@pytest.mark.parametrize("thumb_size", [64, 160])
def test_contact_sheet_draws_odd_names(
    odd_results, drawn, tmp_path, thumb_size
):
    out = tmp_path / "odd.png"
    query = odd_results[0].path  # new\nline.jpg: the query's name too
    sheet = visualize.contact_sheet(
        query, odd_results, out, thumb_size=thumb_size, columns=4
    )
    with Image.open(out) as reloaded:
        assert reloaded.format == "PNG" and reloaded.size == sheet.size
        pixels = np.asarray(reloaded.convert("RGB")).astype(int)
    tiles = 1 + len(odd_results)
    font = max(10, thumb_size // 12)
    cell_w = thumb_size + 16
    cell_h = thumb_size + 16 + 2 * (font + 4)
    assert sheet.size == (4 * cell_w, -(-tiles // 4) * cell_h)
    for i in range(tiles):  # a photo in every tile, a name under each
        thumb = _tile(pixels, i, 4, thumb_size)
        assert (thumb != 255).any(axis=-1).mean() > 0.5, i
        y0 = (i // 4) * cell_h + 8 + thumb_size + 4 + font + 4
        name_row = pixels[y0 : y0 + font + 4, (i % 4) * cell_w :][:, :cell_w]
        assert (name_row.sum(axis=-1) < 300).any(), i

    # Pillow only ever saw one-line, printable text (no raw name).
    assert drawn
    for _, text in drawn:
        assert text.isprintable(), repr(text)
    # Each name is drawn in its display form, shortened in the middle
    # when wider than the thumbnail.
    names = [
        t for m, t in drawn if m == "text" and not t.startswith(("#", "query"))
    ]
    assert len(names) == 1 + len(odd_results)
    assert names[0] == names[1]  # the query is result #1
    for (_, expected), result, name in zip(
        odd_names.ODD_NAMES, odd_results, names[1:]
    ):
        assert display_path(os.path.basename(result.path)) == expected
        if name != expected:  # cut in the middle, on escape boundaries
            head, tail = name.split(ELLIPSIS)
            assert head and tail, name
            assert expected.startswith(head) and expected.endswith(tail)
            assert len(head) + len(tail) < len(expected)
    # The 252-byte name is cut in the middle, keeping both ends.
    assert ELLIPSIS in names[-1] and names[-1].startswith("long")
    assert names[-1].endswith(".jpg")
    if thumb_size == 160:  # short names are drawn whole
        for form in (r"new\nline.jpg", r"bad\xff\xfe.jpg", r"back\\slash.jpg"):
            assert form in names


def test_html_shows_odd_names_escaped(odd_results, tmp_path):
    out = tmp_path / "odd.html"
    query = odd_results[0].path
    visualize.write_html(query, odd_results, out, title="odd <names>")
    page = out.read_text(encoding="utf-8")  # strict: no surrogate written
    shown = re.findall(r'<div class="path">(.*?)</div>', page, re.S)
    table = re.findall(r"<tr><td>\d+</td><td>[\d.]+</td><td>(.*?)</td>", page)
    expected = [html.escape(display_path(r.path)) for r in odd_results]
    assert shown == [expected[0]] + expected
    assert table == expected
    for (_, form), text in zip(odd_names.ODD_NAMES, expected):
        # In a full path, the name's leading space is not the path's.
        in_path = ("/" + form).replace("/\\x20", "/ ")
        assert text.endswith(html.escape(in_path)), (text, in_path)
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in page
    assert "&quot;quote &amp; amp.jpg" in page
    assert "<img src=x" not in page and '"quote' not in page
    assert r"new\nline.jpg" in page and r"bad\xff\xfe.jpg" in page
    assert r"back\\slash.jpg" in page and r"rtl\u202eexe.jpg" in page
    for char in "\x1b\x7f\x85\u202e\u200b\r":
        assert char not in page, repr(char)
    assert "<title>odd &lt;names&gt;</title>" in page
