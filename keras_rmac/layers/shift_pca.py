"""Shift + PCA-whitening as a trainable fully connected layer."""

import logging
import numbers

import keras
import numpy as np

from keras_rmac.layers import functional
from keras_rmac.stats import mean_and_covariance

logger = logging.getLogger(__name__)


def _iter_batches(data):
    """Yields float64 `(n, C)` NumPy blocks from an array or a dataset."""
    if hasattr(data, "as_numpy_iterator"):
        for batch in data.as_numpy_iterator():
            if isinstance(batch, tuple):
                batch = batch[0]
            batch = np.asarray(batch, np.float64)
            yield batch.reshape(-1, batch.shape[-1])
        return
    if isinstance(data, (np.ndarray, list, tuple)) or hasattr(data, "numpy"):
        data = np.asarray(data, np.float64)
        yield data.reshape(-1, data.shape[-1])
        return
    # Any other iterable (e.g. a generator) yields blocks of vectors.
    for block in data:
        block = np.asarray(block, np.float64)
        yield block.reshape(-1, block.shape[-1])


@keras.saving.register_keras_serializable(package="keras_rmac")
class ShiftPCA(keras.layers.Layer):
    """Shift + projection of every region vector: `x @ kernel + bias`.

    A fully connected layer with bias applied to the last axis. Until
    adapted it is the identity (on the first `units` coordinates), so an
    un-adapted R-MAC model gives plain R-MAC. `adapt()` sets the weights to
    shift + PCA-whitening learned from region vectors; they stay trainable,
    so end-to-end training refines them (Gordo et al., 2017, Sec. 3). The
    math is `keras_rmac.layers.functional.shift_pca` (the projection) and
    `functional.whitening_from_moments` (its estimate, in float64).

    Whitening needs more vectors than dimensions. From `N <= C` vectors the
    sample covariance has rank at most `N - 1`: at least `C - N + 1`
    directions have no variance at all (their scale is then set by the
    `epsilon` floor alone), and whitening the `N - 1` others maps the
    training vectors, centred, to equidistant points, so descriptors of
    the very images PCA was learned on become nearly orthogonal. With
    `shrinkage="auto"`, `adapt()` then learns shift + PCA without
    whitening (shrinkage 1: the PCA rotation, one scale for every
    direction) and logs a warning naming the counts; from `N > C` vectors
    it whitens exactly as it always did.

    Args:
        units: int or None. Output dimension; `None` keeps the input
            dimension. Defaults to `None`.
        power: float. Default whitening power for `adapt()`: 0.5 whitens
            fully, 0 only rotates. Defaults to `0.5`.
        epsilon: float. Relative floor on eigenvalues in `adapt()`.
            Defaults to `1e-6`.
        shrinkage: `"auto"`, float in [0, 1] or None. How `adapt()` shrinks
            the covariance toward isotropy before whitening (see
            `functional.whitening_from_moments`): `"auto"` shrinks fully
            (no whitening) when adapted on no more vectors than input
            dimensions and not at all otherwise; a float always shrinks
            by that much; None never shrinks (whitens even an
            under-determined estimate). Defaults to `"auto"`.

    Call arguments:
        inputs: tensor `(..., C)`.

    Returns:
        Tensor `(..., units)`.

    Example:
    >>> import numpy as np
    >>> layer = ShiftPCA()
    >>> layer.adapt(np.random.rand(100, 8))
    >>> layer(np.random.rand(2, 5, 8)).shape
    TensorShape([2, 5, 8])

    Reference:
        - [Gordo et al., 2017](https://arxiv.org/abs/1610.07940)
    """

    def __init__(
        self, units=None, power=0.5, epsilon=1e-6, shrinkage="auto", **kwargs
    ):
        super().__init__(**kwargs)
        if units is not None and (not isinstance(units, int) or units < 1):
            raise ValueError(
                f"`units` must be a positive int or None, got {units!r}."
            )
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be > 0, got {epsilon!r}.")
        if shrinkage not in ("auto", None) and (
            isinstance(shrinkage, bool)
            or not isinstance(shrinkage, numbers.Real)
            or not 0 <= shrinkage <= 1
        ):
            raise ValueError(
                '`shrinkage` must be "auto", None or a number in [0, 1], '
                f"got {shrinkage!r}."
            )
        self.units = units
        self.power = float(power)
        self.epsilon = float(epsilon)
        self.shrinkage = (
            float(shrinkage)
            if isinstance(shrinkage, numbers.Real)
            else shrinkage
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "ShiftPCA needs a known last dimension, got input shape "
                f"{input_shape}."
            )
        units = self.units or channels
        if units > channels:
            raise ValueError(
                f"`units`={units} exceeds the input dimension {channels}: "
                "PCA cannot add dimensions."
            )
        self.input_dim = channels
        self.kernel = self.add_weight(
            name="kernel",
            shape=(channels, units),
            initializer=keras.initializers.Identity(),
        )
        self.bias = self.add_weight(
            name="bias", shape=(units,), initializer="zeros"
        )

    def call(self, inputs):
        # Shift + PCA: one matrix product with bias on every region vector.
        return functional.shift_pca(inputs, self.kernel, self.bias)

    def adapt(self, data, power=None, units=None):
        """Sets the layer to shift + PCA-whitening learned from `data`.

        Args:
            data: array `(N, C)` or `(N, R, C)` of vectors, or a
                `tf.data.Dataset` or any iterable (e.g. a generator)
                yielding such blocks (streamed: the covariance is
                accumulated, not the data).
            power: float or None. Whitening power; `None` uses the layer's.
            units: int or None. Output dimension. It can only be given
                before the layer is built, or equal to the built one.

        From no more vectors than input dimensions the estimate is
        under-determined: a warning is logged and the layer's `shrinkage`
        decides what is learned (see the class docstring).
        """
        if units is not None:
            if self.built and units != self.kernel.shape[1]:
                raise ValueError(
                    f"ShiftPCA is already built with {self.kernel.shape[1]} "
                    f"output units; cannot adapt to units={units}. Create "
                    f"the layer with ShiftPCA(units={units})."
                )
            self.units = units
        power = self.power if power is None else float(power)
        mean, cov, count = mean_and_covariance(_iter_batches(data))
        if not count:
            raise ValueError("ShiftPCA.adapt() received no vectors.")
        if not self.built:
            self.build((None, mean.shape[0]))
        if mean.shape[0] != self.input_dim:
            raise ValueError(
                f"adapt() data has dimension {mean.shape[0]}, the layer "
                f"expects {self.input_dim}."
            )
        kernel, bias = functional.whitening_from_moments(
            mean,
            cov,
            self.kernel.shape[1],
            power,
            self.epsilon,
            self._shrinkage_for(count),
        )
        self.kernel.assign(kernel.astype("float32"))
        self.bias.assign(bias.astype("float32"))

    def _shrinkage_for(self, count):
        """The shrinkage intensity for `count` vectors; warns when too few.

        Under-determined means `count <= input dimension`: then the sample
        covariance is always singular (rank <= count - 1), whatever the
        data. Above that it is left to the data, exactly as before.
        """
        dim = self.input_dim
        if self.shrinkage == "auto":
            shrinkage = 1.0 if count <= dim else 0.0
        else:
            shrinkage = self.shrinkage or 0.0
        if count > dim:
            return shrinkage
        if not shrinkage:
            action = (
                f"whitening it anyway (shrinkage={self.shrinkage!r}): the "
                "training vectors come out equidistant (their descriptors "
                "nearly orthogonal) and directions without data are scaled "
                "by the epsilon floor"
            )
        elif shrinkage == 1.0:
            action = "learning shift + PCA without whitening (shrinkage=1.0)"
        else:
            action = (
                f"shrinking the covariance toward isotropy by {shrinkage:g}"
            )
        logger.warning(
            "ShiftPCA %r: %d vectors for %d dimensions: the covariance is "
            "singular (rank <= %d), so PCA-whitening cannot be estimated; "
            "%s. Learn it from more than %d vectors (more images, or "
            "larger ones) to whiten.",
            self.name,
            count,
            dim,
            count - 1,
            action,
            dim,
        )
        return shrinkage

    def compute_output_shape(self, input_shape):
        units = self.units or input_shape[-1]
        return tuple(input_shape[:-1]) + (units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "power": self.power,
                "epsilon": self.epsilon,
                "shrinkage": self.shrinkage,
            }
        )
        return config
