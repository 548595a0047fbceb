"""Loading a saved `RMACModel`, and choosing the model of an index.

`load_rmac_model` opens a `.keras` file that must hold an `RMACModel`;
`ensure_built` builds every layer so that `fingerprint()` is final;
`resolve_index_model` decides which model an indexing run uses: the one
passed in, or the one saved with the index, refusing a model other than
the one the index was built with.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_rmac.search import IndexMismatchError

__all__ = [
    "ensure_built",
    "load_rmac_model",
    "model_dimension",
    "resolve_index_model",
]


def load_rmac_model(path: str | os.PathLike):
    """Loads a `.keras` file that must hold an `RMACModel`.

    Args:
        path: str or os.PathLike. The `.keras` file.

    Returns:
        The `RMACModel`.

    Raises:
        FileNotFoundError: `path` does not exist.
        TypeError: the file holds another kind of model.
    """
    from keras_rmac.models.rmac_model import RMACModel

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Model file not found: {path}. Pass a .keras file saved from "
            "an RMACModel (model.save('model.keras'))."
        )
    model = keras.models.load_model(path, compile=False)
    if not isinstance(model, RMACModel):
        raise TypeError(
            f"{path} holds a {type(model).__name__}, not an RMACModel; "
            "save the RMACModel itself (e.g. triplet_model.rmac.save(...))."
        )
    return model


def ensure_built(model):
    """Builds every layer (one call on a blank image) and returns `model`.

    `RMACModel` creates its shift + PCA weights on first call, and
    `fingerprint()` hashes `model.weights`, so an unbuilt model has another
    fingerprint than the same model after one call; saving it unbuilt would
    also drop those weights.
    """
    if not model.built or any(not layer.built for layer in model.layers):
        model(np.zeros((1, 64, 64, 3), np.float32))
    return model


def model_dimension(model) -> int:
    """The descriptor dimension D of an `RMACModel` (`model.dimension`)."""
    return int(model.dimension)


def resolve_index_model(
    model_path: str,
    model=None,
    fingerprint: str | None = None,
    rebuild: bool = False,
):
    """The model of an indexing run, its fingerprint, and whether to save it.

    Args:
        model_path: str. The index's saved model file (may not exist yet).
        model: `RMACModel` or None. The model asked for; None reuses the
            index's saved model.
        fingerprint: str or None. The fingerprint the index was built with
            (None for a new index).
        rebuild: bool. The index is being rebuilt from scratch, so another
            model is allowed. Defaults to False.

    Returns:
        `(model, fingerprint, must_save)`: the built model, its
        fingerprint, and whether `model_path` must be (re)written.

    Raises:
        ValueError: no model given and none saved.
        keras_rmac.search.IndexMismatchError: `model` is not the model the
            index was built with and `rebuild` is False.
    """
    index_dir = os.path.dirname(model_path)
    if model is None:
        if not os.path.isfile(model_path):
            raise ValueError(
                f"{index_dir} holds no index yet "
                f"({os.path.basename(model_path)} missing): pass `model=` "
                "(an RMACModel) to create one."
            )
        loaded = ensure_built(load_rmac_model(model_path))
        return loaded, loaded.fingerprint(), False
    own = ensure_built(model).fingerprint()
    if fingerprint is not None and not rebuild and fingerprint != own:
        raise IndexMismatchError(
            f"The index in {index_dir} was built with another model "
            f"(fingerprint {fingerprint[:12]}..., this one is "
            f"{own[:12]}...): its descriptors cannot be mixed with "
            "this model's. Use the same model, or rebuild the index from "
            "scratch (--rebuild, or rebuild=True)."
        )
    saved = fingerprint == own and os.path.isfile(model_path)
    return model, own, not saved
