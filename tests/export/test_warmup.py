"""The hand-written PredictionLog encoder against the protobuf library.

The oracle is `serving_proto_classes`: the TF Serving messages declared
from their .proto field numbers and parsed by the protobuf library, with
TensorFlow's own `TensorProto`. tensorflow-serving-api is not a dependency
(TensorFlow does not ship its protos), so there is no test against it; the
written warm-up file itself is read back with `tf.data.TFRecordDataset`
and parsed the same way in `test_saved_model.py`.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.export import warmup
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
    assert warmup.varint(value) == encoded


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
    encoded = warmup.prediction_log(
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
