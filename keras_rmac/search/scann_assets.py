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

import os
import re
import shutil
import tempfile

import numpy as np

from keras_rmac.search.nibbles import pack_nibbles
from keras_rmac.search.nibbles import unpack_nibbles

SCANN_DIR = "scann"
ASSETS_FILE = "scann_assets.pbtxt"
PACKED_CODES_FILE = "hashed_codes_packed.npy"
HASHED_FILE = "hashed_dataset.npy"
DATASET_FILE = "dataset.npy"
FLOAT_FILES = ("dataset.npy", "int8_dataset.npy")

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
