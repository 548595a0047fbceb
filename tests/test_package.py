"""`import keras_rmac`: what it registers, and how light the CLI stays."""

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SAVE_AND_LOAD = """
import sys
import numpy as np
from keras_rmac.layers import ShiftPCA
import keras
layer = ShiftPCA(units=2)
layer.build((None, 3))
model = keras.Sequential([keras.Input((3,)), layer])
model.save(sys.argv[1])
"""

_LOAD_ONLY = """
import sys
import keras_rmac
import keras
model = keras.saving.load_model(sys.argv[1])
print(type(model.layers[0]).__name__)
"""


def _python(code, *args):
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_import_keras_rmac_is_enough_to_load_its_keras_files(tmp_path):
    path = str(tmp_path / "m.keras")
    saved = _python(_SAVE_AND_LOAD, path)
    assert saved.returncode == 0, saved.stderr
    loaded = _python(_LOAD_ONLY, path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "ShiftPCA"


def test_public_names_resolve():
    import keras_rmac

    for name in keras_rmac.__all__:
        assert getattr(keras_rmac, name) is not None, name
