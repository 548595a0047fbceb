"""export_saved_model on a tiny model: signatures, layout, bad input."""

import io
import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_rmac.export import existing_versions
from keras_rmac.export import export_saved_model
from keras_rmac.export import warmup
from tests.export.helpers import png_bytes
from tests.export.helpers import serving_proto_classes

# (scales, max_size) of the three exports shared by this module. They hit
# single scale at native size; multi-resolution with a fixed size (one
# image already at 48: no resize); and multi-resolution at native size,
# where 65 * 0.5 = 32.5 must round half to even like Python's round.
CONFIGS = {
    "native": ((1.0,), None),
    "fixed_multi": ((1.0, 0.707, 0.5), 48),
    "native_multi": ((1.0, 0.5), None),
}


@pytest.fixture(scope="module")
def exports(tiny_model, image_files, tmp_path_factory):
    base = tmp_path_factory.mktemp("exports") / "rmac"
    os.makedirs(base / "latest")  # Not an integer: not a version.
    out = {}
    out["native"] = export_saved_model(tiny_model, base)
    scales, max_size = CONFIGS["fixed_multi"]
    out["fixed_multi"] = export_saved_model(
        tiny_model,
        base,
        scales=scales,
        max_size=max_size,
        warmup_images=image_files[:2],
    )
    scales, max_size = CONFIGS["native_multi"]
    out["native_multi"] = export_saved_model(
        tiny_model, base, scales=scales, version=5, warmup_images=()
    )
    return base, out


@pytest.fixture(scope="module")
def loaded(exports):
    _, paths = exports
    return {name: tf.saved_model.load(path) for name, path in paths.items()}


def _serve(loaded_model, datas):
    fn = loaded_model.signatures["serving_default"]
    return fn(image_bytes=tf.constant(datas, tf.string))["descriptor"].numpy()


def _file_bytes(paths):
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def test_versions(exports, tiny_model):
    base, paths = exports
    # None takes the next free integer; an explicit version is used as is.
    assert [paths[k] for k in CONFIGS] == [
        os.path.join(str(base), v) for v in ("1", "2", "5")
    ]
    assert existing_versions(base) == [1, 2, 5]
    # Nothing else is left in the base path (no temporary folders).
    assert sorted(os.listdir(base)) == ["1", "2", "5", "latest"]
    # Version folders get the umask's permissions, like any new folder
    # (not a temporary folder's private ones): a server running as
    # another user can read them.
    probe = base.parent / "probe"
    os.makedirs(probe)
    mode = stat.S_IMODE(os.stat(probe).st_mode)
    for path in paths.values():
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))
        assert os.path.isdir(os.path.join(path, "variables"))
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    # An existing version is never overwritten.
    with pytest.raises(FileExistsError, match="next free: 6"):
        export_saved_model(tiny_model, base, version=2)
    assert sorted(os.listdir(base)) == ["1", "2", "5", "latest"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bytes_signature_matches_extract(name, tiny_model, image_files, loaded):
    scales, max_size = CONFIGS[name]
    expected = tiny_model.extract(image_files, max_size=max_size, scales=scales)
    got = _serve(loaded[name], _file_bytes(image_files))
    assert got.shape == expected.shape == (len(image_files), 16)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # One request per image gives the same rows as one batch.
    for i in (0, 2):
        single = _serve(loaded[name], _file_bytes(image_files[i : i + 1]))
        np.testing.assert_allclose(single[0], got[i], atol=1e-6)


def test_rounding_half_to_even_matters(tiny_model, image_files, loaded):
    # The 65-pixel image at scale 0.5: 32.5 -> 32 (Python's round). A
    # graph that rounded half up (33) would give another descriptor.
    path = [p for p in image_files if "65x30" in p]
    at_32 = tiny_model.extract(path, max_size=32)
    at_33 = tiny_model.extract(path, max_size=33)
    assert np.abs(at_32 - at_33).max() > 1e-3
    full = tiny_model.extract(path)
    expected = full + at_32
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = _serve(loaded["native_multi"], _file_bytes(path))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["native", "fixed_multi"])
def test_images_signature_matches_extract(name, tiny_model, loaded):
    scales, max_size = CONFIGS[name]
    rng = np.random.default_rng(3)
    for shape in [(3, 36, 52, 3), (2, 48, 20, 3)]:
        images = rng.uniform(0, 255, shape).astype(np.float32)
        expected = tiny_model.extract(images, max_size=max_size, scales=scales)
        fn = loaded[name].signatures["serving_images"]
        got = fn(images=tf.constant(images))["descriptor"].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_signature_specs(loaded):
    fn = loaded["native"].signatures["serving_default"]
    args, kwargs = fn.structured_input_signature
    assert args == ()
    assert kwargs == {
        "image_bytes": tf.TensorSpec([None], tf.string, name="image_bytes")
    }
    assert fn.structured_outputs == {
        "descriptor": tf.TensorSpec([None, 16], tf.float32, name="descriptor")
    }
    fn = loaded["native"].signatures["serving_images"]
    assert list(fn.structured_input_signature[1]) == ["images"]
    spec = fn.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, None, None, 3]
    assert spec.dtype == tf.float32


def test_empty_batch(loaded):
    got = _serve(loaded["native"], [])
    assert got.shape == (0, 16)


def test_bad_images_reject_the_whole_batch(loaded, image_files):
    good = _file_bytes(image_files[:2])
    jpeg = _file_bytes([p for p in image_files if p.endswith(".jpg")])[0]
    bad_inputs = {
        "empty": b"",
        "text": b"definitely not an image",
        "truncated": jpeg[: len(jpeg) // 2],
        "bomb": png_bytes(60000, 60000, 8, 2, None),
        "tiny": png_bytes(4, 4, 8, 2, [bytes(12)] * 4),
    }
    model = loaded["fixed_multi"]
    for name, bad in bad_inputs.items():
        with pytest.raises(tf.errors.InvalidArgumentError):
            _serve(model, [bad])
        # One bad image fails the whole request, wherever it is.
        with pytest.raises(tf.errors.InvalidArgumentError):
            _serve(model, [good[0], bad, good[1]])
    # The process and the loaded model are still fine.
    assert _serve(model, good).shape == (2, 16)


def test_metadata(exports, tiny_model):
    _, paths = exports
    path = os.path.join(
        paths["fixed_multi"], "assets.extra", "keras_rmac_export.json"
    )
    with open(path) as f:
        meta = json.load(f)
    assert meta["fingerprint"] == tiny_model.fingerprint()
    assert meta["dimension"] == 16
    assert meta["descriptor_dim"] == 16  # The 0.2.0 key, still written.
    assert meta["max_size"] == 48
    assert meta["scales"] == [1.0, 0.707, 0.5]
    assert meta["scale_sizes"] == [48, 34, 24]
    assert meta["warmup_requests"] == 2
    # The published contract of serving_images: RGB 0..255.
    assert meta["value_range"] == [0.0, 255.0]
    inputs = meta["signatures"]["serving_images"]["inputs"]
    assert inputs == {"images": "float32 (B, H, W, 3), RGB 0-255"}


def test_value_range_fixed_at_export(tiny_model, image_files, tmp_path):
    # serving_images of an export with value_range=(0, 1) serves, for
    # floats in [0, 1], what extract(..., value_range=(0, 1)) computes;
    # encoded files are decoded to 0..255 as before.
    path = export_saved_model(
        tiny_model,
        tmp_path / "m",
        scales=(1.0, 0.5),
        max_size=40,
        warmup_images=(),
        value_range=(0, 1),
    )
    served = tf.saved_model.load(path)
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (2, 36, 52, 3), dtype=np.uint8)
    floats = tf.image.convert_image_dtype(pixels, tf.float32)
    got = served.signatures["serving_images"](images=floats)["descriptor"]
    kwargs = {"max_size": 40, "scales": (1.0, 0.5)}
    want = tiny_model.extract(floats.numpy(), value_range=(0, 1), **kwargs)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    # The same as the uint8 pixels through extract's default range.
    np.testing.assert_allclose(
        got.numpy(), tiny_model.extract(pixels, **kwargs), atol=1e-5
    )
    files = image_files[:3]
    np.testing.assert_allclose(
        _serve(served, _file_bytes(files)),
        tiny_model.extract(files, **kwargs),
        atol=1e-5,
    )
    with open(
        os.path.join(path, "assets.extra", "keras_rmac_export.json")
    ) as f:
        meta = json.load(f)
    assert meta["value_range"] == [0.0, 1.0]
    inputs = meta["signatures"]["serving_images"]["inputs"]
    assert inputs == {"images": "float32 (B, H, W, 3), RGB 0-1"}


def test_warmup_file_presence(exports):
    _, paths = exports

    def warmup(name):
        return os.path.join(
            paths[name], "assets.extra", "tf_serving_warmup_requests"
        )

    # Default: one generated PNG; explicit files: one request each;
    # an empty sequence: no file.
    assert sum(1 for _ in tf.data.TFRecordDataset(warmup("native"))) == 1
    assert sum(1 for _ in tf.data.TFRecordDataset(warmup("fixed_multi"))) == 2
    assert not os.path.exists(warmup("native_multi"))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"version": -1}, ValueError),
        ({"version": "2"}, TypeError),
        ({"version": True}, TypeError),
        ({"max_size": 0}, ValueError),
        ({"max_size": 12.5}, TypeError),
        ({"scales": ()}, ValueError),
        ({"scales": (1.0, -0.5)}, ValueError),
        ({"max_pixels": 0}, ValueError),
        ({"value_range": (1, 0)}, ValueError),
        ({"value_range": (0, 1, 2)}, ValueError),
        ({"value_range": 255}, ValueError),
    ],
)
def test_invalid_arguments(tiny_model, tmp_path, kwargs, error):
    # The message names the argument and the value received.
    [(name, value)] = kwargs.items()
    with pytest.raises(error, match=f"{name}.*{re.escape(repr(value))}"):
        export_saved_model(tiny_model, tmp_path / "m", **kwargs)
    assert not os.path.exists(tmp_path / "m" / "1")


def test_bad_warmup_image_fails_before_writing(tiny_model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="bad.jpg"):
        export_saved_model(tiny_model, tmp_path / "m", warmup_images=[bad])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        export_saved_model(
            tiny_model, tmp_path / "m", warmup_images=[tmp_path / "missing.png"]
        )
    assert existing_versions(tmp_path / "m") == []


def test_not_a_model(tmp_path):
    with pytest.raises(TypeError, match="keras.Model"):
        export_saved_model(lambda x: x, tmp_path / "m")


def test_default_warmup_image_size():
    # 4:3, longest side max_size (224 without one), an RGB gradient.
    for max_size, size in [(100, (100, 75)), (None, (224, 168)), (9, (9, 8))]:
        data = warmup.default_image(max_size)
        image = Image.open(io.BytesIO(data))
        assert image.size == size
        assert image.mode == "RGB"
        pixels = np.asarray(image)
        assert pixels[0, 0].tolist() == [0, 0, 0]
        assert pixels[-1, -1].tolist() == [255, 255, 255]


def _saved_model_cli():
    exe = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if os.path.exists(exe):
        return [exe]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def test_saved_model_cli_lists_signature(exports):
    _, paths = exports
    result = subprocess.run(
        _saved_model_cli() + ["show", "--dir", paths["native"], "--all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    start = out.index("signature_def['serving_default']:")
    block = out[start : out.index("Method name is", start)]
    assert "inputs['image_bytes'] tensor_info:" in block
    assert "dtype: DT_STRING" in block
    assert "shape: (-1)" in block
    assert "outputs['descriptor'] tensor_info:" in block
    assert "shape: (-1, 16)" in block
    assert "signature_def['serving_images']:" in out
    assert "Method name is: tensorflow/serving/predict" in out


def test_warmup_requests_parse_and_serve(exports, loaded, image_files):
    # The records the fixed_multi export wrote for image_files[:2], parsed
    # with the protobuf library, then run as TF Serving would run them.
    _, paths = exports
    path = os.path.join(
        paths["fixed_multi"], "assets.extra", "tf_serving_warmup_requests"
    )
    log_class = serving_proto_classes()["PredictionLog"]
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert len(records) == 2
    expected = _file_bytes(image_files[:2])
    for record, data in zip(records, expected):
        request = log_class.FromString(record).predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["image_bytes"]
        tensor = request.inputs["image_bytes"]
        assert tensor.dtype == tf.string.as_datatype_enum
        assert [d.size for d in tensor.tensor_shape.dim] == [1]
        assert tensor.string_val == [data]
        fn = loaded["fixed_multi"].signatures[request.model_spec.signature_name]
        out = fn(image_bytes=tf.make_ndarray(tensor))["descriptor"].numpy()
        np.testing.assert_allclose(
            out, _serve(loaded["fixed_multi"], [data]), atol=1e-6
        )
