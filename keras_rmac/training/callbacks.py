"""Keras callbacks of a training run.

`ResumableBackupAndRestore` checkpoints the run every few steps and resumes
it inside an epoch; `RandomTriplets` redraws random triplets each epoch
when hard-negative mining is off.
"""

import json
import logging
import os

import keras

from keras_rmac.data.triplets import random_triplets
from keras_rmac.fileio import atomic_write
from keras_rmac.fileio import atomic_write_json
from keras_rmac.models import optimizer_step

logger = logging.getLogger(__name__)


class ResumableBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that can resume inside an epoch.

    Keras's callback restores the weights of a mid-epoch checkpoint but
    restarts that epoch from its first batch, so the steps already done are
    done twice (on other data). This subclass also records how many batches
    of the epoch were done and saves the `TripletTable` in use, and
    `restore()` returns that position so that the caller (see `train`) can
    run exactly the remaining batches of the epoch, on the same data, before
    continuing with the next epochs.

    Files are written atomically (temporary file, then rename), so a kill
    at any moment leaves a loadable checkpoint. The weights file holds the
    optimizer state, `iterations` included; if a kill lands between writing
    the weights and the metadata, the position is corrected from the
    restored `iterations`.

    Args:
        backup_dir: str. Folder of the checkpoint (one run only).
        table: `TripletTable` or None. Saved and restored with the weights.
        batches_per_epoch: int or None. Batches in a full epoch (to tell a
            checkpoint taken after an epoch's last batch). Defaults to
            None.
        save_freq: `"epoch"` or int (steps). Defaults to `"epoch"`.
        delete_checkpoint: bool. Delete the backup when training
            completes. Defaults to `True`.
    """

    def __init__(
        self,
        backup_dir,
        table=None,
        batches_per_epoch=None,
        save_freq="epoch",
        delete_checkpoint=True,
    ):
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            delete_checkpoint=delete_checkpoint,
        )
        self.table = table
        self.batches_per_epoch = batches_per_epoch
        self._table_path = os.path.join(backup_dir, "triplets.npz")
        self._batches_done = 0
        self._restored_here = False
        self.keep_checkpoint = False
        self.restored = None

    def restore(self, model):
        """Loads the checkpoint into `model` (built and compiled), if any.

        Returns:
            None when there is no checkpoint, else a dict with `epoch`
            (0-based, the epoch to continue), `batches_done` (batches of
            that epoch already trained) and `step` (optimizer iterations).
        """
        self.set_model(model)
        self._restored_here = True
        super().on_train_begin()  # Keras: weights (+ .bkp fallback).
        if not os.path.exists(self._training_metadata_path):
            return None
        with open(self._training_metadata_path) as f:
            meta = json.load(f)
        epoch = int(meta["epoch"])
        done = int(meta.get("batches_done", 0))
        saved_step = meta.get("iterations")
        step = optimizer_step(model.optimizer)
        if saved_step is not None and step != int(saved_step):
            logger.warning(
                "checkpoint weights are at step %d but its metadata at "
                "step %s (interrupted while saving); resuming from the "
                "weights",
                step,
                saved_step,
            )
            done += step - int(saved_step)
        if self.table is not None and os.path.exists(self._table_path):
            self.table.load(self._table_path)
        if self.batches_per_epoch and done >= self.batches_per_epoch:
            # Saved after the last batch of the epoch: start the next one.
            epoch, done = epoch + 1, 0
        self._current_epoch = epoch
        self._batches_done = done
        self.restored = {"epoch": epoch, "batches_done": done, "step": step}
        logger.info(
            "resuming from %s: epoch %d, %d batches done, step %d",
            self.backup_dir,
            epoch + 1,
            done,
            step,
        )
        return self.restored

    def on_train_begin(self, logs=None):
        if not self._restored_here:
            self.restore(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch
        if self.restored is None or epoch != self.restored["epoch"]:
            self._batches_done = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches_done += 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._batches_done = 0
        super().on_epoch_end(epoch, logs)

    def save(self):
        """Writes a checkpoint of the current state now."""
        self._save_model()

    def _save_model(self):
        # Weights first (the table is written while they are still out of
        # sight), then the position: `restore` corrects a position older
        # than the weights from the optimizer's step.
        with atomic_write(self._weights_path) as tmp:
            self.model.save_weights(tmp, overwrite=True)
            if self.table is not None:
                self.table.save(self._table_path)
        meta = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "batches_done": self._batches_done,
            "iterations": optimizer_step(self.model.optimizer),
        }
        atomic_write_json(self._training_metadata_path, meta, indent=None)

    def on_train_end(self, logs=None):
        if self.keep_checkpoint:
            return
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            super().on_train_end(logs)


class RandomTriplets(keras.callbacks.Callback):
    """Redraws random triplets at each epoch start (no mining)."""

    def __init__(self, labels, table, seed):
        super().__init__()
        self.labels = labels
        self.table = table
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0 or self.table.mined_epoch == epoch:
            return
        self.table.set(
            random_triplets(
                self.labels, len(self.table), [self.seed, 1, epoch]
            ),
            mined_epoch=epoch,
        )
