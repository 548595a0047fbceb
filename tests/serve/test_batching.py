"""Image queries waiting together go through the network in one call."""

import threading

import numpy as np
import pytest

from keras_rmac import indexing
from keras_rmac.serve import SearchEngine
from tests.cli import photos


@pytest.fixture(scope="module")
def reference(built_index):
    return indexing.PhotoIndex(built_index[1])


def _blocked(engine):
    """Holds the model thread until the returned event is set, so that
    the queries submitted meanwhile wait together."""
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(30)

    engine.submit(hold)
    assert started.wait(30)
    return release


def _expected(reference, image, **options):
    return [(h.path, h.score) for h in reference.search(image, **options)]


def _check(got, want):
    assert [h.path for h in got] == [path for path, _ in want]
    np.testing.assert_allclose(
        [h.score for h in got], [score for _, score in want], atol=1e-5
    )


@pytest.mark.parametrize(
    "max_batch, sizes", [(8, {3: 1, 2: 1}), (2, {2: 2, 1: 1})]
)
def test_waiting_image_queries_are_batched(
    built_index, reference, max_batch, sizes
):
    engine = SearchEngine(built_index[1], poll_interval=0, max_batch=max_batch)
    try:
        # Four photos of the index's shape and one taller (another resized
        # shape: extracted in its own forward pass of the same call).
        images = [photos.photo(i) for i in range(4)]
        images.append(photos.photo(40, width=40, height=64))
        options = [dict(k=5), dict(k=3, qe=2), dict(k=4), {}, dict(k=2)]
        release = _blocked(engine)
        futures = [
            engine.submit_search(image, **o)
            for image, o in zip(images[:3], options[:3])
        ]
        # A query of another kind ends the batch and runs in its turn.
        by_id = engine.submit(engine.search_id, 1, None, 3)
        futures += [
            engine.submit_search(image, **o)
            for image, o in zip(images[3:], options[3:])
        ]
        release.set()
        for future, image, o in zip(futures, images, options):
            version, hits = future.result(30)
            assert version == engine.version
            _check(hits, _expected(reference, image, **o))
        assert by_id.result(30)[1][0].id == 1
        assert dict(engine.batches) == sizes
    finally:
        engine.close()


def test_a_bad_image_fails_only_its_own_query(built_index, reference):
    engine = SearchEngine(built_index[1], poll_interval=0)
    try:
        release = _blocked(engine)
        good = engine.submit_search(photos.photo(5), k=3)
        bad = engine.submit_search(np.zeros((4, 4), np.uint8), k=3)
        cancelled = engine.submit_search(photos.photo(6), k=3)
        assert cancelled.cancel()
        last = engine.submit_search(photos.photo(7), k=3)
        release.set()
        _check(good.result(30)[1], _expected(reference, photos.photo(5), k=3))
        _check(last.result(30)[1], _expected(reference, photos.photo(7), k=3))
        with pytest.raises(Exception):
            bad.result(30)
        assert dict(engine.batches) == {3: 1}  # the cancelled one left out
    finally:
        engine.close()


def test_extract_batch_equals_extract(reference):
    images = [photos.photo(i) for i in range(3)]
    images.append(photos.photo(9, width=30, height=70))
    batch = reference.extract_batch(images)
    one = np.stack([reference.extract(image) for image in images])
    np.testing.assert_allclose(batch, one, atol=1e-5)
    assert reference.extract_batch([]).shape == (0, reference.dimension)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_batch_is_checked(built_index, bad):
    with pytest.raises((ValueError, TypeError), match="max_batch"):
        SearchEngine(built_index[1], poll_interval=0, max_batch=bad)
