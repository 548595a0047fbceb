"""Fixtures for the export tests: a tiny R-MAC model and image files."""

import pytest

from tests.export.helpers import tiny_rmac_model
from tests.export.helpers import write_images


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_rmac_model()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))
