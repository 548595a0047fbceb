"""The one display form of file names (console, contact sheet, HTML)."""

import os
import pathlib

import pytest

from keras_rmac.display import ELLIPSIS
from keras_rmac.display import display_path
from tests.odd_names import ODD_NAMES


@pytest.mark.parametrize(
    "name, expected",
    [
        ("plain name.jpg", "plain name.jpg"),
        ("new\nline.jpg", r"new\nline.jpg"),
        ("tab\there.jpg", r"tab\there.jpg"),
        ("cr\r.jpg", r"cr\r.jpg"),
        ("esc\x1b[31mred\x1b[0m.jpg", r"esc\x1b[31mred\x1b[0m.jpg"),
        ("nul\x00bell\x07.jpg", r"nul\x00bell\x07.jpg"),
        ("del\x7f.jpg", r"del\x7f.jpg"),
        # C1 controls are characters, shown as \u00NN: never mistaken for
        # the undecodable bytes 0x80..0x9f, shown as \xNN.
        ("c1\x80\x85\x9b\x9f.jpg", r"c1\u0080\u0085\u009b\u009f.jpg"),
        (os.fsdecode(b"bad\xff.jpg"), r"bad\xff.jpg"),
        (os.fsdecode(b"\x85\x80"), r"\x85\x80"),
        (b"bytes\xfe\n.jpg", r"bytes\xfe\n.jpg"),
        ("back\\slash.jpg", r"back\\slash.jpg"),
        (r"not\na newline.jpg", r"not\\na newline.jpg"),
        (r"\x1b", r"\\x1b"),
        ("rtl\u202egpj.exe", r"rtl\u202egpj.exe"),
        (
            "lrm\u200e rlm\u200f fsi\u2068.jpg",
            r"lrm\u200e rlm\u200f fsi\u2068.jpg",
        ),
        (
            "zw\u200b\u200c\u200d\u2060\ufeff.jpg",
            r"zw\u200b\u200c\u200d\u2060\ufeff.jpg",
        ),
        ("soft\xadhyphen.jpg", r"soft\u00adhyphen.jpg"),
        ("nbsp\xa0ideo\u3000.jpg", r"nbsp\u00a0ideo\u3000.jpg"),
        ("line\u2028para\u2029.jpg", r"line\u2028para\u2029.jpg"),
        ("tag\U000e0041.jpg", r"tag\U000e0041.jpg"),
        (" lead.jpg", r"\x20lead.jpg"),
        ("trail.jpg ", r"trail.jpg\x20"),
        ("  two.jpg", r"\x20 two.jpg"),
        ("שלום.jpg", "שלום.jpg"),
        ("café Ünïcode 写真 ẞ.jpg", "café Ünïcode 写真 ẞ.jpg"),
        ("<img src=x onerror=1>.jpg", "<img src=x onerror=1>.jpg"),
        ('"quote & amp.jpg', '"quote & amp.jpg'),
        (pathlib.Path("dir/new\nline.jpg"), r"dir/new\nline.jpg"),
        ("", ""),
    ],
)
def test_display_path_escapes(name, expected):
    assert display_path(name) == expected


def test_the_odd_test_names_display_as_written():
    for name, expected in ODD_NAMES:
        assert display_path(name) == expected
        assert display_path(os.fsdecode(name)) == expected


def test_display_forms_are_one_printable_line_and_never_collide():
    names = [os.fsdecode(name) for name, _ in ODD_NAMES] + [
        "a\nb",
        r"a\nb",
        "a\\\nb",
        "a\x85",
        os.fsdecode(b"a\x85"),
        "a\x1b",
        r"a\x1b",
        "a ",
        r"a\x20",
        "a\u202e",
        r"a\u202e",
    ]
    forms = [display_path(name) for name in names]
    assert len(set(forms)) == len(set(names))
    for form in forms:
        assert form.isprintable(), form
        form.encode("utf-8")  # no surrogate left
        assert "\n" not in form and "\r" not in form


def test_long_name_is_shortened_in_the_middle():
    name = "a" * 150 + "b" * 146 + ".jpg"
    assert len(name) == 300
    assert display_path(name) == name
    short = display_path(name, width=40)
    assert short == "a" * 19 + ELLIPSIS + "b" * 16 + ".jpg"
    assert display_path(name, width=300) == name
    assert display_path(name, width=299) == (
        "a" * 149 + ELLIPSIS + "b" * 145 + ".jpg"
    )
    # Any unit: here two "pixels" per character.
    assert display_path(name, width=80, measure=lambda s: 2 * len(s)) == short
    assert display_path(name, width=0) == ELLIPSIS


def test_shortening_keeps_escapes_whole():
    # 10 escapes of 4 characters, then 4 one-character pieces.
    name = "\x1b" * 10 + ".jpg"
    assert display_path(name, width=11) == r"\x1b\x1b" + ELLIPSIS + "pg"
    assert display_path(name, width=12) == r"\x1b\x1b" + ELLIPSIS + "jpg"
    # Uneven pieces: one more at the end where a whole one fits.
    assert display_path(name, width=15) == r"\x1b\x1b" + ELLIPSIS + ".jpg"
    assert display_path(name, width=16) == r"\x1b" * 3 + ELLIPSIS + "jpg"
    assert display_path(name, width=17) == r"\x1b" * 3 + ELLIPSIS + ".jpg"
