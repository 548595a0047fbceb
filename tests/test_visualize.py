"""Contact sheet and HTML page of search results."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from keras_rmac import visualize
from keras_rmac.indexing import SearchResult
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
