"""The table of training triplets, and how the first ones are drawn.

A triplet is three image indices: a query, a positive (same class) and a
negative (another class). `TripletTable` holds the current triplets; the
`tf.data` pipeline (`keras_rmac.data.triplets`) looks rows up in it as it
produces them, and hard-negative mining (`keras_rmac.data.mining`) replaces
them during training. `random_triplets` draws the table before any mining.
"""

import os
import threading
from collections.abc import Sequence

import keras
import numpy as np

from keras_rmac import fileio

PathLike = str | os.PathLike

STREAMS = ("query", "positive", "negative")
"""The three streams of a triplet, in row order; also the input names of
`keras_rmac.models.TripletModel`."""


def _classes_with_pairs(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels)
    return np.flatnonzero(counts >= 2)


def check_trainable(labels: np.ndarray) -> None:
    """Raises ValueError unless triplets can be formed from `labels`."""
    labels = np.asarray(labels, np.int64)
    if len(np.unique(labels)) < 2 or not len(_classes_with_pairs(labels)):
        raise ValueError(
            "Triplets need at least two classes and one class with two or "
            f"more images; got {len(labels)} images in "
            f"{len(np.unique(labels))} classes."
        )


def random_triplets(
    labels: np.ndarray, num_triplets: int, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """Random triplets: query, random positive, random negative.

    Queries are drawn uniformly among images whose class has at least two
    images; the positive is another image of the same class and the
    negative any image of another class.

    Args:
        labels: int array `(N,)`. Class index per image.
        num_triplets: int. Rows to draw.
        seed: int or sequence of int. NumPy seed. Defaults to `0`.

    Returns:
        int64 array `(num_triplets, 3)` of image indices.
    """
    labels = np.asarray(labels, np.int64)
    check_trainable(labels)
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(np.isin(labels, _classes_with_pairs(labels)))
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    out = np.empty((num_triplets, 3), np.int64)
    for row in range(num_triplets):
        q = int(eligible[rng.integers(len(eligible))])
        same = members[labels[q]]
        others = same[same != q]
        p = int(others[rng.integers(len(others))])
        while True:
            n = int(rng.integers(len(labels)))
            if labels[n] != labels[q]:
                break
        out[row] = (q, p, n)
    return out


class TripletTable:
    """Thread-safe table of `(query, positive, negative)` image indices.

    The training dataset reads it, hard-negative mining replaces it. Rows
    are replaced, never mutated in place, so a reader holding a snapshot is
    never disturbed. The table also carries the current epoch (set by
    `callback()` at each epoch start, before Keras creates that epoch's
    iterator), which selects the permutation of the rows. The number of
    rows must stay constant (it is the epoch length).

    Args:
        triplets: int array `(T, 3)`. The initial triplets.
        seed: int. Seed of the per-epoch permutations and augmentation.
            Defaults to `0`.
    """

    def __init__(self, triplets, seed: int = 0):
        self.seed = int(seed)
        self._lock = threading.Lock()
        self._triplets = self._check(triplets)
        self._version = 0
        self._mined_epoch = -1
        self._epoch = 0
        self._order_key = None
        self._order = None

    @staticmethod
    def _check(triplets):
        triplets = np.asarray(triplets, np.int64)
        if triplets.ndim != 2 or triplets.shape[1] != 3 or not len(triplets):
            raise ValueError(
                "Triplets must be a non-empty int array (T, 3) of "
                f"(query, positive, negative) indices, got shape "
                f"{triplets.shape}."
            )
        triplets.setflags(write=False)
        return triplets

    def __len__(self) -> int:
        with self._lock:
            return len(self._triplets)

    def set(self, triplets, mined_epoch: int | None = None) -> None:
        """Replaces the triplets (e.g. after mining at `mined_epoch`).

        The new table must have as many rows as the old one (the epoch
        length).
        """
        triplets = self._check(triplets)
        with self._lock:
            if len(triplets) != len(self._triplets):
                raise ValueError(
                    f"The triplet table has {len(self._triplets)} rows (the "
                    f"epoch length); got {len(triplets)} new rows."
                )
            self._triplets = triplets
            self._version += 1
            if mined_epoch is not None:
                self._mined_epoch = int(mined_epoch)

    def snapshot(self) -> np.ndarray:
        """The current triplets (read-only array)."""
        with self._lock:
            return self._triplets

    @property
    def version(self) -> int:
        """Number of times the triplets were replaced."""
        with self._lock:
            return self._version

    @property
    def mined_epoch(self) -> int:
        """Epoch of the last mining (-1 if never mined)."""
        with self._lock:
            return self._mined_epoch

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch the next dataset iterator will produce."""
        with self._lock:
            self._epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of rows used in `epoch` (cached)."""
        epoch = int(epoch)
        with self._lock:
            size = len(self._triplets)
            if self._order_key != (epoch, size):
                rng = np.random.default_rng([self.seed, epoch])
                self._order = rng.permutation(size)
                self._order_key = (epoch, size)
            return self._order

    def lookup(self, position: int) -> tuple[np.ndarray, int]:
        """`(triplet, epoch)` at `position` of the current epoch's order.

        If the table is replaced mid-epoch (mining every N steps), later
        positions read the new table.
        """
        epoch = self.epoch
        order = self.order(epoch)
        triplets = self.snapshot()
        return triplets[order[int(position)] % len(triplets)], epoch

    def state(self) -> dict:
        """A dict of arrays to persist the table (see `load_state`)."""
        with self._lock:
            return {
                "triplets": np.asarray(self._triplets),
                "mined_epoch": np.int64(self._mined_epoch),
                "version": np.int64(self._version),
                "seed": np.int64(self.seed),
            }

    def load_state(self, state) -> None:
        """Restores the triplets saved by `state()`."""
        triplets = self._check(np.array(state["triplets"]))
        with self._lock:
            self._triplets = triplets
            self._mined_epoch = int(state["mined_epoch"])
            self._version = int(state["version"])

    def save(self, path: PathLike) -> None:
        """Writes `state()` to an `.npz` file atomically."""
        with fileio.atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.state())

    def load(self, path: PathLike) -> None:
        """Restores the table from a file written by `save`."""
        with np.load(os.fspath(path)) as data:
            self.load_state(dict(data))

    def callback(self) -> keras.callbacks.Callback:
        """A callback that sets the table's epoch at each epoch start."""
        return TripletTableCallback(self)


class TripletTableCallback(keras.callbacks.Callback):
    """Sets a `TripletTable`'s epoch at each epoch start (see `callback`).

    Args:
        table: `TripletTable`.
    """

    def __init__(self, table):
        super().__init__()
        self.table = table

    def on_epoch_begin(self, epoch, logs=None):
        self.table.set_epoch(epoch)
