"""Served descriptors equal RMACModel.extract on real photos and weights.

The SavedModel is loaded and run in a fresh Python process that only has
TensorFlow, as TF Serving would run it. In this environment a plain
`import tensorflow` imports Keras as well (TensorFlow 2.20 imports
`keras.src.optimizers` eagerly when Keras is installed), so the child
process makes `keras`, `tf_keras` and `keras_rmac` unimportable before
importing TensorFlow, as if they were not installed, and checks at the end
that none of them was ever loaded.
"""

import argparse
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_rmac.cli import export as export_cli
from keras_rmac.export import export_saved_model
from keras_rmac.indexing.settings import DEFAULT_MAX_SIZE
from keras_rmac.models import RMACModel

WEIGHTS = "mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"
IMAGES = [
    "obj51__0.png",
    "obj58__15.png",
    "obj63__90.png",
    "obj77__90.png",
    "obj88__180.png",
    "obj100__345.png",
]

_CHILD = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    BLOCKED = ("keras", "tf_keras", "keras_rmac")
    refused = []

    class NotInstalled(ModuleNotFoundError, ValueError):
        # ValueError too: TensorFlow probes keras with importlib.util.find_spec
        # and treats ValueError as "not found".
        pass

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                refused.append(name)
                raise NotInstalled(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import numpy as np
    import tensorflow as tf

    args = json.loads(sys.argv[1])
    data = []
    for path in args["images"]:
        with open(path, "rb") as f:
            data.append(f.read())
    for name, export_dir in args["exports"].items():
        loaded = tf.saved_model.load(export_dir)
        fn = loaded.signatures["serving_default"]
        out = fn(image_bytes=tf.constant(data))["descriptor"].numpy()
        np.save(args["out"] + "/" + name + ".npy", out)

    loaded_names = sorted(
        m for m in sys.modules if m.split(".")[0] in BLOCKED
    )
    assert "keras" not in sys.modules, loaded_names
    assert "keras_rmac" not in sys.modules, loaded_names
    assert not loaded_names, loaded_names
    print(json.dumps({"refused": sorted(set(refused))}))
    """
)


@pytest.mark.slow
def test_served_descriptors_match_extract(coil_dir, weights_dir, tmp_path):
    paths = [str(coil_dir / name) for name in IMAGES]
    weights = str(weights_dir / WEIGHTS)
    base = tmp_path / "rmac"

    # Single scale, exported by the CLI from --backbone/--weights with the
    # model options' shared defaults (longest side DEFAULT_MAX_SIZE, as
    # `keras-rmac index` describes photos).
    parser = argparse.ArgumentParser()
    export_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["export", "--backbone", "mobilenet_v2", "--weights", weights]
        + ["--out", str(base), "--no-warmup"]
    )
    assert args.run(args) == 0

    # Multi-resolution at 224 (COIL photos upsampled), with the Python API.
    model = RMACModel("mobilenet_v2", weights=weights)
    multi = export_saved_model(
        model,
        base,
        scales=(1.0, 0.707),
        max_size=224,
        warmup_images=paths[:2],
    )
    expected = {
        "single": model.extract(paths, max_size=DEFAULT_MAX_SIZE),
        "multi": model.extract(paths, max_size=224, scales=(1.0, 0.707)),
    }
    child_args = {
        "images": paths,
        "exports": {"single": str(base / "1"), "multi": multi},
        "out": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(child_args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # TensorFlow did try to import Keras, and was refused.
    assert "keras" in report["refused"]
    for name, reference in expected.items():
        served = np.load(tmp_path / f"{name}.npy")
        assert served.shape == reference.shape == (len(paths), 1280)
        np.testing.assert_allclose(served, reference, atol=1e-4)
        # Not a trivially equal pair: the photos are told apart.
        assert np.abs(served[0] - served[1]).max() > 1e-2
    # Multi-resolution is not the single-scale descriptor.
    assert np.abs(expected["multi"] - expected["single"]).max() > 1e-2
