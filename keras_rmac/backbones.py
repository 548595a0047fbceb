"""Backbone CNNs: name -> (keras.applications builder, preprocessing, cut).

A backbone here is a fully convolutional `keras.Model` mapping RGB images of
any size, already preprocessed, to a feature map `(B, H, W, C)`. It can be
built from a name with `weights="imagenet"` (downloaded by Keras), `None`
(random), or a path to a local weights file (`.weights.h5` / `.h5` /
`.keras`, with or without the classification top); or be any `keras.Model`,
which is cut at its last 4-D output and given a variable input size.
"""

import dataclasses
import hashlib
import logging
import os

import keras

logger = logging.getLogger(__name__)

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
    """Conventions of a known weights file (identified by its sha256)."""

    backbone: str
    preprocessing: str
    batchnorm_epsilon: float | None = None


# Real ImageNet weight files converted to Keras 3 (see the data README).
KNOWN_WEIGHTS = {
    "4f1d1877afe9e2fb3334ace425ae95151cf407d1a47f82c9f214dee516b1a006": (
        KnownWeights("mobilenet_v1", "tf")
    ),
    # torchvision's MobileNetV2: torch preprocessing and BN epsilon 1e-5.
    "e7fe1ad6167aee07f64cbb2631928c0f5690478bd64bbd236af8d0e337b091ed": (
        KnownWeights("mobilenet_v2", "torch", 1e-5)
    ),
    "06a3d41e17245858b18039cbe52fef880b3cfd3a2cc13571c4261d1900ef921f": (
        KnownWeights("efficientnet_lite0", "lite")
    ),
}


def file_sha256(path):
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _application(spec, weights, include_top):
    builder = getattr(keras.applications, spec.builder)
    if include_top:
        return builder(include_top=True, weights=weights)
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
    preprocessing, epsilon = spec.preprocessing, None
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
            preprocessing, epsilon = (
                known.preprocessing,
                (known.batchnorm_epsilon),
            )
        model = _load_file(backbone, spec, path)
    if epsilon is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.epsilon = epsilon
    return model, preprocessing, epsilon
