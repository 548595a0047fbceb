"""ScaNN's files in a saved index: packed codes, relocatable asset paths.

ScaNN serialises a searcher as a directory of protobufs and `.npy` files
listed, with their paths, in `scann_assets.pbtxt`. A saved `ScannIndex`
keeps that directory (`scann/`) with two changes:

- 4-bit codes (`hashed_dataset.npy`, one byte per code) are replaced by
  `hashed_codes_packed.npy` (two codes per byte, `keras_rmac.search.nibbles`);
- the asset paths are relative, so the index directory can be moved.

`load_searcher` undoes both in a temporary staging directory (links to the
saved files, unpacked codes, a pbtxt of bare file names) and loads ScaNN
from there. Nothing here is ever pickled; a directory holding a pickle is
refused.
"""

import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from keras_rmac.search import storage
from keras_rmac.search.nibbles import pack_nibbles
from keras_rmac.search.nibbles import unpack_nibbles
from keras_rmac.search.projection import PCAProjection
from keras_rmac.search.scann_policy import ScannParams

SCANN_DIR = "scann"
ASSETS_FILE = "scann_assets.pbtxt"
PACKED_CODES_FILE = "hashed_codes_packed.npy"
HASHED_FILE = "hashed_dataset.npy"
DATASET_FILE = "dataset.npy"
FLOAT_FILES = ("dataset.npy", "int8_dataset.npy")
VECTORS_FILE = "vectors.npy"
PROJECTION_FILE = "projection_matrix.npy"
PROJECTION_MEAN_FILE = "projection_mean.npy"

_ASSET_PATH = re.compile(r'asset_path:\s*"([^"]*)"')


def scann_pybind():
    """ScaNN's pybind module (imported lazily: scann imports TensorFlow)."""
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


def relative_asset_paths(pbtxt: str) -> str:
    """`scann_assets.pbtxt` text with every asset path reduced to its name.

    Example:

    >>> relative_asset_paths('asset_path: "/old/place/ah_codebook.pb"')
    'asset_path: "ah_codebook.pb"'
    """
    return _ASSET_PATH.sub(
        lambda m: f'asset_path: "{os.path.basename(m.group(1))}"', pbtxt
    )


def serialize_searcher(searcher, scann_dir: str) -> set[str]:
    """Writes `searcher` to `scann_dir` (created) with relative asset paths.

    Returns:
        The names of the files ScaNN wrote.

    Raises:
        RuntimeError: ScaNN wrote a pickle (refused).
    """
    os.makedirs(scann_dir)
    searcher.serialize(scann_dir, relative_path=True)
    written = set(os.listdir(scann_dir))
    if any(name.endswith(".pkl") for name in written):
        raise RuntimeError(
            f"ScaNN wrote a pickle in {scann_dir}; refusing to save."
        )
    return written


def pack_saved_codes(scann_dir: str) -> dict | None:
    """Replaces ScaNN's 4-bit `hashed_dataset.npy` by its packed form.

    Returns:
        The manifest entry `{"file": ..., "num_codes": B}` of the packed
        codes, or None when there were no 4-bit codes to pack (the file is
        then left as it is).
    """
    hashed = os.path.join(scann_dir, HASHED_FILE)
    if not os.path.exists(hashed):
        return None
    codes = np.load(hashed, allow_pickle=False)
    if not (
        codes.dtype == np.uint8
        and codes.ndim == 2
        and (codes.size == 0 or codes.max() < 16)
    ):
        return None
    np.save(
        os.path.join(scann_dir, PACKED_CODES_FILE),
        pack_nibbles(codes),
        allow_pickle=False,
    )
    os.remove(hashed)
    return {
        "file": f"{SCANN_DIR}/{PACKED_CODES_FILE}",
        "num_codes": int(codes.shape[1]),
    }


def load_searcher(
    scann_dir: str, packed_codes: str | None, num_codes: int | None
):
    """Loads a ScaNN searcher from a saved index's `scann/` directory.

    ScaNN's `scann_assets.pbtxt` may hold absolute paths (older writers) and
    our codes are nibble-packed, so the assets are staged in a temporary
    directory (symbolic links, unpacked codes, a rewritten pbtxt with bare
    file names) and loaded from there; ScaNN reads everything into memory,
    so the staging directory is deleted afterwards.

    Args:
        scann_dir: str. The saved `scann/` directory.
        packed_codes: str or None. Path of the packed 4-bit codes.
        num_codes: int or None. Codes per vector in `packed_codes`.
    """
    assets = os.path.join(scann_dir, ASSETS_FILE)
    if not os.path.isfile(assets):
        raise FileNotFoundError(
            f"{assets} is missing: the index is damaged; rebuild it."
        )
    if any(name.endswith(".pkl") for name in os.listdir(scann_dir)):
        raise ValueError(
            f"{scann_dir} holds a pickle file; keras_rmac never writes one "
            "and refuses to load it. Rebuild the index."
        )
    with open(assets, encoding="utf-8") as f:
        text = relative_asset_paths(f.read())
    stage = tempfile.mkdtemp(prefix="keras_rmac_scann_")
    try:
        for name in os.listdir(scann_dir):
            if name in (ASSETS_FILE, PACKED_CODES_FILE):
                continue
            os.symlink(
                os.path.abspath(os.path.join(scann_dir, name)),
                os.path.join(stage, name),
            )
        if packed_codes is not None:
            packed = np.load(packed_codes, allow_pickle=False)
            np.save(
                os.path.join(stage, HASHED_FILE),
                unpack_nibbles(packed, num_codes),
                allow_pickle=False,
            )
        with open(os.path.join(stage, ASSETS_FILE), "w") as f:
            f.write(text)
        searcher = scann_pybind().load_searcher(
            stage, assets_backcompat_shim=False
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return searcher


# ----------------------------------------------------------------------
# Building a searcher, and the projection and float files of an index.


def fit_projection(x: np.ndarray, params: ScannParams) -> PCAProjection | None:
    """The compact-mode PCA (+ rotation), learned on the training rows."""
    if not params.projection_dim:
        return None
    rows = x
    if len(x) > params.training_sample_size:
        pick = np.random.default_rng(0).choice(
            len(x), params.training_sample_size, replace=False
        )
        rows = x[np.sort(pick)]
    # Brute force keeps the projected vectors: no rotation needed.
    rotate = params.scoring != "brute_force"
    return PCAProjection.fit(rows, params.projection_dim, rotate=rotate)


def build_searcher(x: np.ndarray, params: ScannParams, num_threads: int):
    """A ScaNN searcher over `x` configured by `params`."""
    pybind = scann_pybind()
    builder = pybind.builder(x, 10, "dot_product")
    if params.num_leaves:
        builder = builder.tree(
            num_leaves=params.num_leaves,
            num_leaves_to_search=params.num_leaves_to_search,
            training_sample_size=params.training_sample_size,
            spherical=params.spherical_tree,
        )
    if params.scoring == "brute_force":
        builder = builder.score_brute_force()
    else:
        aniso = params.anisotropic_quantization_threshold
        builder = builder.score_ah(
            params.dimensions_per_block,
            anisotropic_quantization_threshold=(
                math.nan if aniso is None else aniso
            ),
            training_sample_size=params.training_sample_size,
            hash_type=params.hash_type,
        )
        if params.reorder_num_neighbors:
            reorder_types = pybind.scann_builder.ReorderType
            builder = builder.reorder(
                params.reorder_num_neighbors,
                quantize=(
                    reorder_types.INT8
                    if params.reorder_dtype == "int8"
                    else reorder_types.FLOAT32
                ),
            )
    builder.set_n_training_threads(num_threads)
    return builder.build()


def padded(
    rows: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """ScaNN's results as `(Q, k)` rows and scores, `-1`/`-inf` padded.

    ScaNN pads missing results with row 0 and a NaN score.
    """
    out_rows = np.full((len(rows), k), -1, np.int64)
    out_scores = np.full((len(rows), k), -np.inf, np.float32)
    width = min(k, rows.shape[1])
    valid = np.isfinite(scores[:, :width])
    out_rows[:, :width] = np.where(valid, rows[:, :width], -1)
    out_scores[:, :width] = np.where(valid, scores[:, :width], -np.inf)
    return out_rows, out_scores


def save_projection(directory: str, projection: PCAProjection) -> dict:
    """Writes the projection's matrix and mean; returns the manifest entry."""
    for name, array in (
        (PROJECTION_FILE, projection.matrix),
        (PROJECTION_MEAN_FILE, projection.mean),
    ):
        np.save(os.path.join(directory, name), array, allow_pickle=False)
    return {"matrix": PROJECTION_FILE, "mean": PROJECTION_MEAN_FILE}


def load_projection(
    directory: str,
    files: Mapping[str, Any],
    dimension: int,
    projection_dim: int | None,
) -> PCAProjection | None:
    """The saved projection, checked against the manifest; None if none."""
    if "projection" not in files:
        if projection_dim:
            raise ValueError(
                f"Index {directory} was built with a projection to "
                f"{projection_dim} dimensions but holds no projection "
                "files: the index is damaged; rebuild it."
            )
        return None
    matrix = storage.load_array(directory, files["projection"]["matrix"])
    mean = storage.load_array(directory, files["projection"]["mean"])
    want = (dimension, projection_dim)
    if matrix.shape != want or mean.shape != want[:1]:
        raise ValueError(
            f"{os.path.join(directory, PROJECTION_FILE)} holds "
            f"{matrix.shape} and the mean {mean.shape}, expected "
            f"{want} and {want[:1]}: the index is damaged; rebuild it."
        )
    return PCAProjection(matrix, mean)


def load_vectors(
    directory: str, files: Mapping[str, Any], expected: tuple[int, int]
) -> np.ndarray:
    """A fast-mode index's float descriptors, memory-mapped read-only."""
    name = files.get("vectors")
    if name is None:
        raise ValueError(
            f"Fast-mode index {directory} lists no float vectors: the "
            "index is damaged; rebuild it."
        )
    vectors = storage.load_array(directory, name, mmap_mode="r")
    if vectors.dtype != np.float32 or vectors.shape != expected:
        raise ValueError(
            f"{os.path.join(directory, name)} holds {vectors.dtype} "
            f"{vectors.shape}, expected float32 {expected}: the index is "
            "damaged; rebuild it."
        )
    return vectors
