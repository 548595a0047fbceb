"""Backbone padding conventions against an independent forward pass.

The oracle walks the MobileNet layers in order and computes each one with
raw TensorFlow ops, padding strided convolutions the way the weights'
source framework does: PyTorch `padding=k // 2` on every side (tf.pad +
VALID), or TF-slim "SAME" (tf.nn's own rule). It shares no padding code
with `set_strided_padding`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.backbones import build_backbone
from keras_rmac.backbones import set_strided_padding

CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
SIZES = [(224, 224), (225, 225), (97, 130), (64, 63), (33, 40)]


def _conv(x, layer, kernel, padding):
    stride = layer.strides[0]
    if stride > 1 and padding == "torch":
        p = (kernel.shape[0] - 1) // 2
        x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        pad = "VALID"
    else:
        # Stride 1: odd kernels pad symmetrically in every convention.
        pad = "SAME"
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], pad)
    return tf.nn.conv2d(x, kernel, stride, pad)


def reference_forward(model, x, padding):
    """MobileNet v1/v2 forward from raw ops; residuals by shape (v2)."""
    x = tf.constant(x, tf.float64)
    block_in = None
    for layer in model.layers:
        weights = [tf.constant(w, tf.float64) for w in layer.get_weights()]
        if isinstance(layer, CONVS):
            if layer.name.endswith("_expand"):
                block_in = x
            elif layer.name == "expanded_conv_depthwise":
                block_in = None
            x = _conv(x, layer, weights[0], padding)
            if layer.use_bias:
                x = x + weights[1]
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = weights
            x = (x - mean) / tf.sqrt(var + layer.epsilon) * gamma + beta
            if layer.name.endswith("project_BN"):
                if block_in is not None and block_in.shape == x.shape:
                    x = x + block_in
            else:
                x = tf.clip_by_value(x, 0.0, 6.0)
    return x.numpy()


def randomised(model, seed=0):
    """Random weights with realistic BN statistics (positive variances)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )
        elif layer.weights:
            # Fan-in scaling keeps activations O(1) through 50 layers.
            kernel = layer.get_weights()[0]
            fan_in = np.prod(kernel.shape[:2])
            if not isinstance(layer, keras.layers.DepthwiseConv2D):
                fan_in *= kernel.shape[2]
            layer.set_weights(
                [rng.normal(0, 1.5 / np.sqrt(fan_in), kernel.shape)]
                + [rng.normal(0, 0.1, w.shape) for w in layer.get_weights()[1:]]
            )
    return model


@pytest.mark.parametrize(
    "builder,padding",
    [("MobileNetV2", "torch"), ("MobileNet", "same")],
)
def test_strided_padding_matches_raw_op_forward(builder, padding):
    # float64 throughout, so any difference is the padding, not rounding.
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy("float64")
    keras.config.set_floatx("float64")  # the Input layer's dtype
    try:
        stock = getattr(keras.applications, builder)(
            weights=None, include_top=False, input_shape=(None, None, 3)
        )
        model = set_strided_padding(randomised(stock), padding)
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)
    assert model.compute_dtype == "float64"
    rng = np.random.default_rng(1)
    for h, w in SIZES:
        x = rng.normal(0, 1, (1, h, w, 3))
        want = reference_forward(model, x, padding)
        got = model(x).numpy()
        assert got.shape == want.shape, (h, w)
        np.testing.assert_allclose(got, want, atol=1e-9)
    # Weights are untouched: the stock graph agrees where the conventions
    # agree (TF "SAME" on a size that stays even down to stride 32).
    if padding == "same":
        x = rng.normal(0, 1, (1, 64, 96, 3))
        np.testing.assert_allclose(
            model(x).numpy(), stock(x).numpy(), atol=1e-9
        )


def test_torch_padding_differs_from_keras_on_even_sizes():
    stock = randomised(
        keras.applications.MobileNetV2(
            weights=None, include_top=False, input_shape=(None, None, 3)
        )
    )
    model = set_strided_padding(stock, "torch")
    x = np.random.default_rng(2).normal(0, 1, (1, 64, 64, 3))
    # The oracle itself tells the conventions apart (the test can fail).
    assert np.abs(model(x).numpy() - stock(x).numpy()).max() > 1e-2


def test_set_strided_padding_rejects_unknown_convention():
    with pytest.raises(ValueError, match="padding='reflect'"):
        set_strided_padding(keras.Sequential(), "reflect")


@pytest.mark.slow
def test_torchvision_mobilenet_v2_file_pads_like_torch(weights_dir):
    path = str(
        weights_dir / "mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"
    )
    model, mode, eps = build_backbone("mobilenet_v2", path)
    assert (mode, eps) == ("torch", 1e-5)
    names = {layer.name for layer in model.layers}
    assert "Conv1_torch_pad" in names
    x = np.random.default_rng(3).normal(0, 1, (1, 97, 130, 3))
    np.testing.assert_allclose(
        model(x.astype("float32")).numpy(),
        reference_forward(model, x, "torch"),
        atol=2e-4,
    )


def test_update_with_weights_hashes_shape_then_bytes_in_order():
    import hashlib

    from keras_rmac.backbones import update_with_weights

    weights = [
        keras.Variable(np.arange(6, dtype="float32").reshape(2, 3)),
        np.ones(4, np.float32),
    ]
    oracle = hashlib.sha256()
    oracle.update(b"(2, 3)")
    oracle.update(np.arange(6, dtype="float32").tobytes())
    oracle.update(b"(4,)")
    oracle.update(np.ones(4, np.float32).tobytes())
    got = update_with_weights(hashlib.sha256(), weights)
    assert got.hexdigest() == oracle.hexdigest()
    swapped = update_with_weights(hashlib.sha256(), weights[::-1])
    assert swapped.hexdigest() != oracle.hexdigest()


def test_known_weights_are_found_by_file_contents(tmp_path):
    from keras_rmac import backbones

    path = tmp_path / "w.h5"
    path.write_bytes(b"not a known file")
    assert backbones.known_weights(path) is None
    digest = backbones.file_sha256(path)
    backbones.KNOWN_WEIGHTS[digest] = backbones.KnownWeights("vgg16", "caffe")
    try:
        assert backbones.known_weights(path).backbone == "vgg16"
    finally:
        del backbones.KNOWN_WEIGHTS[digest]


def test_imagenet_builder_note_about_input_shape_is_not_printed(monkeypatch):
    # With weights="imagenet" Keras warns on every build that the 224x224
    # weights are loaded for an undefined input shape (the point of a
    # retrieval backbone); other warnings still pass.
    from keras_rmac import backbones

    def fake_builder(**kwargs):
        import warnings

        warnings.warn(
            "`input_shape` is undefined or non-square, or `rows` is not in "
            "[96, 128, 160, 192, 224]. Weights for input shape (224, 224) "
            "will be loaded as the default.",
            stacklevel=2,
        )
        warnings.warn("another note", stacklevel=2)
        return kwargs

    monkeypatch.setattr(keras.applications, "MobileNetV2", fake_builder)
    spec = backbones.BACKBONES["mobilenet_v2"]
    with pytest.warns(UserWarning) as caught:
        got = backbones._application(spec, "imagenet", include_top=False)
    assert got["input_shape"] == (None, None, 3)
    assert [str(w.message) for w in caught] == ["another note"]
