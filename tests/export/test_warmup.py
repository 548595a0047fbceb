"""The hand-written PredictionLog encoder against the protobuf library."""

import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.export import saved_model
from tests.export.helpers import serving_proto_classes


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),  # The protobuf documentation's example.
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2**35, b"\x80\x80\x80\x80\x80\x01"),
    ],
)
def test_varint(value, encoded):
    assert saved_model._varint(value) == encoded


def _tensor(values):
    return tf.make_tensor_proto(np.array(values, dtype=object))


@pytest.mark.parametrize(
    "inputs",
    [
        {"image_bytes": [b"\x89PNG tiny"]},
        # Over 127 bytes: lengths take several varint bytes at every level.
        {"image_bytes": [bytes(range(256)) * 40, b""]},
        {"b_second": [b"x"], "a_first": [b"yy", b"zzz"]},
    ],
)
def test_prediction_log_matches_protobuf(inputs):
    classes = serving_proto_classes()
    tensors = {k: _tensor(v) for k, v in inputs.items()}
    encoded = saved_model._prediction_log(
        {k: t.SerializeToString() for k, t in tensors.items()},
        signature_name="serving_default",
    )
    # Built with the protobuf library from the .proto field numbers.
    expected = classes["PredictionLog"]()
    request = expected.predict_log.request
    request.model_spec.signature_name = "serving_default"
    for key, tensor in tensors.items():
        request.inputs[key].CopyFrom(tensor)
    assert encoded == expected.SerializeToString(deterministic=True)

    parsed = classes["PredictionLog"].FromString(encoded)
    assert parsed.HasField("predict_log")
    request = parsed.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.name == ""
    assert sorted(request.inputs) == sorted(inputs)
    for key, values in inputs.items():
        array = tf.make_ndarray(request.inputs[key])
        assert array.tolist() == values


def test_real_tensorflow_serving_api_parses_it():
    """Runs only where tensorflow-serving-api happens to be installed."""
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    encoded = saved_model._prediction_log(
        {"image_bytes": _tensor([b"abc"]).SerializeToString()}
    )
    log = apis.PredictionLog.FromString(encoded)
    assert log.WhichOneof("log_type") == "predict_log"
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["image_bytes"]).tolist() == [b"abc"]
