"""`keras-rmac index` then `search` on photos with odd but legal names:
the console, `--sheet` and `--html` show each name in its display form."""

import html
import json
import os
import re

import numpy as np
from PIL import Image

from keras_rmac.display import display_path
from tests import odd_names
from tests.cli import photos
from tests.cli.photos import cli


def test_search_shows_odd_names_escaped(tmp_path, capsys):
    paths = odd_names.make_odd_folder(str(tmp_path / "odd"))
    model = tmp_path / "tiny.keras"
    photos.tiny_model(seed=0).save(model)
    index_dir = tmp_path / "index"
    index_args = ["index", str(tmp_path / "odd"), "--index", str(index_dir)]
    index_args += ["--model", str(model), "--max-size", "48"]
    assert cli(index_args + ["--mode", "exact", "-q"]) == 0
    capsys.readouterr()

    query = paths[0]  # "new\nline.jpg", itself a result
    out = tmp_path / "out"
    sheet, page = out / "sheet.png", out / "page.html"
    k = len(paths)
    search_args = ["search", query, "--index", str(index_dir), "-k", str(k)]
    code = cli(search_args + ["--sheet", str(sheet), "--html", str(page)])
    printed = capsys.readouterr().out
    assert code == 0

    # Console: one line per result, every name in its display form.
    lines = printed.splitlines()
    assert len(lines) == 1 + k + 2, printed
    assert lines[0].split() == ["rank", "score", "path"]
    rows = [re.fullmatch(r" *\d+ +-?\d\.\d{4}  (.*)", ln) for ln in lines]
    assert all(rows[1 : 1 + k]), printed
    shown = sorted(row[1] for row in rows[1 : 1 + k])
    assert shown == sorted(display_path(path) for path in paths)
    for _, form in odd_names.ODD_NAMES:
        # A name's leading space is not the start of the full path.
        in_path = ("/" + form).replace("/\\x20", "/ ")
        assert sum(line.endswith(in_path) for line in lines) == 1, form
    assert lines[1].endswith(r"/new\nline.jpg")  # the query finds itself
    for char in "\x1b\x7f\x85\u202e\u200b\r\t":
        assert char not in printed, repr(char)
    printed.encode("utf-8")  # no surrogate: prints on any UTF-8 console
    assert lines[-2] == f"Contact sheet: {sheet}"
    assert lines[-1] == f"HTML page: {page}"

    with Image.open(sheet) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels != 255).any(axis=-1).mean() > 0.2  # photos were drawn

    text = page.read_text(encoding="utf-8")
    for path in paths:
        assert html.escape(display_path(path)) in text
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in text
    assert "&quot;quote &amp; amp.jpg" in text
    assert "<img src=x" not in text
    assert r"new\nline.jpg in " in text  # the page title names the query

    # --json keeps the exact paths, for programs (undecodable bytes as
    # JSON surrogate escapes, which Python reads back as os.fsdecode's).
    assert cli(search_args + ["--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert sorted(hit["path"] for hit in hits) == sorted(paths)
    assert {os.fsencode(hit["path"]) for hit in hits} == {
        os.path.join(os.fsencode(tmp_path / "odd"), name)
        for name, _ in odd_names.ODD_NAMES
    }
