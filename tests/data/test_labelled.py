"""Labelled image lists: the one CSV reader and writer, one folder per class."""

import os

import numpy as np
import pytest

from keras_rmac.data import image_io
from keras_rmac.data import labelled as L
from tests.data.helpers import solid
from tests.data.helpers import write_image


def test_read_image_list_layouts(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("a.jpg,7\nsub/b.jpg,3\n/abs/c.jpg,7\n")
    images = L.read_image_list(plain)
    assert images.paths == [
        str(tmp_path / "a.jpg"),
        str(tmp_path / "sub" / "b.jpg"),
        "/abs/c.jpg",
    ]
    assert images.class_names == ["3", "7"]
    assert images.labels.tolist() == [1, 0, 1]
    assert images.boxes is None

    clean = tmp_path / "clean.csv"
    clean.write_text("path,label,x0,y0,x1,y1\na.jpg,x,1,2,30,40\nb.jpg,y,,,,\n")
    images = L.read_image_list(clean, root="/data")
    assert images.paths == ["/data/a.jpg", "/data/b.jpg"]
    np.testing.assert_array_equal(images.boxes[0], [1, 2, 30, 40])
    assert np.isnan(images.boxes[1]).all()

    gld = tmp_path / "train.csv"
    gld.write_text("id,url,landmark_id\nabcdef,http://x,12\n0123ff,None,5\n")
    images = L.read_image_list(gld, root="/gld/train")
    assert images.paths == [
        "/gld/train/a/b/c/abcdef.jpg",
        "/gld/train/0/1/2/0123ff.jpg",
    ]
    assert [images.class_names[i] for i in images.labels] == ["12", "5"]

    gld_clean = tmp_path / "train_clean.csv"
    gld_clean.write_text("landmark_id,images\n9,aaa111 bbb222\n4,ccc333\n")
    images = L.read_image_list(gld_clean, root="/r")
    assert images.paths == [
        "/r/a/a/a/aaa111.jpg",
        "/r/b/b/b/bbb222.jpg",
        "/r/c/c/c/ccc333.jpg",
    ]
    assert [images.class_names[i] for i in images.labels] == ["9", "9", "4"]

    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,1\nonly_a_path\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        L.read_image_list(bad)


def test_folder_per_class(folder, tmp_path):
    images = L.folder_per_class(folder)
    assert len(images) == 9
    assert images.class_names == ["c0", "c1", "c2"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(FileNotFoundError):
        L.folder_per_class(tmp_path / "missing")
    (tmp_path / "empty" / "c0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No class folders"):
        L.folder_per_class(tmp_path / "empty")


def test_class_folders_use_the_image_extension_set(tmp_path):
    # One listing for training (recursive) and the folder benchmark (not):
    # image_io's extensions (`.pgm` included), hidden entries skipped,
    # classes in natural order.
    for name in ("10/a.pgm", "2/b.PNG", "2/sub/c.jpg"):
        write_image(str(tmp_path / name), solid(9))
    (tmp_path / "2" / "notes.txt").write_text("not an image")
    (tmp_path / "2" / ".hidden.png").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    write_image(str(tmp_path / ".git" / "x.png"), solid(1))
    (tmp_path / "empty").mkdir()
    (tmp_path / "top.png").write_bytes(b"")
    got = L.class_folders(tmp_path)
    assert got == [
        ("2", [str(tmp_path / "2/b.PNG"), str(tmp_path / "2/sub/c.jpg")]),
        ("10", [str(tmp_path / "10/a.pgm")]),
        ("empty", []),
    ]
    flat = L.class_folders(tmp_path, recursive=False)
    assert flat[0] == ("2", [str(tmp_path / "2/b.PNG")])
    for _, files in got:
        assert all(image_io.is_image_file(f) for f in files)
    images = L.folder_per_class(tmp_path)
    assert images.class_names == ["2", "10"]
    assert images.label_names() == ["2", "2", "10"]


# ---------------------------------------------------------------------------
# The one header rule.


def _list(tmp_path, text, name="list.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "header",
    [
        "path,label",
        "PATH , Label",
        "image,class",
        "filename,landmark_id",
        "file,instance",
        "label,path",
    ],
)
def test_header_present_names_the_columns(tmp_path, header):
    rows = "a.jpg,x\nb.jpg,y\n"
    if header == "label,path":
        rows = "x,a.jpg\ny,b.jpg\n"
    images = L.read_image_list(_list(tmp_path, header + "\n" + rows), root="")
    assert images.paths == ["a.jpg", "b.jpg"]
    assert images.label_names() == ["x", "y"]
    assert images.boxes is None


def test_header_absent_first_row_is_data(tmp_path):
    # A first row that does not name both columns is an image.
    images = L.read_image_list(
        _list(tmp_path, "path.jpg,7\nb.jpg,3\n"), root=""
    )
    assert images.paths == ["path.jpg", "b.jpg"]
    assert images.label_names() == ["7", "3"]
    # Extra columns without a header: ignored unless there are six.
    images = L.read_image_list(_list(tmp_path, "a.jpg,1,note\n"), root="")
    assert images.boxes is None and images.paths == ["a.jpg"]
    # A header may carry other columns, in any order; they are ignored.
    text = "url,x1,label,y0,x0,path,y1\nhttp://a,30,k,2,1,a.jpg,40\n"
    images = L.read_image_list(_list(tmp_path, text), root="/r")
    assert images.paths == ["/r/a.jpg"] and images.label_names() == ["k"]
    np.testing.assert_array_equal(images.boxes, [[1, 2, 30, 40]])


def test_boxes_with_and_without_header(tmp_path):
    text = "a.jpg,x,1,2,30,40\nb.jpg,y\nc.jpg,y,,,,\nd.jpg,x,0.5,1,2.25,3\n"
    images = L.read_image_list(_list(tmp_path, text))
    np.testing.assert_array_equal(images.boxes[0], [1, 2, 30, 40])
    assert np.isnan(images.boxes[1]).all() and np.isnan(images.boxes[2]).all()
    np.testing.assert_array_equal(images.boxes[3], [0.5, 1, 2.25, 3])
    assert images.boxes.dtype == np.float32
    bad = _list(
        tmp_path,
        "path,label,x0,y0,x1,y1\na.jpg,x,1,2,3,4\nb.jpg,x,1,two,3,4\n",
        "bad_box.csv",
    )
    with pytest.raises(ValueError, match=r"bad_box.csv:3: box columns"):
        L.read_image_list(bad)


def test_relative_paths_resolve_against_the_csv_folder(tmp_path):
    (tmp_path / "lists").mkdir()
    path = _list(
        tmp_path, "path,label\n../img/a.jpg,x\n/abs/b.jpg,y\n", "lists/l.csv"
    )
    images = L.read_image_list(path)
    assert images.paths == [
        str(tmp_path / "lists" / "../img/a.jpg"),
        "/abs/b.jpg",
    ]
    assert (
        L.read_image_list(path, root="/data").paths[0] == "/data/../img/a.jpg"
    )
    assert L.read_image_list(path, root="").paths[0] == "../img/a.jpg"
    # A list named without a folder is relative to the current folder.
    cwd = os.getcwd()
    os.chdir(tmp_path / "lists")
    try:
        assert L.read_image_list("l.csv").paths[0] == "../img/a.jpg"
    finally:
        os.chdir(cwd)


def test_google_landmarks_layouts_without_root(tmp_path):
    gld = _list(
        tmp_path, "id,url,landmark_id\nabcdef,http://x,12\n", "train.csv"
    )
    assert L.read_image_list(gld).paths == [str(tmp_path / "a/b/c/abcdef.jpg")]
    clean = _list(tmp_path, "landmark_id,images\n9,aaa111\n", "train_clean.csv")
    assert L.read_image_list(clean).paths == [
        str(tmp_path / "a/a/a/aaa111.jpg")
    ]
    short = _list(
        tmp_path, "id,url,landmark_id\nabcdef,http://x\n", "short.csv"
    )
    with pytest.raises(
        ValueError, match=r"short.csv:2: expected `id,url,landmark_id`"
    ):
        L.read_image_list(short)


@pytest.mark.parametrize(
    "text,line",
    [
        ("path,label\na.jpg\n", 2),
        ("a.jpg,1\n\n\nonly_a_path\n", 4),  # blank lines still count
        ("path,label\na.jpg,1\n ,2\n", 3),  # empty path
        ("a.jpg,\n", 1),  # empty label
    ],
)
def test_bad_row_names_file_and_line(tmp_path, text, line):
    path = _list(tmp_path, text, "broken.csv")
    with pytest.raises(
        ValueError, match=rf"broken.csv:{line}: .*Fix or remove"
    ):
        L.read_image_list(path)


def test_empty_list_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty image list"):
        L.read_image_list(_list(tmp_path, "\n \n", "empty.csv"))


# ---------------------------------------------------------------------------
# Writing.


def test_write_then_read_round_trip(tmp_path, monkeypatch):
    # Relative paths are relative to the current folder in memory and to
    # the list's folder on disk; absolute ones are kept.
    monkeypatch.chdir(tmp_path)
    boxes = np.array([[1, 2, 30, 40], [np.nan] * 4, [0.5, 1, 2.7, 3]])
    images = L.LabelledImages.from_labels(
        ["dir/a,1.jpg", "/abs/b.jpg", "c.png"], ["x", "lab el", "x"], boxes
    )
    out = tmp_path / "lists" / "clean.csv"
    L.write_image_list(out, images)
    text = out.read_text()
    assert text.splitlines() == [
        "path,label,x0,y0,x1,y1",
        '"../dir/a,1.jpg",x,1,2,30,40',
        "/abs/b.jpg,lab el,,,,",
        "../c.png,x,0.5,1,2.7,3",
    ]
    back = L.read_image_list(out)
    assert [os.path.relpath(p) for p in back.paths[::2]] == [
        "dir/a,1.jpg",
        "c.png",
    ]
    assert back.paths[1] == "/abs/b.jpg"
    assert back.label_names() == images.label_names()
    np.testing.assert_array_equal(back.boxes, images.boxes)
    assert not [p for p in os.listdir(out.parent) if ".tmp" in p]
    # Without boxes: two columns.
    L.write_image_list(out, L.LabelledImages(["/abs/b.jpg"], [0], ["y"]))
    assert out.read_text() == "path,label\n/abs/b.jpg,y\n"
