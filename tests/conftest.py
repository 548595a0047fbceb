"""Shared pytest fixtures.

Real data (COIL-100 photos, ImageNet weights) lives outside the repository
in ``../shared/data`` (or wherever ``KERAS_RMAC_DATA`` points). Tests that
need it are marked ``slow`` and run by default whenever it exists.
"""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir():
    """The shared data folder, or None when it is absent."""
    env = os.environ.get("KERAS_RMAC_DATA")
    path = pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir():
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared data not found: set KERAS_RMAC_DATA")
    return path


@pytest.fixture(scope="session")
def coil_dir(data_dir):
    path = data_dir / "coil100"
    if not path.is_dir():
        pytest.skip(f"COIL-100 not found in {data_dir}")
    return path


@pytest.fixture(scope="session")
def weights_dir(data_dir):
    path = data_dir / "weights"
    if not path.is_dir():
        pytest.skip(f"weights not found in {data_dir}")
    return path
