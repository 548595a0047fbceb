"""Backbone CNNs: name -> (keras.applications builder, preprocessing, cut).

A backbone here is a fully convolutional `keras.Model` mapping RGB images of
any size, already preprocessed, to a feature map `(B, H, W, C)`. It can be
built from a name with `weights="imagenet"` (downloaded by Keras), `None`
(random), or a path to a local weights file (`.weights.h5` / `.h5` /
`.keras`, with or without the classification top); or be any `keras.Model`,
which is cut at its last 4-D output and given a variable input size.
"""

import dataclasses
import json
import os
import warnings

import keras
import numpy as np

from keras_rmac.fileio import file_sha256

# Pixel preprocessing conventions, applied to RGB values in [0, 255].
PREPROCESSING_MODES = ("tf", "torch", "caffe", "lite", "none")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone.

    Attributes:
        builder: `keras.applications` constructor name, or None for
            architectures that only come from a weights file.
        preprocessing: preprocessing mode of the ImageNet weights.
        feature_layer: layer to cut at, or None for the builder's
            `include_top=False` output.
        stride: total stride of the feature map (for documentation and
            sizing decisions).
    """

    builder: str | None
    preprocessing: str
    feature_layer: str | None = None
    stride: int = 32


# A new name goes in `keras_rmac.defaults.BACKBONE_NAMES` too (`--backbone`
# choices, read without Keras); tests/test_defaults.py keeps them equal.
BACKBONES = {
    "mobilenet_v1": BackboneSpec("MobileNet", "tf"),
    "mobilenet_v2": BackboneSpec("MobileNetV2", "tf"),
    "efficientnet_lite0": BackboneSpec(None, "lite"),
    "efficientnet_b0": BackboneSpec("EfficientNetB0", "none"),
    "resnet50": BackboneSpec("ResNet50", "caffe"),
    "resnet101": BackboneSpec("ResNet101", "caffe"),
    "resnet152": BackboneSpec("ResNet152", "caffe"),
    # VGG is cut after the last conv + ReLU, dropping the final max-pool,
    # as the R-MAC papers do.
    "vgg16": BackboneSpec("VGG16", "caffe", "block5_conv3", 16),
    "vgg19": BackboneSpec("VGG19", "caffe", "block5_conv4", 16),
}


@dataclasses.dataclass(frozen=True)
class KnownWeights:
    """Conventions of a known weights file (identified by its sha256).

    Attributes:
        backbone: the architecture the file holds.
        preprocessing: pixel preprocessing the weights were trained with.
        batchnorm_epsilon: BatchNormalization epsilon of the source
            framework, or None to keep Keras's.
        padding: how the source framework pads strided convolutions
            (`"torch"`, `"same"`, or None to keep the Keras graph's); see
            `set_strided_padding`.
    """

    backbone: str
    preprocessing: str
    batchnorm_epsilon: float | None = None
    padding: str | None = None


# Real ImageNet weight files converted to Keras 3 (see the data README).
KNOWN_WEIGHTS = {
    # TF-slim MobileNetV1: TF "SAME" padding.
    "4f1d1877afe9e2fb3334ace425ae95151cf407d1a47f82c9f214dee516b1a006": (
        KnownWeights("mobilenet_v1", "tf", padding="same")
    ),
    # torchvision's MobileNetV2: torch preprocessing, BN epsilon 1e-5 and
    # torch's symmetric padding.
    "e7fe1ad6167aee07f64cbb2631928c0f5690478bd64bbd236af8d0e337b091ed": (
        KnownWeights("mobilenet_v2", "torch", 1e-5, padding="torch")
    ),
    "06a3d41e17245858b18039cbe52fef880b3cfd3a2cc13571c4261d1900ef921f": (
        KnownWeights("efficientnet_lite0", "lite")
    ),
}


def known_weights(path):
    """The `KnownWeights` entry of a weights file, or None."""
    return KNOWN_WEIGHTS.get(file_sha256(path))


def _feature_output(model, feature_layer=None):
    """Cuts `model` at `feature_layer` or at its last 4-D output."""
    if feature_layer is not None:
        return keras.Model(model.input, model.get_layer(feature_layer).output)
    if len(model.output.shape) == 4:
        return model
    for layer in reversed(model.layers):
        out = layer.output
        if not isinstance(out, (list, tuple)) and len(out.shape) == 4:
            return keras.Model(model.input, out)
    raise ValueError(
        f"Backbone {model.name!r} has no layer with a 4-D output (B, H, W, "
        "C); R-MAC needs a convolutional feature map."
    )


def with_variable_input(model):
    """Rebuilds a functional `model` with input shape `(None, None, C)`.

    Weights are copied, so the result computes the same function on images
    of the original size and accepts any other size.
    """
    shape = model.input.shape
    if shape[1] is None and shape[2] is None:
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            cfg = layer["config"]
            key = "batch_shape" if "batch_shape" in cfg else "batch_input_shape"
            cfg[key] = [None, None, None, cfg[key][-1]]
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def copy_weights_by_name(source, target):
    """Copies the weights of every layer of `target` found by name in
    `source`; returns the number of layers copied."""
    by_name = {layer.name: layer for layer in source.layers}
    copied = 0
    for layer in target.layers:
        other = by_name.get(layer.name)
        if other is None or not layer.weights:
            continue
        layer.set_weights(other.get_weights())
        copied += 1
    return copied


PADDINGS = ("torch", "same")


_CONVS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)


def _strided(layer):
    return isinstance(layer, _CONVS) and any(s > 1 for s in layer.strides)


def _torch_pad(layer):
    """PyTorch's `padding=dilation * (kernel - 1) // 2`, per spatial axis."""
    return tuple(
        (d * (k - 1) // 2, d * (k - 1) // 2)
        for k, d in zip(layer.kernel_size, layer.dilation_rate)
    )


def set_strided_padding(model, padding):
    """Rebuilds `model` so its strided convolutions pad like `padding`.

    Keras applications pad a stride-2 convolution on even sizes with one
    row/column at the bottom/right only (TF "SAME"), and with a variable
    input size they do so on odd sizes too (a `ZeroPadding2D((0, 1))` in
    front of a "valid" convolution). Weights converted from another
    framework compute that framework's function only with its padding:

    - `"torch"`: `(kernel - 1) // 2` zeros on every side, whatever the size
      (PyTorch `Conv2d(padding=k // 2)`, e.g. torchvision's MobileNetV2).
      On even sizes this shifts every stride-2 sampling grid by one pixel
      against the Keras graph.
    - `"same"`: TF "SAME" at every size (TF-slim graphs): Keras's fixed
      `(0, 1)` pads are wrong on odd sizes.

    Stride-1 convolutions and all weights are unchanged; the result is a
    functional model of standard layers (it saves and loads as usual).

    Args:
        model: functional `keras.Model`.
        padding: `"torch"` or `"same"`.

    Returns:
        A new `keras.Model` with the same weights.
    """
    if padding not in PADDINGS:
        raise ValueError(
            f"Unknown padding={padding!r}; choose one of {PADDINGS}."
        )
    # ZeroPadding2D layers feeding a strided "valid" convolution: those are
    # Keras's stand-ins for "SAME" and get re-padded.
    feeds = {}
    for layer in model.layers:
        if _strided(layer) and layer.padding == "valid":
            producer = layer._inbound_nodes[0].input_tensors[0]
            producer = producer._keras_history.operation
            if isinstance(producer, keras.layers.ZeroPadding2D):
                feeds[producer.name] = layer
    fed = {conv.name for conv in feeds.values()}
    restyled = {}

    def clone(layer):
        config = layer.get_config()
        if layer.name in feeds:
            conv = feeds[layer.name]
            if padding == "torch":
                config["padding"] = _torch_pad(conv)
            else:
                # An identity pad; the convolution pads "SAME" itself.
                config["padding"] = ((0, 0), (0, 0))
        elif _strided(layer):
            if padding == "same" and layer.name in fed:
                config["padding"] = "same"
            elif padding == "torch" and layer.padding == "same":
                config["padding"] = "valid"
                restyled[layer.name] = _torch_pad(layer)
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if layer.name in restyled:
            pad = keras.layers.ZeroPadding2D(
                restyled[layer.name], name=f"{layer.name}_torch_pad"
            )
            args = (pad(args[0]),) + args[1:]
        return layer(*args, **kwargs)

    rebuilt = keras.models.clone_model(
        model, clone_function=clone, call_function=call
    )
    rebuilt.set_weights(model.get_weights())
    for old, new in zip(model.layers, rebuilt.layers):
        if isinstance(old, keras.layers.BatchNormalization):
            new.epsilon = old.epsilon
    return rebuilt


# Layer arguments that change a model's arithmetic (not its weights).
_ARITHMETIC = (
    "padding",
    "strides",
    "dilation_rate",
    "kernel_size",
    "pool_size",
    "epsilon",
    "max_value",
    "negative_slope",
    "threshold",
    "activation",
    "data_format",
)


def graph_signature(model):
    """JSON of each layer's class and arithmetic arguments, in order.

    Two models with equal weights compute the same function only if their
    signatures match too (padding, strides, BN epsilon, ...); fingerprints
    and feature caches hash it next to the weights.
    """
    layers = []
    for layer in model.layers:
        config = layer.get_config()
        arithmetic = {k: config[k] for k in _ARITHMETIC if k in config}
        layers.append([type(layer).__name__, arithmetic])
    return json.dumps(layers, sort_keys=True, default=str)


def update_with_weights(digest, weights):
    """Feeds the shape and the bytes of each weight to a hash, in order.

    With `graph_signature`, what a model fingerprint is made of: two
    models with the same weights and signature compute the same function.

    Args:
        digest: a `hashlib` hash object, updated in place.
        weights: sequence of Keras variables or arrays.

    Returns:
        `digest`.

    Example:

    >>> import hashlib
    >>> a = update_with_weights(hashlib.sha256(), [np.zeros((2, 3))])
    >>> b = update_with_weights(hashlib.sha256(), [np.zeros((3, 2))])
    >>> a.hexdigest() == b.hexdigest()
    False
    """
    for weight in weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest


def _application(spec, weights, include_top):
    builder = getattr(keras.applications, spec.builder)
    if include_top:
        return builder(include_top=True, weights=weights)
    with warnings.catch_warnings():
        # Any input size is the point of a retrieval backbone: Keras's
        # note that the 224x224 ImageNet weights are loaded anyway would
        # print on every run with weights="imagenet".
        warnings.filterwarnings(
            "ignore", message="`input_shape` is undefined or non-square"
        )
        return builder(
            include_top=False, weights=weights, input_shape=(None, None, 3)
        )


def _load_file(name, spec, path):
    """Backbone `name` with the weights of a local file."""
    if path.endswith(".keras"):
        source = keras.models.load_model(path, compile=False)
        if spec.builder is None:
            cut = _feature_output(source, spec.feature_layer)
            return with_variable_input(cut)
        target = _application(spec, None, include_top=False)
        copied = copy_weights_by_name(source, target)
    else:
        if spec.builder is None:
            raise ValueError(
                f"Backbone {name!r} has no keras.applications builder; give "
                "its weights as a full `.keras` model file."
            )
        target = _application(spec, None, include_top=False)
        try:
            target.load_weights(path)
            return _feature_output(target, spec.feature_layer)
        except ValueError:
            # A file with the classification top: load it into the full
            # 224x224 model, then copy the convolutional layers by name.
            source = _application(spec, None, include_top=True)
            source.load_weights(path)
            copied = copy_weights_by_name(source, target)
    if not copied:
        raise ValueError(
            f"No layer of {path} matched backbone {name!r} by name: is "
            "this the right architecture?"
        )
    return _feature_output(target, spec.feature_layer)


def build_backbone(backbone="mobilenet_v2", weights="imagenet"):
    """Builds a variable-size feature extractor and its preprocessing.

    Args:
        backbone: str or `keras.Model`. A name from `BACKBONES`, or any
            model (cut at its last 4-D output, input made variable-size).
        weights: `"imagenet"`, `None`, or a path to a local weights file.
            Ignored (must be None or "imagenet") for a model instance.

    Returns:
        `(model, preprocessing, batchnorm_epsilon)`: the backbone, the
        preprocessing mode its weights expect, and the BatchNormalization
        epsilon it was set to (None when left as built).
    """
    if isinstance(backbone, keras.Model):
        if weights not in (None, "imagenet"):
            backbone.load_weights(weights)
        return with_variable_input(_feature_output(backbone)), None, None
    if backbone not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {backbone!r}; choose one of "
            f"{sorted(BACKBONES)} or pass a keras.Model."
        )
    spec = BACKBONES[backbone]
    preprocessing, epsilon, padding = spec.preprocessing, None, None
    if weights in (None, "imagenet"):
        if spec.builder is None:
            raise ValueError(
                f"Backbone {backbone!r} has no downloadable ImageNet "
                "weights in keras.applications; pass weights=<path to its "
                ".keras file>."
            )
        model = _feature_output(
            _application(spec, weights, include_top=False),
            spec.feature_layer,
        )
    else:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Weights file not found: {path}. Pass an existing file, "
                "'imagenet' (downloads) or None (random init)."
            )
        known = known_weights(path)
        if known is not None:
            if known.backbone != backbone:
                raise ValueError(
                    f"{path} holds {known.backbone!r} weights, not "
                    f"{backbone!r}: pass backbone={known.backbone!r}."
                )
            preprocessing, epsilon, padding = (
                known.preprocessing,
                known.batchnorm_epsilon,
                known.padding,
            )
        model = _load_file(backbone, spec, path)
    if epsilon is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.epsilon = epsilon
    if padding is not None:
        model = set_strided_padding(model, padding)
    return model, preprocessing, epsilon
