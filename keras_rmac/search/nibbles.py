"""4-bit codes packed two per byte, for ScaNN's 16-centre PQ codes on disk.

ScaNN stores each 4-bit ("lut16") code in a byte of its own
(`hashed_dataset.npy`); a saved index keeps them packed two per byte,
halving the size of the codes.

Example:

>>> import numpy as np
>>> codes = np.array([[1, 2, 3]], np.uint8)
>>> packed = pack_nibbles(codes)
>>> packed
array([[33,  3]], dtype=uint8)
>>> unpack_nibbles(packed, 3)
array([[1, 2, 3]], dtype=uint8)
"""

import numpy as np


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Packs 4-bit codes `(N, B)` (values < 16) into `(N, ceil(B/2))` bytes.

    Code `2j` goes to the low nibble of byte `j`, code `2j+1` to the high.
    """
    codes = np.asarray(codes, np.uint8)
    if codes.size and codes.max() > 15:
        raise ValueError("pack_nibbles: codes must be < 16.")
    if codes.shape[1] % 2:
        codes = np.pad(codes, ((0, 0), (0, 1)))
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: np.ndarray, num_codes: int) -> np.ndarray:
    """Inverse of `pack_nibbles`: `(N, ceil(B/2))` bytes to `(N, B)` codes."""
    packed = np.asarray(packed, np.uint8)
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    codes[:, 0::2] = packed & 15
    codes[:, 1::2] = packed >> 4
    return np.ascontiguousarray(codes[:, :num_codes])
