"""Fixtures of the service tests: a tiny model and a small index."""

import io
import shutil

import numpy as np
import pytest

pytest.importorskip("starlette", reason="needs the serve extra")
pytest.importorskip("multipart", reason="needs the serve extra")

from keras_rmac import indexing  # noqa: E402
from tests.cli import photos  # noqa: E402

PHOTOS = 12
INDEX_KWARGS = dict(max_size=64, mode="exact", verbose=0)


def photo_name(i: int) -> str:
    return f"p{i:02d}.png"


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def add_photos(folder, start: int, count: int) -> None:
    for i in range(start, start + count):
        photos.save(folder / photo_name(i), photos.photo(i))


@pytest.fixture(scope="session")
def tiny_model():
    return photos.tiny_model(seed=0)


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, tiny_model):
    """`(photos folder, index dir)`, built once; copy it to change it."""
    root = tmp_path_factory.mktemp("serve")
    folder = root / "photos"
    add_photos(folder, 0, PHOTOS)
    (root / "secret.txt").write_text("TOP-SECRET: outside the indexed folder")
    index_dir = root / "index"
    indexing.index_folder(folder, index_dir, model=tiny_model, **INDEX_KWARGS)
    return folder, index_dir


@pytest.fixture
def own_index(tmp_path, built_index, tiny_model):
    """`(photos folder, index dir)` of a private copy, to change."""
    folder = tmp_path / "photos"
    shutil.copytree(built_index[0], folder)
    index_dir = tmp_path / "index"
    indexing.index_folder(folder, index_dir, model=tiny_model, **INDEX_KWARGS)
    return folder, index_dir
