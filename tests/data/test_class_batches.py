"""Class-balanced P x K batches: balance, determinism, short classes."""

import numpy as np
import pytest

from keras_rmac.data import ClassBatches
from keras_rmac.data import LabelledImages
from keras_rmac.data import class_batch_dataset
from keras_rmac.data import feature_class_batch_dataset
from keras_rmac.data import folder_per_class
from keras_rmac.data.class_batches import IGNORED
from tests.data.helpers import solid
from tests.data.helpers import write_image

# 5 classes: 0-2 with 4 images, 3 with 2 (short for K=3), 4 with 1 (never).
LABELS = np.array([0] * 4 + [1] * 4 + [2] * 4 + [3] * 2 + [4])


def test_batches_are_p_classes_of_k_images():
    sampler = ClassBatches(LABELS, 3, 3, seed=4)
    seen = set()
    for position in range(40):
        indices, labels = sampler.batch(position)
        assert indices.shape == labels.shape == (9,)
        blocks = labels.reshape(3, 3)
        classes = [int(b[0]) for b in blocks]
        assert len(set(classes)) == 3 and 4 not in classes
        seen.update(classes)
        for block, idx in zip(blocks, indices.reshape(3, 3)):
            c = block[0]
            # Every index belongs to its class; real slots are distinct.
            assert set(LABELS[idx]) == {c}
            real = idx[block == c]
            assert len(set(real)) == len(real)
            if c == 3:  # 2 images: both, then one ignored repeat
                assert sorted(real) == [12, 13]
                assert list(block) == [3, 3, IGNORED]
            else:
                assert IGNORED not in block
    assert seen == {0, 1, 2, 3}
    assert sampler.short_classes == 1


def test_deterministic_in_seed_epoch_and_position():
    a = ClassBatches(LABELS, 2, 2, seed=1)
    b = ClassBatches(LABELS, 2, 2, seed=1)
    for epoch, position in [(0, 0), (3, 5)]:
        b.epoch = epoch
        np.testing.assert_array_equal(
            a.batch(position, epoch=epoch)[0], b.batch(position)[0]
        )
    draws = {tuple(a.batch(p, epoch=0)[0]) for p in range(10)}
    assert len(draws) > 1
    other = ClassBatches(LABELS, 2, 2, seed=2)
    assert any(
        tuple(other.batch(p, epoch=0)[0]) not in draws for p in range(10)
    )


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="classes_per_batch=5"):
        ClassBatches(LABELS, 5, 2)  # only 4 classes have pairs
    with pytest.raises(ValueError, match="images_per_class"):
        ClassBatches(LABELS, 2, 1)


def test_feature_dataset_follows_the_sampler_and_resumes():
    features = np.arange(len(LABELS), dtype=np.float32).reshape(-1, 1, 1, 1)
    sampler = ClassBatches(LABELS, 2, 3, seed=0)
    sampler.epoch = 2
    batches = list(feature_class_batch_dataset(features, sampler, 4))
    assert len(batches) == 4
    for position, (block, labels) in enumerate(batches):
        indices, want = sampler.batch(position, epoch=2)
        np.testing.assert_array_equal(block.numpy().ravel(), indices)
        np.testing.assert_array_equal(labels.numpy(), want)
    resumed = list(feature_class_batch_dataset(features, sampler, 4, start=2))
    np.testing.assert_array_equal(resumed[0][0], batches[2][0])
    with pytest.raises(ValueError, match="feature rows"):
        feature_class_batch_dataset(features[:3], sampler, 4)


@pytest.fixture
def images(tmp_path):
    paths, labels = [], []
    for c in range(3):
        for i in range(3):
            paths.append(
                write_image(str(tmp_path / f"{c}_{i}.png"), solid(60 * c + i))
            )
            labels.append(c)
    return LabelledImages.from_labels(paths, labels)


def test_image_dataset_decodes_the_sampled_images(images, tmp_path):
    sampler = ClassBatches(images.labels, 2, 2, seed=3)
    batches = list(
        class_batch_dataset(images, sampler, 3, image_size=8, augment=False)
    )
    for position, (pixels, labels) in enumerate(batches):
        assert pixels.shape == (4, 8, 8, 3)
        indices, want = sampler.batch(position, epoch=0)
        np.testing.assert_array_equal(labels.numpy(), want)
        # solid(60 c + i): the pixel value names the image.
        values = [60 * (int(j) // 3) + int(j) % 3 for j in indices]
        np.testing.assert_allclose(
            pixels.numpy()[:, 0, 0, 0], values, atol=1e-3
        )


def test_image_dataset_crops_boxes_and_ignores_bad_files(images, tmp_path):
    # Image 0 becomes unreadable; image 3 is cropped to its right half.
    with open(images.paths[0], "wb") as f:
        f.write(b"not an image")
    half = np.zeros((12, 16, 3), np.uint8)
    half[:, 8:] = 200
    write_image(images.paths[3], half)
    boxes = np.full((9, 4), np.nan, np.float32)
    boxes[3] = [8, 0, 16, 12]
    boxed = LabelledImages.from_labels(images.paths, images.labels, boxes)
    sampler = ClassBatches(boxed.labels, 3, 3, seed=0)
    pixels, labels = next(
        iter(class_batch_dataset(boxed, sampler, 1, 4, augment=False))
    )
    indices, _ = sampler.batch(0, epoch=0)
    where = {int(j): k for k, j in enumerate(indices)}
    assert labels.numpy()[where[0]] == IGNORED
    np.testing.assert_allclose(pixels.numpy()[where[3]], 200.0, atol=1e-3)


def test_folder_lists_feed_the_sampler(folder):
    images = folder_per_class(folder)
    sampler = ClassBatches(images.labels, 3, 3)
    assert sampler.batch_size == 9 and sampler.short_classes == 0


def test_image_dataset_has_a_known_length(images):
    sampler = ClassBatches(images.labels, 2, 2)
    ds = class_batch_dataset(images, sampler, 5, 8, augment=False, start=1)
    assert len(ds) == 4 and len(list(ds)) == 4
