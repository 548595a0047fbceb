"""The inference path of `RMACModel.extract` (keras_rmac.models.extraction).

Oracles: `numpy_descriptor` (an independent NumPy R-MAC head on the
backbone's features, image by image) for float32; float32 descriptors for
XLA and mixed precision; plain Python for batching and the prefetch
thread.
"""

import glob
import os
import threading

import numpy as np
import pytest
from PIL import Image

from keras_rmac.data.image_io import ImageError
from keras_rmac.data.image_io import load_image
from keras_rmac.models import RMACModel
from keras_rmac.models import extraction
from tests.models.test_rmac_model import numpy_descriptor
from tests.models.test_rmac_model import random_images
from tests.models.test_rmac_model import tiny_model

DATA = os.environ.get("KERAS_RMAC_DATA", "../shared/data")
MOBILENET_V2 = os.path.join(
    DATA, "weights", "mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"
)


def per_image_oracle(model, images):
    return np.concatenate([numpy_descriptor(model, im[None]) for im in images])


def cosines(a, b):
    return np.sum(a * b, axis=1) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    )


# ---------------------------------------------------------------------------
# float32: the same descriptors as image-by-image NumPy.


@pytest.mark.parametrize(
    "shape, batch_size",
    [((5, 37, 53), 2), ((3, 53, 37), 8), ((4, 8, 8), 4), ((1, 40, 40), 1)],
)
def test_array_batches_match_numpy_image_by_image(shape, batch_size):
    model = tiny_model()
    images = random_images(*shape)
    got = model.extract(images, batch_size=batch_size, verbose=0)
    assert got.dtype == np.float32 and got.shape == (shape[0], 6)
    np.testing.assert_allclose(got, per_image_oracle(model, images), atol=1e-6)


def test_uint8_array_and_list_of_mixed_shapes_match_numpy():
    model = tiny_model()
    rng = np.random.default_rng(3)
    # Tall, wide, square and minimal maps, interleaved so that batches hold
    # several shapes and the last chunk is short.
    shapes = [(37, 53), (53, 37), (37, 53), (8, 8), (64, 16), (53, 37), (9, 9)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    got = model.extract(images, batch_size=3, verbose=0)
    want = per_image_oracle(model, [im.astype("float32") for im in images])
    np.testing.assert_allclose(got, want, atol=1e-6)
    as_array = model.extract(np.stack(images[:3:2]), batch_size=2, verbose=0)
    np.testing.assert_allclose(as_array, want[:3:2], atol=1e-6)


def test_value_range_is_applied_to_array_batches():
    model = tiny_model()
    images = random_images(3, 24, 32)
    got = model.extract(images / 255.0, value_range=(0, 1), verbose=0)
    np.testing.assert_allclose(got, per_image_oracle(model, images), atol=1e-5)


def test_resized_array_batches_match_list_of_images():
    model = tiny_model()
    images = random_images(5, 30, 41)
    got = model.extract(images, max_size=50, scales=(1, 0.5), batch_size=2)
    want = model.extract(
        list(images), max_size=50, scales=(1, 0.5), batch_size=2
    )
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# Batching helpers.


def test_chunks_of_an_array_are_views_and_cover_it():
    images = random_images(5, 8, 8)
    parts = list(extraction.chunks(images, 2))
    assert [len(p) for p in parts] == [2, 2, 1]
    assert all(np.shares_memory(p, images) for p in parts)
    prepared = extraction.prepare(parts[0], [lambda im: None])
    ((indices, batch),) = prepared[0]
    assert indices == [0, 1] and np.shares_memory(batch, images)
    assert [len(p) for p in extraction.chunks(iter(range(7)), 3)] == [3, 3, 1]


def test_prepare_groups_a_list_by_resized_shape_at_each_scale():
    images = [np.zeros((10, 20, 3)), np.ones((20, 10, 3)), np.zeros((5, 10, 3))]
    prepared = extraction.prepare(images, [lambda im: 20, lambda im: None])
    at_20 = {b.shape: i for i, b in prepared[0]}
    assert at_20 == {(2, 10, 20, 3): [0, 2], (1, 20, 10, 3): [1]}
    own = {b.shape: i for i, b in prepared[1]}
    assert own == {(1, 10, 20, 3): [0], (1, 20, 10, 3): [1], (1, 5, 10, 3): [2]}
    assert all(b.dtype == np.float32 for _, b in prepared[0] + prepared[1])
    # uint8 pixels that are not resized stay uint8 (cast in the graph).
    images = [np.zeros((10, 20, 3), np.uint8), np.zeros((10, 20, 3))]
    prepared = extraction.prepare(images, [lambda im: None])[0]
    assert sorted((b.dtype.name, i) for i, b in prepared) == [
        ("float32", [1]),
        ("uint8", [0]),
    ]


def test_prefetched_keeps_order_and_raises_the_producers_error_in_place():
    def items():
        yield from range(5)
        raise ImageError("x.jpg", "corrupt")

    seen = []
    with pytest.raises(ImageError, match="x.jpg: corrupt"):
        for item in extraction.prefetched(items(), depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_prefetched_stops_its_thread_when_closed_early():
    before = threading.active_count()
    stream = extraction.prefetched(iter(range(1000)), depth=1)
    assert next(stream) == 0
    stream.close()
    assert threading.active_count() == before


def test_files_are_decoded_ahead_and_a_bad_one_is_named(tmp_path):
    model = tiny_model()
    images = random_images(5, 24, 32).astype(np.uint8)
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    got = model.extract(paths, batch_size=2, verbose=0)
    np.testing.assert_allclose(
        got, per_image_oracle(model, images.astype("float32")), atol=1e-6
    )
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    before = threading.active_count()
    with pytest.raises(ImageError, match="bad.jpg"):
        model.extract(paths + [str(bad)] + paths, batch_size=2, verbose=0)
    assert threading.active_count() == before


# ---------------------------------------------------------------------------
# Run options: XLA and mixed precision.


def test_xla_descriptors_equal_float32():
    model = tiny_model()
    images = [random_images(1, 37, 53)[0], random_images(1, 8, 8)[0]]
    want = model.extract(images, verbose=0)
    got = model.extract(images, jit_compile=True, verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert cosines(got, want).min() >= 0.999999


@pytest.mark.parametrize(
    "precision, min_cosine",
    [("mixed_float16", 0.999), ("mixed_bfloat16", 0.999)],
)
def test_mixed_precision_keeps_cosine_and_restores_policies(
    precision, min_cosine
):
    model = tiny_model()
    images = random_images(3, 29, 43)
    want = model.extract(images, verbose=0)
    got = model.extract(images, precision=precision, verbose=0)
    assert got.dtype == np.float32
    assert cosines(got, want).min() >= min_cosine
    assert not np.array_equal(got, want)  # It did run in lower precision.
    policies = {layer.dtype_policy.name for layer in model._flatten_layers()}
    assert policies == {"float32"}
    # The traced function reads the live weights: adapt_pca is seen.
    model.adapt_pca(random_images(30, 40, 40, seed=1), verbose=0)
    want = model.extract(images, verbose=0)
    got = model.extract(images, precision=precision, verbose=0)
    assert cosines(got, want).min() >= min_cosine


def test_bad_run_options_raise_naming_them():
    model = tiny_model()
    images = random_images(1, 16, 16)
    with pytest.raises(ValueError, match="precision='float64'"):
        model.extract(images, precision="float64")
    with pytest.raises(ValueError, match="jit_compile"):
        model.extract(images, jit_compile="yes")
    with pytest.raises(TypeError, match="jit"):
        model.extract(images, jit=True)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(MOBILENET_V2), reason="shared weights not found"
)
def test_mobilenet_v2_run_options_on_coil_photos():
    model = RMACModel("mobilenet_v2", weights=MOBILENET_V2)
    paths = sorted(glob.glob(os.path.join(DATA, "coil100", "obj7__*.png")))
    images = [load_image(p) for p in paths[:3]]
    # float32: the Keras model called eagerly, image by image, as before
    # the fast path (uint8 photos, 128x128, not resized: cast in the graph).
    eager = np.concatenate(
        [model(im[None].astype("float32")).numpy() for im in images]
    )
    got = model.extract(images, batch_size=2, verbose=0)
    np.testing.assert_allclose(got, eager, atol=1e-6)
    want = model.extract(images, max_size=160, verbose=0)
    xla = model.extract(images, max_size=160, jit_compile=True, verbose=0)
    np.testing.assert_allclose(xla, want, atol=1e-5)
    half = model.extract(
        images, max_size=160, precision="mixed_float16", verbose=0
    )
    assert cosines(half, want).min() >= 0.999
    # bfloat16 (8-bit mantissa) drifts further through MobileNetV2's 52
    # layers: 0.995 measured here, below the 0.999 of float16.
    bf16 = model.extract(
        images, max_size=160, precision="mixed_bfloat16", verbose=0
    )
    assert cosines(bf16, want).min() >= 0.99
