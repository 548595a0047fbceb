"""Hard-negative mining for triplet training.

Gordo et al. (2017), Sec. 3.3: triplets with random negatives are soon too
easy to teach anything, so every few iterations the current network
extracts the descriptors of a random pool of training images, and for each
query the most similar images of *other* classes (at most one per class, so
one confusable class does not fill every slot) become its negatives.
Positives come from the query's class, at random or, optionally, the most
similar one in the pool (Radenovic et al., 2018).

`mine_hard_negatives` is the pure step on descriptors, searched with a
`keras_rmac.search` index (`make_index`: exact, or ScaNN's "fast" mode for
large pools); it and the other steps on descriptors live in
`keras_rmac.data.negatives` and are re-exported here.
`HardNegativeMiner` is the Keras callback that runs it during `fit` and
writes the new triplets to the `TripletTable` the training dataset reads.

Reference:
    - [Gordo et al., 2017](https://arxiv.org/abs/1610.07940)
    - [Radenovic et al., 2018](https://arxiv.org/abs/1711.02512)
"""

import logging
import time
import warnings
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_rmac.data.negatives import OLD_INDEX_KINDS  # noqa: F401
from keras_rmac.data.negatives import POSITIVE_MODES
from keras_rmac.data.negatives import index_kind
from keras_rmac.data.negatives import mean_cosine
from keras_rmac.data.negatives import mine_hard_negatives
from keras_rmac.data.negatives import select_positives
from keras_rmac.data.triplets import LabelledImages
from keras_rmac.data.triplets import TripletTable
from keras_rmac.data.triplets import check_trainable
from keras_rmac.data.triplets import image_dataset
from keras_rmac.data.triplets import random_triplets
from keras_rmac.defaults import NEGATIVE_MODES

logger = logging.getLogger(__name__)

COLLAPSE_SIMILARITY = 0.5
"""Mean cosine between the pool's images above which a mining round warns
that training is collapsing the descriptors onto one point, if it rose by
`COLLAPSE_RISE` since the first round (descriptors without shift + PCA
start high). Fine-tuned R-MAC on cluttered COIL-100 at 512 px: 0.08-0.23
for sound runs, 0.71 and 0.88 for partly collapsed ones."""

COLLAPSE_RISE = 0.25


class HardNegativeMiner(keras.callbacks.Callback):
    """Re-mines the triplet table with the current weights during `fit`.

    At the start of every `every_n_epochs`-th epoch (and/or every
    `every_n_steps` optimizer steps), the descriptors of a random pool of
    `pool_size` training images are extracted with the model's current
    weights (inference mode, resized as in training, no augmentation).
    Queries are drawn from the pool; each gets a positive from its class
    (`positive`) and `negatives_per_query` hardest negatives (at most one
    per class, `mine_hard_negatives`), or with `negatives="semihard"` the
    hardest of those less similar to the query than its positive (a
    positive outside the pool is extracted too). The table keeps its size
    (rows beyond the mined ones are filled with random triplets), so
    epochs keep their length.

    Mining at epoch starts is exactly reproducible: the pool and queries are
    drawn from `(seed, epoch)`, and a run resumed from a checkpoint does not
    mine again an epoch whose table it restored (see
    `keras_rmac.training.ResumableBackupAndRestore`). With `every_n_steps`,
    batches already prefetched still hold older triplets.

    `history` keeps each round's statistics: the mean similarity of the
    queries to their positives and to their negatives, the share of rows
    whose negative is at least as similar to the query as its positive
    (`harder_than_positive`, over rows whose three images are in the
    pool: rows whose loss all-equal descriptors would not raise), and the
    mean similarity of different pool images to each other
    (`pool_similarity`); a round whose pool
    similarity passes `COLLAPSE_SIMILARITY` and the first round's by
    `COLLAPSE_RISE` logs a warning (the descriptors are collapsing onto one
    point).

    Args:
        images: `LabelledImages`: the training images (table indices).
        table: `TripletTable` read by the training dataset.
        image_size: int or None. As in `triplet_dataset`. Defaults to 224.
        resize: `"square"` or `"longest"`. Defaults to `"square"`.
        pool_size: int. Images whose descriptors are extracted per mining
            round. Defaults to `2000`.
        negatives_per_query: int. Defaults to `1`.
        positive: `"random"` or `"most_similar"`. Defaults to `"random"`.
        negatives: `"hardest"` or `"semihard"` (`NEGATIVE_MODES`).
            Semi-hard negatives keep out of the table the triplets whose
            negative is closer than the positive, whose loss drops when
            every descriptor moves onto one point (the collapse of hardest
            mining on data where other classes share a background, Schroff
            et al. 2015). Defaults to `"hardest"`.
        every_n_epochs: int or None. Defaults to `1`.
        every_n_steps: int or None. Mine every this many batches.
            Defaults to None.
        index: as in `mine_hard_negatives`. Defaults to `"exact"`.
        batch_size: int. Images per forward pass. Defaults to `32`.
        seed: int. Defaults to `0`.
        embedding: model or None: the descriptor model; None uses
            `self.model.embedding` (the `TripletModel`'s). Defaults to None.
        extract_fn: callable or None: `indices -> (descriptors, kept
            indices)`, replacing the image pipeline (e.g. descriptors from
            cached features). Defaults to None. `embed_fn` is its
            deprecated name.
        verbose: int. 1 logs each round at INFO. Defaults to `1`.

    The constructor keeps one keyword argument per setting (the callback's
    documented public API), hence more than the house limit of 8.
    """

    def __init__(  # noqa: PLR0913 - documented public constructor
        self,
        images: LabelledImages,
        table: TripletTable,
        image_size: int | None = 224,
        resize: str = "square",
        pool_size: int = 2000,
        negatives_per_query: int = 1,
        positive: str = "random",
        negatives: str = "hardest",
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        index: str | Callable = "exact",
        batch_size: int = 32,
        seed: int = 0,
        embedding=None,
        extract_fn: Callable | None = None,
        verbose: int = 1,
        **deprecated,
    ):
        super().__init__()
        extract_fn = _renamed(deprecated, "embed_fn", "extract_fn", extract_fn)
        check_trainable(images.labels)
        if positive not in POSITIVE_MODES:
            raise ValueError(
                f"Unknown positive={positive!r}; choose one of "
                f"{POSITIVE_MODES}."
            )
        if negatives not in NEGATIVE_MODES:
            raise ValueError(
                f"Unknown negatives={negatives!r}; choose one of "
                f"{NEGATIVE_MODES}."
            )
        if not every_n_epochs and not every_n_steps:
            raise ValueError(
                "Set `every_n_epochs` and/or `every_n_steps`; got neither."
            )
        if pool_size < 2:
            raise ValueError(f"`pool_size` must be >= 2, got {pool_size}.")
        self.images = images
        self.table = table
        self.image_size = image_size
        self.resize = resize
        self.pool_size = int(pool_size)
        self.negatives_per_query = int(negatives_per_query)
        self.positive = positive
        self.negatives = negatives
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.index = index_kind(index)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.embedding = embedding
        self.extract_fn = extract_fn
        self.verbose = verbose
        self.history = []
        self._extract = None
        self._epoch = 0

    def _embedding_model(self):
        return self.embedding or self.model.embedding

    @property
    def embed_fn(self):
        """Deprecated name of `extract_fn`."""
        warnings.warn(
            "HardNegativeMiner.embed_fn is deprecated; use extract_fn.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.extract_fn

    def extract(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Descriptors of images `indices` with the current weights.

        Returns:
            `(descriptors (M, D), kept indices (M,))`: unreadable images
            are skipped.
        """
        if self.extract_fn is not None:
            return self.extract_fn(indices)
        model = self._embedding_model()
        if self._extract is None:
            self._extract = tf.function(
                lambda x: model(x, training=False),
                reduce_retracing=True,
                autograph=False,
            )
        ds = image_dataset(
            self.images, indices, self.image_size, self.resize
        ).batch(self.batch_size if self.resize == "square" else 1)
        descriptors, kept = [], []
        for batch, index in ds:
            descriptors.append(np.asarray(self._extract(batch)))
            kept.append(index.numpy())
        if not descriptors:
            return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
        return np.concatenate(descriptors), np.concatenate(kept)

    def embed(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Deprecated name of `extract`."""
        warnings.warn(
            "HardNegativeMiner.embed is deprecated; use extract.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.extract(indices)

    def mine(self, epoch: int) -> np.ndarray:
        """Runs one mining round and writes the table; returns it."""
        start = time.perf_counter()
        labels = self.images.labels
        size = len(self.table)
        rng = np.random.default_rng([self.seed, int(epoch), 7])
        pool_size = min(self.pool_size, len(labels))
        pool = np.sort(rng.choice(len(labels), pool_size, replace=False))
        descriptors, pool = self.extract(pool)
        counts = np.bincount(labels, minlength=len(self.images.class_names))
        eligible = np.flatnonzero(counts[labels[pool]] >= 2)
        num_queries = min(len(eligible), -(-size // self.negatives_per_query))
        chosen = rng.choice(eligible, num_queries, replace=False)
        queries = pool[chosen]
        positives = select_positives(
            queries,
            labels,
            self.positive,
            rng,
            pool,
            descriptors,
            descriptors[chosen],
        )
        bound = None
        if self.negatives == "semihard":
            bound = self._positive_similarity(
                descriptors, pool, chosen, positives
            )
        negatives = mine_hard_negatives(
            descriptors[chosen],
            labels[queries],
            descriptors,
            labels[pool],
            self.negatives_per_query,
            self.index,
            max_similarity=bound,
        )
        rows = []
        for q, p, negs in zip(queries, positives, negatives):
            rows.extend((q, p, pool[n]) for n in negs if n >= 0)
        rows = np.array(rows, np.int64).reshape(-1, 3)[:size]
        if len(rows) < size:
            filler = random_triplets(
                labels, size - len(rows), [self.seed, int(epoch), 11]
            )
            rows = np.concatenate([rows, filler])
        self.table.set(rows, mined_epoch=epoch)
        stats = self._stats(
            descriptors, pool, rows, time.perf_counter() - start
        )
        stats["epoch"] = int(epoch)
        self.history.append(stats)
        first = self.history[0]["pool_similarity"]
        if stats["pool_similarity"] > max(
            COLLAPSE_SIMILARITY, first + COLLAPSE_RISE
        ):
            logger.warning(
                "Mining at epoch %d: the descriptors of different images "
                "have a mean cosine of %.2f (above %.1f): training is "
                "collapsing them onto one point, and a triplet loss near its "
                "margin says the same. Retrieval from this model will be "
                "poor; a run with %sanother seed or loss='contrastive' may "
                "not collapse.",
                epoch,
                stats["pool_similarity"],
                COLLAPSE_SIMILARITY,
                "semi-hard negatives (negatives='semihard'), "
                if self.negatives == "hardest"
                else "",
            )
        if self.verbose:
            logger.info(
                "mined %d triplets from a pool of %d in %.1f s: mean "
                "similarity query-positive %.3f, query-negative %.3f; "
                "negative as similar as the positive in %.0f%% of rows",
                len(rows),
                len(pool),
                stats["seconds"],
                stats["positive_similarity"],
                stats["negative_similarity"],
                100 * stats["harder_than_positive"],
            )
        return rows

    def _positive_similarity(self, descriptors, pool, chosen, positives):
        """Similarity of each query (`descriptors[chosen]`) to its
        positive; positives outside the pool are extracted, and an
        unreadable one bounds nothing (`inf`)."""
        where = {int(i): k for k, i in enumerate(pool)}
        found = np.full((len(chosen), descriptors.shape[1]), np.nan)
        missing = []
        for row, p in enumerate(positives):
            if int(p) in where:
                found[row] = descriptors[where[int(p)]]
            else:
                missing.append(row)
        if missing:
            extra, kept = self.extract(np.unique(positives[missing]))
            at = {int(i): k for k, i in enumerate(kept)}
            for row in missing:
                if int(positives[row]) in at:
                    found[row] = extra[at[int(positives[row])]]
        similarity = np.sum(found * descriptors[chosen], axis=1)
        return np.where(np.isnan(similarity), np.inf, similarity)

    def _stats(self, descriptors, pool, rows, seconds):
        where = {int(i): k for k, i in enumerate(pool)}
        neg = [
            float(descriptors[where[q]] @ descriptors[where[n]])
            for q, _, n in rows
            if q in where and n in where
        ]
        pos = [
            float(descriptors[where[q]] @ descriptors[where[p]])
            for q, p, _ in rows
            if q in where and p in where
        ]
        harder = [
            descriptors[where[q]] @ descriptors[where[n]]
            >= descriptors[where[q]] @ descriptors[where[p]]
            for q, p, n in rows
            if q in where and p in where and n in where
        ]
        return {
            "seconds": seconds,
            "pool": len(pool),
            "positive_similarity": float(np.mean(pos)) if pos else np.nan,
            "negative_similarity": float(np.mean(neg)) if neg else np.nan,
            "harder_than_positive": (
                float(np.mean(harder)) if harder else np.nan
            ),
            "pool_similarity": mean_cosine(descriptors),
        }

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if not self.every_n_epochs or epoch % self.every_n_epochs:
            return
        if self.table.mined_epoch == epoch:
            return  # Restored from a checkpoint taken in this epoch.
        self.mine(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if not self.every_n_steps:
            return
        # Batches seen, not updates (they differ under accumulation).
        if self.model.optimizer_step % self.every_n_steps == 0:
            self.mine(self._epoch)


def _renamed(deprecated, old, new, value):
    """`value`, or the one deprecated keyword `old` in `deprecated`."""
    unknown = sorted(set(deprecated) - {old})
    if unknown:
        raise TypeError(f"Unexpected keyword arguments: {unknown}.")
    if old not in deprecated:
        return value
    warnings.warn(
        f"`{old}` is deprecated; pass `{new}`.",
        DeprecationWarning,
        stacklevel=3,
    )
    if value is not None:
        raise TypeError(f"Pass `{new}` or `{old}`, not both.")
    return deprecated[old]
