"""Fixtures shared by the data tests."""

import pytest

from tests.data.helpers import solid
from tests.data.helpers import write_image


@pytest.fixture
def folder(tmp_path):
    """3 classes x 3 solid-colour images; class c has value 40 * (c + 1)."""
    root = tmp_path / "train"
    for c in range(3):
        for i in range(3):
            write_image(
                str(root / f"c{c}" / f"{i}.png"), solid(40 * (c + 1) + i)
            )
    return str(root)
