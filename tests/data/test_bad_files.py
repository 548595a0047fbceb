"""Bad image files: validated up front, recorded during training."""

import os

from keras_rmac.data import bad_files
from keras_rmac.data import image_io
from keras_rmac.data import labelled


def test_validate_images_drops_and_lists_bad_files(folder, tmp_path):
    broken = os.path.join(folder, "c1", "zz.png")
    with open(broken, "wb") as f:
        f.write(b"<html>not found</html>")
    images = labelled.folder_per_class(folder)
    report = tmp_path / "bad.txt"
    good, errors = bad_files.validate_images(
        images, num_workers=2, report_path=report
    )
    assert len(good) == 9 and [e.path for e in errors] == [broken]
    assert broken not in good.paths
    lines = report.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(broken + "\t")
    # No bad file: the report is still written, empty.
    bad_files.validate_images(good, num_workers=0, report_path=report)
    assert report.read_text() == ""
    assert sorted(os.listdir(tmp_path)) == ["bad.txt", "train"]


def test_bad_files_logs_and_appends_each_file_once(tmp_path):
    report = tmp_path / "bad.txt"
    known = image_io.ImageError("old.png", "empty file (0 bytes)")
    record = bad_files.BadFiles(report, known=[known])
    record.add(known)
    record.add(image_io.ImageError("new.png", "not an image file"))
    record.add(image_io.ImageError("new.png", "not an image file"))
    assert len(record) == 2
    assert record.errors == {
        "old.png": "empty file (0 bytes)",
        "new.png": "not an image file",
    }
    assert report.read_text() == "new.png\tnot an image file\n"
