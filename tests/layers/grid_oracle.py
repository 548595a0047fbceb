"""An independent oracle of the R-MAC region grid.

Written from the description of the reference arithmetic (Tolias et al.;
cnnimageretrieval-pytorch `rmac`/`roipool`), not from the library code:
plain Python floats, with every float32 operation of the reference
emulated by rounding through `struct` (a float64 operation on float32
operands, rounded to float32, is the correctly rounded float32 result).
It was cross-checked against the reference arithmetic run in PyTorch on
every map up to 129x129.
"""

import math
import struct


def f32(x):
    """Rounds a Python float to the nearest float32 value."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def oracle_regions(height, width, levels=3, overlap=0.4, include_global=True):
    w = min(height, width)
    extra = 0
    if height != width:
        # Candidates of 2..7 regions along the long side. PyTorch computes
        # `int / float32_tensor` as `int * reciprocal(tensor)`.
        best, best_err = None, None
        for k, steps in enumerate([2.0, 3.0, 4.0, 5.0, 6.0, 7.0]):
            recip = f32(1.0 / f32(steps - 1.0))
            b = f32(float(max(height, width) - w) * recip)
            num = f32(float(w * w) - f32(float(w) * b))
            err = abs(f32(f32(num / float(w * w)) - f32(overlap)))
            if best_err is None or err < best_err:  # first one on ties
                best, best_err = k, err
        extra = best + 1
    extra_w = extra if height < width else 0
    extra_h = extra if height > width else 0
    out = [[0, 0, width, height]] if include_global else []
    for level in range(1, levels + 1):
        side = math.floor(2 * w / (level + 1))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)

        def starts(n, size):
            step = 0.0 if n == 1 else (size - side) / (n - 1)
            step = f32(step)
            return [
                math.floor(f32(half + f32(i * step))) - half for i in range(n)
            ]

        xs = starts(level + extra_w, width)
        ys = starts(level + extra_h, height)
        for y in ys:
            for x in xs:
                out.append([x, y, side, side])
    return out
