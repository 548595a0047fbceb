"""keras_rmac.fileio: a file is always its old or its new complete self."""

import hashlib
import json
import os

import numpy as np
import pytest

from keras_rmac import fileio


def _names(folder):
    return sorted(os.listdir(folder))


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    fileio.atomic_write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert _names(tmp_path) == ["a.json"]


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with fileio.atomic_write(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["a.txt"]


def test_the_temporary_keeps_the_extension_for_writers_that_read_it(
    tmp_path,
):
    with fileio.atomic_write(tmp_path / "m.weights.h5") as tmp:
        seen = os.path.basename(tmp)
        open(tmp, "wb").close()
    assert seen.endswith(".weights.h5") and seen.startswith(".m.weights.h5")
    with fileio.atomic_write(tmp_path / ".hidden") as tmp:
        assert os.path.basename(tmp).startswith("..hidden.tmp-")
        open(tmp, "wb").close()


def test_missing_folders_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    fileio.atomic_write_text(path, "é")
    assert path.read_bytes() == "é".encode()


def test_npy_round_trip(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    fileio.atomic_save_npy(tmp_path / "x.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), array)


def test_file_sha256_equals_hashlib(tmp_path):
    data = os.urandom(100_000)
    (tmp_path / "f").write_bytes(data)
    assert (
        fileio.file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    )


def test_a_second_lock_fails_at_once_and_the_first_release_frees_it(
    tmp_path,
):
    class Busy(RuntimeError):
        pass

    path = tmp_path / ".lock"
    with fileio.FileLock(path):
        with pytest.raises(Busy, match="in use"):
            with fileio.FileLock(path, "in use", Busy):
                pass
        with pytest.raises(fileio.LockedError):
            with fileio.FileLock(path):
                pass
    with fileio.FileLock(path):  # Released: can be taken again.
        pass


def test_fsync_tree_visits_everything_without_changing_it(
    tmp_path, monkeypatch
):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f.txt").write_text("1")
    (tmp_path / "d" / "e" / "g.txt").write_text("2")
    seen = []
    real = fileio.fsync_path
    monkeypatch.setattr(
        fileio, "fsync_path", lambda p: seen.append(os.fspath(p)) or real(p)
    )
    fileio.fsync_tree(tmp_path / "d")
    rel = [os.path.relpath(p, tmp_path) for p in seen]
    assert sorted(rel) == sorted(["d", "d/e", "d/f.txt", "d/e/g.txt"])
    # Folders after what they hold.
    assert rel.index("d/e/g.txt") < rel.index("d/e") < rel.index("d")
    assert (tmp_path / "d" / "e" / "g.txt").read_text() == "2"


def test_link_or_copy_links_else_copies(tmp_path, monkeypatch):
    import os

    from keras_rmac import fileio

    source = tmp_path / "a.bin"
    source.write_bytes(b"written once")
    fileio.link_or_copy(str(source), str(tmp_path / "linked.bin"))
    assert os.path.samefile(source, tmp_path / "linked.bin")

    def no_links(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    fileio.link_or_copy(str(source), str(tmp_path / "copied.bin"))
    copied = tmp_path / "copied.bin"
    assert copied.read_bytes() == b"written once"
    assert not os.path.samefile(source, copied)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin",
        "copied.bin",
        "linked.bin",
    ]  # no temporary file left
