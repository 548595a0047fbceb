"""The triplet table and the random triplets it starts from."""

import keras
import numpy as np
import pytest

from keras_rmac.data import triplet_table as T


def test_random_triplets_are_valid():
    labels = np.array([0, 0, 0, 1, 1, 2])  # class 2 has a single image
    rows = T.random_triplets(labels, 200, seed=1)
    assert rows.shape == (200, 3)
    q, p, n = rows.T
    assert np.all(labels[q] == labels[p]) and np.all(q != p)
    assert np.all(labels[q] != labels[n])
    assert not np.any(q == 5)  # no positive exists for it
    assert 5 in n  # but it is a valid negative
    np.testing.assert_array_equal(rows, T.random_triplets(labels, 200, seed=1))
    with pytest.raises(ValueError, match="two classes"):
        T.random_triplets(np.array([0, 0, 0]), 5)


def test_triplet_table(tmp_path):
    table = T.TripletTable(np.arange(30).reshape(10, 3), seed=4)
    order0 = table.order(0)
    assert sorted(order0) == list(range(10))
    np.testing.assert_array_equal(order0, table.order(0))
    assert not np.array_equal(order0, table.order(1))
    table.set_epoch(1)
    row, epoch = table.lookup(0)
    assert epoch == 1
    np.testing.assert_array_equal(
        row, np.arange(30).reshape(10, 3)[table.order(1)[0]]
    )
    with pytest.raises(ValueError, match="10 rows"):
        table.set(np.zeros((4, 3)))
    table.set(np.ones((10, 3)), mined_epoch=1)
    assert table.mined_epoch == 1 and table.version == 1
    path = str(tmp_path / "t.npz")
    table.save(path)
    other = T.TripletTable(np.zeros((10, 3)), seed=4)
    other.load(path)
    np.testing.assert_array_equal(other.snapshot(), np.ones((10, 3)))
    assert other.mined_epoch == 1
    with pytest.raises(ValueError, match=r"\(T, 3\)"):
        T.TripletTable(np.zeros((3, 2)))


def test_table_callback_sets_the_epoch_and_save_leaves_no_temporary(tmp_path):
    table = T.TripletTable(np.arange(12).reshape(4, 3), seed=1)
    callback = table.callback()
    assert isinstance(callback, keras.callbacks.Callback)
    assert isinstance(callback, T.TripletTableCallback)
    callback.on_epoch_begin(3)
    assert table.epoch == 3
    path = tmp_path / "table.state"  # any extension: saved as it is named
    table.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.state"]
    other = T.TripletTable(np.zeros((4, 3)))
    other.load(path)
    np.testing.assert_array_equal(other.snapshot(), table.snapshot())
