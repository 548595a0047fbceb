import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rmac.backbones import copy_weights_by_name
from keras_rmac.data.image_io import resize_longest_side
from keras_rmac.models import RMACModel
from tests.layers.grid_oracle import oracle_regions


def tiny_backbone(channels=6, seed=0):
    """A small fully convolutional net (stride 4) with fixed weights."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(
        inputs
    )
    x = keras.layers.Conv2D(
        channels, 3, strides=2, padding="same", activation="relu"
    )(x)
    return keras.Model(inputs, x, name="tiny")


def tiny_model(**kwargs):
    return RMACModel(
        tiny_backbone(), weights=None, preprocessing="tf", **kwargs
    )


def numpy_descriptor(model, images):
    """Independent R-MAC head in NumPy on the model's backbone features."""
    feats = model.backbone(model.preprocess(images)).numpy().astype(np.float64)
    kernel = model.shift_pca.kernel.numpy().astype(np.float64)
    bias = model.shift_pca.bias.numpy().astype(np.float64)
    out = []
    for f in feats:
        h, w, _ = f.shape
        regions = np.stack(
            [
                f[y : y + rh, x : x + rw].reshape(-1, f.shape[-1]).max(0)
                for x, y, rw, rh in oracle_regions(h, w)
            ]
        )
        regions /= np.maximum(
            np.linalg.norm(regions, axis=1, keepdims=True), 1e-6
        )
        regions = regions @ kernel + bias
        regions /= np.maximum(
            np.linalg.norm(regions, axis=1, keepdims=True), 1e-6
        )
        s = regions.sum(0)
        out.append(s / np.linalg.norm(s))
    return np.stack(out)


def random_images(n, h, w, seed=0):
    return (
        np.random.default_rng(seed)
        .uniform(0, 255, (n, h, w, 3))
        .astype("float32")
    )


def test_call_matches_numpy_rmac_pipeline_before_and_after_pca():
    model = tiny_model()
    images = random_images(3, 37, 53)
    np.testing.assert_allclose(
        model(images).numpy(), numpy_descriptor(model, images), atol=1e-5
    )
    model.adapt_pca(random_images(20, 40, 40, seed=1), verbose=0)
    np.testing.assert_allclose(
        model(images).numpy(), numpy_descriptor(model, images), atol=1e-5
    )


def test_adapt_pca_learns_whitening_of_region_vectors():
    model = tiny_model(pca_dim=4)
    train = random_images(12, 32, 48, seed=2)
    used = model.adapt_pca(train, verbose=0)
    vectors = (
        model.region_vectors(train).numpy().reshape(-1, 6).astype(np.float64)
    )
    assert used == len(vectors)
    y = vectors @ model.shift_pca.kernel.numpy() + model.shift_pca.bias.numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(4), atol=2e-3)
    assert model(train[:2]).shape == (2, 4)


def test_extract_resizes_longest_side_and_batches_mixed_sizes():
    model = tiny_model()
    images = [random_images(1, 30, 50, seed=i)[0] for i in range(3)]
    images.append(random_images(1, 64, 20, seed=9)[0])
    got = model.extract(images, max_size=40, batch_size=2, verbose=0)
    want = np.concatenate(
        [model(resize_longest_side(im, 40)[None]).numpy() for im in images]
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_extract_multiresolution_is_normalised_sum_of_scales():
    model = tiny_model()
    images = random_images(2, 40, 60, seed=3)
    single = [
        model.extract(images, max_size=round(64 * s), verbose=0)
        for s in (1, 0.5)
    ]
    want = single[0] + single[1]
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = model.extract(images, max_size=64, scales=(1, 0.5), verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_extract_accepts_paths_arrays_and_datasets(tmp_path):
    from PIL import Image

    model = tiny_model()
    images = random_images(3, 24, 32, seed=4).round().astype("uint8")
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    from_array = model.extract(images.astype("float32"), verbose=0)
    from_paths = model.extract(paths, verbose=0)
    from_ds = model.extract(
        tf.data.Dataset.from_tensor_slices(images.astype("float32")), verbose=0
    )
    from_batches = model.extract(
        tf.data.Dataset.from_tensor_slices(images.astype("float32")).batch(2),
        verbose=0,
    )
    for other in (from_paths, from_ds, from_batches):
        np.testing.assert_allclose(other, from_array, atol=1e-6)
    single = model.extract(paths[0], verbose=0)
    assert single.shape == (1, 6)


def test_extract_decodes_each_file_once_for_all_scales(tmp_path, monkeypatch):
    from PIL import Image

    from keras_rmac.data import image_io

    model = tiny_model()
    rng = np.random.default_rng(11)
    paths = []
    for i, (h, w) in enumerate([(24, 32), (40, 18), (30, 30)]):
        paths.append(str(tmp_path / f"{i}.png"))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(paths[-1])
    scales = (1.0, 0.707, 0.5)
    # Independent oracle: each scale on its own, summed and normalised.
    single = [
        model.extract(paths, max_size=round(40 * s), verbose=0) for s in scales
    ]
    want = np.sum(single, axis=0, dtype=np.float64)
    want /= np.linalg.norm(want, axis=1, keepdims=True)

    decoded = []
    load_image = image_io.load_image

    def counting_load_image(path, *args, **kwargs):
        decoded.append(str(path))
        return load_image(path, *args, **kwargs)

    monkeypatch.setattr(image_io, "load_image", counting_load_image)
    got = model.extract(paths, max_size=40, scales=scales, batch_size=2)
    assert sorted(decoded) == sorted(paths)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_dimension_and_deprecated_descriptor_dim():
    assert tiny_model().dimension == 6
    model = tiny_model(pca_dim=4)
    assert model.dimension == 4
    assert model.compute_output_shape((2, 9, 9, 3)) == (2, 4)
    with pytest.warns(DeprecationWarning, match="dimension"):
        assert model.descriptor_dim == 4


def test_extract_reports_bad_file_by_name(tmp_path):
    from keras_rmac.data.image_io import ImageError

    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="broken.jpg"):
        tiny_model().extract([str(bad)], verbose=0)


def test_extract_rejects_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="scales"):
        model.extract(random_images(1, 8, 8), scales=())
    with pytest.raises(ValueError, match="shape"):
        model.extract(np.zeros((2, 8, 8, 4), "float32"))


@pytest.mark.parametrize("pooling", ["mac", "spoc", "gem"])
def test_baseline_poolings_are_one_region_descriptors(pooling):
    model = tiny_model(pooling=pooling)
    images = random_images(2, 20, 28, seed=5)
    feats = model.backbone(model.preprocess(images)).numpy().astype(np.float64)
    if pooling == "mac":
        v = feats.max(axis=(1, 2))
    elif pooling == "spoc":
        v = feats.mean(axis=(1, 2))
    else:
        v = np.mean(np.maximum(feats, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(model(images).numpy(), v, atol=1e-5)


def test_unknown_pooling_and_backbone_rejected():
    with pytest.raises(ValueError, match="pooling"):
        tiny_model(pooling="max")
    with pytest.raises(ValueError, match="resnet9"):
        RMACModel("resnet9", weights=None)
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        RMACModel("mobilenet_v2", weights="nope.h5")


def test_saved_keras_model_gives_same_descriptors_in_fresh_process(tmp_path):
    model = tiny_model(pca_dim=5)
    model.adapt_pca(random_images(10, 32, 32, seed=6), verbose=0)
    images = random_images(2, 33, 47, seed=7)
    want = model.extract(images, max_size=40, scales=(1, 0.7), verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import keras_rmac  # registers the serializable classes
        model = keras.models.load_model({str(path)!r})
        images = np.load({str(tmp_path / "images.npy")!r})
        out = model.extract(images, max_size=40, scales=(1, 0.7), verbose=0)
        np.save({str(tmp_path / "out.npy")!r}, out)
        print(model.fingerprint())
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), want)
    assert result.stdout.strip().splitlines()[-1] == model.fingerprint()


def test_fingerprint_changes_with_weights():
    model = tiny_model()
    before = model.fingerprint()
    model.adapt_pca(random_images(4, 16, 16), verbose=0)
    assert model.fingerprint() != before


def test_fingerprint_covers_graph_arithmetic_not_just_weights(tmp_path):
    from keras_rmac.backbones import set_strided_padding

    model = tiny_model()
    # Same weights, other padding (different descriptors): other print.
    padded = RMACModel(
        set_strided_padding(model.backbone, "torch"),
        weights=None,
        preprocessing=model.preprocessing,
    )
    assert padded.backbone.count_params() == model.backbone.count_params()
    assert padded.fingerprint() != model.fingerprint()
    assert tiny_model(levels=2).fingerprint() != model.fingerprint()
    # ... and stable through a .keras round trip.
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    assert reloaded.fingerprint() == model.fingerprint()


# Real ImageNet weights: the variable-size backbone we build computes the
# same features as the reference 224x224 model loaded as the data README
# prescribes (full model with top, load_weights, cut at the last conv).
WEIGHT_FILES = [
    (
        "mobilenet_v1",
        "mobilenet_v1_1.0_224_imagenet.weights.h5",
        "MobileNet",
        "conv_pw_13_relu",
        1e-3,
        None,
    ),
    (
        "mobilenet_v2",
        "mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5",
        "MobileNetV2",
        "out_relu",
        1e-5,
        "torch",
    ),
    (
        "efficientnet_lite0",
        "efficientnet_lite0_imagenet.keras",
        None,
        "re_lu_32",
        None,
        "lite",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,filename,builder,layer,eps,mode", WEIGHT_FILES)
def test_local_weight_files_load_into_variable_size_backbone(
    weights_dir, coil_dir, name, filename, builder, layer, eps, mode
):
    from PIL import Image

    path = str(weights_dir / filename)
    if builder is None:
        reference = keras.models.load_model(path)
    else:
        reference = getattr(keras.applications, builder)(weights=None)
        reference.load_weights(path)
        if name == "mobilenet_v2":
            for lyr in reference.layers:
                if isinstance(lyr, keras.layers.BatchNormalization):
                    lyr.epsilon = 1e-5
    cut = keras.Model(reference.input, reference.get_layer(layer).output)
    size = 224
    if name == "mobilenet_v2":
        # torchvision pads every side; Keras's fixed-size graph does too
        # only where each strided layer sees an odd size: compare at 225.
        size = 225
        cut = keras.applications.MobileNetV2(
            weights=None, include_top=False, input_shape=(size, size, 3)
        )
        assert copy_weights_by_name(reference, cut) > 100
        for lyr in cut.layers:
            if isinstance(lyr, keras.layers.BatchNormalization):
                lyr.epsilon = 1e-5
    model = RMACModel(name, weights=path)
    if mode is not None:
        assert model.preprocessing == mode
    photo = Image.open(coil_dir / "obj7__0.png").convert("RGB")
    image = np.asarray(photo.resize((size, size)), "float32")[None]
    x = model.preprocess(image)
    np.testing.assert_allclose(
        model.backbone(x).numpy(), cut(x).numpy(), atol=1e-4
    )
    # And the variable-size backbone accepts other sizes.
    assert model.backbone(model.preprocess(image[:, :160, :96])).shape[1:3] == (
        5,
        3,
    )


def test_weights_exist_before_first_call_so_fingerprint_and_save_are_stable(
    tmp_path,
):
    model = tiny_model()
    before = model.fingerprint()
    model(random_images(1, 16, 16))
    assert model.fingerprint() == before
    # Adapted but never called: the PCA weights are saved.
    fresh = tiny_model()
    fresh.adapt_pca(random_images(6, 24, 24, seed=8), verbose=0)
    fresh.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(
        reloaded.shift_pca.kernel.numpy(), fresh.shift_pca.kernel.numpy()
    )
    assert reloaded.fingerprint() == fresh.fingerprint()
