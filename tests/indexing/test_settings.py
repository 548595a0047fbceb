"""keras_rmac.indexing.settings: validation, resolution, light import."""

import subprocess
import sys

import pytest

from keras_rmac import indexing
from keras_rmac.indexing import IndexSettings
from keras_rmac.search import KINDS
from tests.indexing.interrupt import REPO_ROOT


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("mode", "fastest", "`mode` must be one of"),
        ("bytes_per_vector", 32, "`bytes_per_vector` must be one of"),
        ("max_size", 0, "`max_size` must be a positive int"),
        ("max_size", True, "`max_size` must be a positive int"),
        ("max_size", 1.5, "`max_size` must be a positive int"),
        ("scales", (), "`scales` must be positive"),
        ("scales", (1.0, -0.5), "`scales` must be positive"),
        ("shard_size", 0, "`shard_size` must be an int >= 1"),
        ("batch_size", 0, "`batch_size` must be an int >= 1"),
        ("batch_size", 2.5, "`batch_size` must be an int >= 1"),
        ("num_workers", -1, "`num_workers` must be an int >= 0"),
    ],
)
def test_invalid_settings_refused(field, value, match):
    # A wrong type is a TypeError (keras_rmac.checks), a bad value a
    # ValueError.
    error = TypeError if isinstance(value, float) else ValueError
    if field in ("max_size", "mode", "bytes_per_vector", "scales"):
        error = ValueError  # Checked by the settings' own rules.
    with pytest.raises(error, match=match):
        IndexSettings(**{field: value})
    # Also through replace() and index_folder's keyword overrides.
    with pytest.raises(error, match=match):
        IndexSettings().replace(**{field: value})


def test_valid_settings_normalised():
    settings = IndexSettings(scales=[1, 0.5], num_workers=0)
    assert settings.scales == (1.0, 0.5)
    assert all(isinstance(s, float) for s in settings.scales)
    for mode in KINDS:
        assert IndexSettings(mode=mode).mode == mode


def test_resolve_fills_from_the_index_then_defaults():
    new = IndexSettings().resolve(None)
    assert (new.max_size, new.scales, new.mode, new.bytes_per_vector) == (
        indexing.DEFAULT_MAX_SIZE,
        (1.0,),
        "fast",
        64,
    )
    recorded = {
        "max_size": 96,
        "scales": [1.0, 0.5],
        "mode": "compact",
        "bytes_per_vector": 128,
        "model_spec": {"backbone": "vgg16"},
    }
    kept = IndexSettings(mode="exact").resolve(recorded)
    assert (kept.max_size, kept.scales, kept.mode) == (96, (1.0, 0.5), "exact")
    assert kept.bytes_per_vector == 128
    assert kept.model_spec == {"backbone": "vgg16"}
    with pytest.raises(indexing.IndexMismatchError, match="max_size=96"):
        IndexSettings(max_size=64).resolve(recorded, "here")
    with pytest.raises(indexing.IndexMismatchError, match="scales"):
        IndexSettings(scales=(1.0,)).resolve(recorded)


def test_index_folder_takes_settings_and_refuses_a_model_in_their_place(
    tmp_path,
):
    (tmp_path / "photos").mkdir()
    with pytest.raises(TypeError, match="model="):
        indexing.index_folder(tmp_path / "photos", tmp_path / "i", object())
    with pytest.raises(ValueError, match="`mode` must be one of"):
        indexing.index_folder(tmp_path / "photos", tmp_path / "i", mode="x")


def test_settings_module_imports_no_framework():
    # In the keras-rmac process (where keras_rmac/__init__ is lazy), the
    # settings module and what it imports load no framework.
    code = (
        "import sys, importlib.util, pathlib\n"
        "sys.argv[0] = 'keras-rmac'\n"
        "path = pathlib.Path('keras_rmac/indexing/settings.py')\n"
        "spec = importlib.util.spec_from_file_location('s', path)\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['s'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert module.DEFAULT_MAX_SIZE == 512\n"
        "heavy = {'keras', 'tensorflow', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_public_names():
    for name in indexing.__all__:
        assert getattr(indexing, name) is not None, name
    assert (
        indexing.IndexMismatchError
        is __import__(
            "keras_rmac.search", fromlist=["IndexMismatchError"]
        ).IndexMismatchError
    )
    from keras_rmac.models.loading import load_rmac_model

    assert indexing.load_rmac_model is load_rmac_model
