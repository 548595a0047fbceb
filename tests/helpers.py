"""Shared test helpers (keras-hub style `run_layer_test`)."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output=None,
    atol=1e-6,
):
    """Checks a layer's serialization, symbolic/traced/eager calls, saving.

    Every assertion is made on the reconstructed or reloaded object, never
    on the original.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_data: NumPy array `(B, H, W, C)` or `(B, ..., C)`.
        expected_output: optional NumPy array the eager output must equal.
        atol: tolerance for output comparisons.

    Returns:
        The eager output of the reloaded layer, as NumPy.
    """
    layer = layer_cls(**init_kwargs)
    eager = keras.ops.convert_to_numpy(layer(input_data))

    # Config and serialization round trips give an equivalent layer.
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(revived) is layer_cls
    assert revived.get_config() == config
    if layer.weights:
        if not revived.built:
            revived.build(input_data.shape)
        revived.set_weights(layer.get_weights())
    revived_out = keras.ops.convert_to_numpy(revived(input_data))
    np.testing.assert_allclose(revived_out, eager, atol=atol)
    if expected_output is not None:
        np.testing.assert_allclose(revived_out, expected_output, atol=atol)

    # Symbolic call with unknown spatial dims: shapes agree with
    # compute_output_shape.
    spec_shape = (None,) * (input_data.ndim - 1) + (input_data.shape[-1],)
    inputs = keras.Input(batch_shape=spec_shape)
    symbolic = revived(inputs)
    assert tuple(symbolic.shape) == tuple(
        revived.compute_output_shape(spec_shape)
    )
    static_shape = revived.compute_output_shape(input_data.shape)
    assert tuple(eager.shape) == tuple(
        d if d is not None else e for d, e in zip(static_shape, eager.shape)
    )

    # Traced with unknown height and width (tf.function, None dims).
    traced = tf.function(
        lambda x: revived(x),
        input_signature=[tf.TensorSpec(spec_shape, tf.float32)],
    )
    traced_out = traced(tf.constant(input_data, tf.float32)).numpy()
    np.testing.assert_allclose(traced_out, eager, atol=atol)

    # Saved inside a model as .keras and reloaded: same outputs.
    model = keras.Model(inputs, symbolic)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layer.keras")
        model.save(path)
        reloaded = keras.models.load_model(path)
    reloaded_out = keras.ops.convert_to_numpy(reloaded(input_data))
    np.testing.assert_allclose(reloaded_out, eager, atol=atol)
    return reloaded_out
