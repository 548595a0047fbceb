"""Pure functions behind the keras_rmac layers: the one home of the R-MAC math.

The layer classes in this package are thin wrappers around these functions
(the split used by cnnimageretrieval-pytorch):

- the R-MAC region grid: `rmac_regions_numpy` (NumPy, for feature maps whose
  size is known when tracing) and `rmac_regions` (the same grid in the graph);
- pooling of a `(B, H, W, C)` feature map: `mac`, `spoc`, `gem` (global, to
  `(B, C)`) and `rmac_pooling` (max over every region of the grid, to
  `(B, R, C)`);
- `l2_normalize`;
- the whitening: `shift_pca` applies it in the graph, and
  `whitening_from_moments` estimates it (NumPy, float64) from the mean and
  covariance of region vectors.

Everything except the two NumPy functions works on `keras.ops` tensors.
Under a `mixed_float16` policy the L2 norm and GeM's powers are computed in
float32: in float16, squares and cubes of ordinary activations overflow
(above 65504), small ones underflow, and the `epsilon**2 = 1e-12` floor of
the norm is 0.

The R-MAC grid (Tolias et al., ICLR 2016) is reproduced exactly as the
reference implementations compute it, float32 rounding included: the number
of extra regions along the long side is chosen with float32 arithmetic (which
decides ties such as a 5x9 map) and region offsets are `floor` of float32
values (which decides offsets that land near an integer, such as a 2x32 map).

Reference:
    - [Tolias et al., Particular object retrieval with integral max-pooling
      of CNN activations](https://arxiv.org/abs/1511.05879)
    - [Babenko and Lempitsky, Aggregating Deep Convolutional Features for
      Image Retrieval](https://arxiv.org/abs/1510.07493)
    - [Radenovic et al., Fine-tuning CNN Image Retrieval with No Human
      Annotation](https://arxiv.org/abs/1711.02512)
    - [Gordo et al., End-to-end Learning of Deep Visual Representations for
      Image Retrieval](https://arxiv.org/abs/1610.07940)
"""

import numpy as np
from keras import backend
from keras import ops

from keras_rmac.stats import principal_components

# Candidate numbers of regions along the long side, minus one: the reference
# tries 2..7 regions, i.e. 1..6 extra regions beyond the square one.
_STEPS = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0)


def _f32(x):
    """Rounds a NumPy float64 array (or scalar) to float32 and back."""
    return np.float64(np.float32(x))


def _extra_regions_numpy(height, width, overlap):
    """Extra regions along the long side (0 for a square map), in float32."""
    if height == width:
        return 0
    w = min(height, width)
    steps = np.asarray(_STEPS, np.float32)
    # b: float32 step between region starts for each candidate count. The
    # reference divides an int by a float32 tensor, which PyTorch computes
    # as int * reciprocal(tensor): two float32 roundings, not one.
    inv = (np.float32(1) / (steps - np.float32(1))).astype(np.float32)
    b = (np.float32(max(height, width) - w) * inv).astype(np.float32)
    w2 = np.float32(w * w)
    # Overlap of consecutive regions for each candidate, in float32.
    ov = (w2 - np.float32(w) * b) / w2 - np.float32(overlap)
    ov = np.abs(ov.astype(np.float32))
    # First candidate on ties (argmin returns the first minimum).
    return int(np.argmin(ov)) + 1


def _offsets_numpy(n, size, side):
    """Region start offsets along one axis, float32 as the reference."""
    wl2 = side // 2 - 1
    if n == 1:
        step = np.float32(0.0)
    else:
        # Python float64 division, then used in float32 arithmetic.
        step = np.float32((size - side) / (n - 1))
    idx = np.arange(n, dtype=np.float32)
    pos = np.floor(np.float32(wl2) + idx * step).astype(np.float32)
    return [int(p) - wl2 for p in pos]


def rmac_regions_numpy(
    height, width, levels=3, overlap=0.4, include_global=True
):
    """R-MAC regions of a `height` x `width` feature map, in NumPy.

    Args:
        height: int. Feature map height (>= 1).
        width: int. Feature map width (>= 1).
        levels: int. Number of scales L.
        overlap: float. Desired overlap of consecutive regions.
        include_global: bool. Whether the whole map comes first.

    Returns:
        int32 array `(R, 4)` of `(x, y, w, h)` in feature cells.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(
            f"Feature map must be at least 1x1, got {height}x{width}."
        )
    extra = _extra_regions_numpy(height, width, overlap)
    extra_w = extra if height < width else 0
    extra_h = extra if height > width else 0
    w = min(height, width)
    regions = [(0, 0, width, height)] if include_global else []
    for level in range(1, levels + 1):
        side = (2 * w) // (level + 1)
        if side == 0:
            continue
        xs = _offsets_numpy(level + extra_w, width, side)
        ys = _offsets_numpy(level + extra_h, height, side)
        regions.extend((x, y, side, side) for y in ys for x in xs)
    return np.asarray(regions, dtype=np.int32).reshape(-1, 4)


def _r32(x):
    """Rounds a float64 tensor to float32 precision, keeping float64.

    Every float32 operation of the reference is evaluated in float64 and
    rounded once: float64 has more than 2 * 24 + 2 mantissa bits, so the
    result equals the correctly rounded float32 operation, and a compiler
    cannot fuse the steps (e.g. into an FMA) and change the rounding.
    """
    return ops.cast(ops.cast(x, "float32"), "float64")


# float32(1 / (steps - 1)) for the reference's int / float32 tensor division.
_INV_STEPS = (
    np.float32(1) / (np.asarray(_STEPS, np.float32) - np.float32(1))
).astype(np.float64)


def _extra_regions(height, width, overlap):
    """Graph version of `_extra_regions_numpy` for tensor `height`, `width`."""
    short = ops.minimum(height, width)
    long = ops.maximum(height, width)
    short_f = ops.cast(short, "float64")
    b = _r32(
        ops.cast(long - short, "float64")
        * ops.convert_to_tensor(_INV_STEPS, "float64")
    )
    w2 = _r32(short_f * short_f)
    ov = _r32(w2 - _r32(short_f * b))
    ov = _r32(ov / w2)
    ov = ops.abs(_r32(ov - float(np.float32(overlap))))
    # First minimum on ties, made explicit (argmin does not promise it).
    candidates = ops.arange(len(_STEPS), dtype="int32")
    first = ops.min(
        ops.where(ops.equal(ov, ops.min(ov)), candidates, len(_STEPS))
    )
    return ops.where(ops.equal(height, width), 0, first + 1)


def _offsets(n, size, side):
    """Graph version of `_offsets_numpy` for tensor `n`, `size`, `side`."""
    wl2 = side // 2 - 1
    denom = ops.cast(ops.maximum(n - 1, 1), "float64")
    step = _r32(ops.cast(size - side, "float64") / denom)
    step = ops.where(n > 1, step, 0.0)
    idx = ops.cast(ops.arange(n), "float64")
    pos = ops.floor(_r32(ops.cast(wl2, "float64") + _r32(idx * step)))
    return ops.cast(pos, "int32") - wl2


def rmac_regions(height, width, levels=3, overlap=0.4, include_global=True):
    """R-MAC regions for a feature map whose size may be a traced tensor.

    Same result as `rmac_regions_numpy`; use this one when the height or
    width is only known at run time (e.g. inside a `tf.function` with a
    `None` spatial shape).

    Args:
        height: int or scalar int tensor. Feature map height (>= 1).
        width: int or scalar int tensor. Feature map width (>= 1).
        levels: int. Number of scales L.
        overlap: float. Desired overlap of consecutive regions.
        include_global: bool. Whether the whole map comes first.

    Returns:
        int32 tensor `(R, 4)` of `(x, y, w, h)` in feature cells.
    """
    height = ops.cast(height, "int32")
    width = ops.cast(width, "int32")
    extra = _extra_regions(height, width, overlap)
    extra_w = ops.where(height < width, extra, 0)
    extra_h = ops.where(height > width, extra, 0)
    short = ops.minimum(height, width)
    parts = []
    if include_global:
        parts.append(ops.reshape(ops.stack([0, 0, width, height]), (1, 4)))
    for level in range(1, levels + 1):
        side = (2 * short) // (level + 1)
        # Levels whose side would be 0 contribute no region.
        nx = ops.where(side > 0, level + extra_w, 0)
        ny = ops.where(side > 0, level + extra_h, 0)
        xs = _offsets(nx, width, side)
        ys = _offsets(ny, height, side)
        # Row-major order: y outer, x inner, as the reference loops.
        yy = ops.reshape(ops.repeat(ys, nx), (-1,))
        xx = ops.reshape(ops.tile(xs, [ny]), (-1,))
        sides = ops.zeros_like(xx) + side
        parts.append(ops.stack([xx, yy, sides, sides], axis=1))
    return ops.cast(ops.concatenate(parts, axis=0), "int32")


def count_regions(height, width, levels=3, overlap=0.4, include_global=True):
    """Number of R-MAC regions for a static map size, or None if unknown."""
    if height is None or width is None:
        return None
    return len(
        rmac_regions_numpy(height, width, levels, overlap, include_global)
    )


def static_regions(x, levels, overlap, include_global):
    """The region grid as NumPy when `x`'s spatial size is static, else None.

    Under `tf.function` with a `None` height or width the shape is unknown
    and the caller must use the graph version, `rmac_regions`.
    """
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return None
    return rmac_regions_numpy(height, width, levels, overlap, include_global)


def regions_for(x, levels, overlap, include_global):
    """Static NumPy regions when possible, else traced regions."""
    regions = static_regions(x, levels, overlap, include_global)
    if regions is not None:
        return regions
    shape = ops.shape(x)
    return rmac_regions(shape[1], shape[2], levels, overlap, include_global)


# ---------------------------------------------------------------------------
# Pooling: (B, H, W, C) feature maps -> vectors.


def mac(x):
    """MAC: global max-pooling of `(B, H, W, C)` to `(B, C)`."""
    return ops.max(x, axis=(1, 2))


def spoc(x):
    """SPoC: global average pooling of `(B, H, W, C)` to `(B, C)`.

    SPoC sums activations; the mean differs only by a constant factor,
    which the L2 normalisation that follows removes.
    """
    return ops.mean(x, axis=(1, 2))


def _compute_dtype(x):
    """`(x in a safe dtype, x's dtype)`: float16/bfloat16 go to float32."""
    if not hasattr(x, "dtype"):
        x = ops.convert_to_tensor(x)
    dtype = backend.standardize_dtype(x.dtype)
    if dtype in ("float16", "bfloat16"):
        return ops.cast(x, "float32"), dtype
    return x, dtype


def gem(x, p, epsilon=1e-6):
    """GeM: `(mean(max(x, epsilon)^p))^(1/p)` over H and W, to `(B, C)`.

    Computed in float32 for float16 inputs (`x^3` overflows float16 above
    about 40).
    """
    x, dtype = _compute_dtype(x)
    if dtype != backend.standardize_dtype(x.dtype):
        p = ops.cast(p, x.dtype)
    x = ops.power(ops.maximum(x, epsilon), p)
    return ops.cast(ops.power(ops.mean(x, axis=(1, 2)), 1.0 / p), dtype)


def region_max_pool(x, regions):
    """Max-pools every region of a batch of feature maps.

    Args:
        x: tensor `(B, H, W, C)`.
        regions: NumPy int array `(R, 4)` of `(x, y, w, h)` (unrolled, for
            static shapes) or an int32 tensor (pooled in a loop, for
            shapes known only at run time).

    Returns:
        Tensor `(B, R, C)`.
    """
    if isinstance(regions, np.ndarray):
        pooled = [
            ops.max(x[:, y : y + h, rx : rx + w, :], axis=(1, 2))
            for rx, y, w, h in regions.tolist()
        ]
        return ops.stack(pooled, axis=1)

    def pool_one(region):
        rx, y, w, h = region[0], region[1], region[2], region[3]
        return ops.max(x[:, y : y + h, rx : rx + w, :], axis=(1, 2))

    return ops.transpose(ops.map(pool_one, regions), (1, 0, 2))


def rmac_pooling(x, levels=3, overlap=0.4, include_global=True):
    """R-MAC region vectors: the max of every region of the grid.

    Args:
        x: tensor `(B, H, W, C)`; H and W may be unknown until run time.
        levels: int. Number of scales L.
        overlap: float. Desired overlap of consecutive regions.
        include_global: bool. Whether the whole map is the first region.

    Returns:
        Tensor `(B, R, C)` of region maxima (not normalised), in the order
        of `rmac_regions`.
    """
    # The grid (NumPy when the map size is static), then each region's max.
    regions = regions_for(x, levels, overlap, include_global)
    return region_max_pool(x, regions)


# ---------------------------------------------------------------------------
# Normalisation and whitening of vectors.


def l2_normalize(x, axis=-1, epsilon=1e-6):
    """`x / max(||x||, epsilon)` along `axis` (zero vectors stay zero).

    The norm is computed in float32 for float16 (and bfloat16) inputs: in
    float16 the floor `epsilon**2` is 0 (a zero vector would give NaN),
    squares of values under about 2e-4 vanish and squares over 256
    overflow. The result has the input's dtype.

    Gradient: that of `x / max(||x||, epsilon)`, except for float16 inputs
    at vectors whose norm is under `epsilon` (a zero region), where it is
    zero: there it is `1 / epsilon` times the incoming gradient, past
    float16's 65504 once loss-scaled, and the `inf` times a ReLU's zero
    derivative would make every gradient of the step NaN (the loss-scale
    optimizer then skips the step and lowers the scale, again at the next
    zero region). The ReLU that made the vector zero passes no gradient
    to it anyway.
    """
    x, dtype = _compute_dtype(x)
    sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    y = x * ops.rsqrt(ops.maximum(sq, epsilon * epsilon))
    if dtype == "float16":
        y = ops.where(sq < epsilon * epsilon, ops.stop_gradient(y), y)
    return ops.cast(y, dtype)


def shift_pca(x, kernel, bias):
    """Shift + PCA on the last axis: `x @ kernel + bias`.

    With `kernel, bias = whitening_from_moments(...)` this is
    `diag(l^-power) V^T (x - mean)` for every vector.
    """
    return ops.matmul(x, kernel) + bias


def whitening_from_moments(
    mean, cov, units, power=0.5, epsilon=1e-6, shrinkage=0.0
):
    """Shift + PCA-whitening from the mean and covariance, in float64.

    NumPy, not `keras.ops`: it runs once on statistics (see
    `keras_rmac.stats.mean_and_covariance`), not in the graph.

    With `shrinkage=a > 0` the eigenvalues `l` of `cov` are replaced by
    those of the covariance shrunk toward isotropy,
    `(1 - a) * cov + a * mu * I` with `mu = trace(cov) / C` (the target of
    Ledoit and Wolf, 2004): `(1 - a) * l + a * mu`, on the same principal
    directions. `a = 1` keeps the PCA rotation (and the choice of the
    `units` directions of largest variance) but scales every direction
    alike: shift + PCA without whitening. Use it when the covariance is
    estimated from too few vectors (see `ShiftPCA`). If the covariance is
    zero (all vectors equal, up to rounding), a shrunk whitening is the
    shift alone (identity kernel).

    Args:
        mean: array `(C,)`. Mean of the vectors.
        cov: array `(C, C)`. Their (biased) covariance.
        units: int. Output dimension (<= C): the `units` principal
            directions of largest variance are kept.
        power: float. Whitening power: 0.5 whitens fully, 0 only rotates.
            Defaults to `0.5`.
        epsilon: float. Eigenvalues are floored at `epsilon` times the
            largest, so near-empty directions are not blown up. Defaults to
            `1e-6`.
        shrinkage: float in [0, 1]. Shrinkage intensity `a` above; 0 uses
            `cov` as it is. Defaults to `0.0`.

    Returns:
        `(kernel, bias)`: `(C, units)` and `(units,)` float64 arrays with
        `x @ kernel + bias == diag(l^-power) V^T (x - mean)`, where `l` and
        the columns of `V` are the kept eigenvalues and eigenvectors.

    Example:
    >>> kernel, bias = whitening_from_moments(
    ...     np.array([1.0, 2.0]), np.diag([4.0, 16.0]), units=1
    ... )
    >>> kernel.round(6).tolist(), bias.round(6).tolist()
    ([[0.0], [0.25]], [-0.5])
    >>> kernel, _ = whitening_from_moments(
    ...     np.array([1.0, 2.0]), np.diag([4.0, 16.0]), units=2, shrinkage=1
    ... )
    >>> kernel.round(6).tolist()  # mu = 10: rotation, one scale 10^-0.5
    [[0.0, 0.316228], [0.316228, 0.0]]
    """
    eigval, eigvec = principal_components(cov, units)
    if shrinkage:
        target = float(np.trace(cov)) / len(cov)
        # No variance beyond the rounding of `E[x x^T] - mean mean^T`
        # (equal vectors): no direction to prefer, nothing to whiten by.
        second = target + float(np.dot(mean, mean)) / len(cov)
        if not target > 1e-10 * second:
            kernel = np.eye(len(cov))[:, : eigvec.shape[1]]
            return kernel, -np.asarray(mean, np.float64) @ kernel
        eigval = (1.0 - shrinkage) * eigval + shrinkage * target
    floor = epsilon * max(float(eigval[0]), np.finfo(np.float64).tiny)
    scale = np.maximum(eigval, floor) ** (-power)
    kernel = eigvec * scale[None, :]
    bias = -np.asarray(mean, np.float64) @ kernel
    return kernel, bias
