"""keras_cnn.utils.compat: one canary per private Keras, TensorFlow or MediaPipe name keras_cnn uses.

Each test fails when a release renames what the function reads or changes what it means; the function's
docstring says what it is for. Then fix that function (and only it), and raise the bound in pyproject.toml.
"""
import importlib.util
import inspect
import sys

import numpy as np
import pytest

from keras_cnn.utils import compat

# ---------------------------------------------------------------------------------------------------- Keras


def _dense_model():
    import keras

    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4)(inputs)))


def test_ema_pairs_are_the_models_variables_and_the_averages_keras_writes_into_them():
    import keras

    model = _dense_model()
    optimizer = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5)
    optimizer.build(model.trainable_variables)
    for _ in range(3):
        optimizer.apply_gradients([(np.ones(v.shape, "float32"), v) for v in model.trainable_variables])
    pairs = compat.ema_pairs(optimizer)
    assert [variable for variable, _ in pairs] == list(model.trainable_variables)
    averages = [np.array(average) for _, average in pairs]
    assert not np.allclose(averages[0], np.array(pairs[0][0]))  # an average lags behind
    optimizer.finalize_variable_values(model.trainable_variables)  # Keras's own use of the averages
    for (variable, _), average in zip(pairs, averages):
        np.testing.assert_array_equal(np.array(variable), average)


def test_variable_index_is_the_position_among_the_built_variables():
    import keras

    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in ((2,), (3,), (4,))]
    optimizer = keras.optimizers.SGD()
    optimizer.build(variables)
    assert [compat.variable_index(optimizer, variable) for variable in reversed(variables)] == [2, 1, 0]


def test_nested_layers_reach_inside_nested_models_and_leave_the_model_out():
    import keras

    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="inner_dense")], name="inner")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="outer_dense")(inner(inputs)), name="outer")
    names = [layer.name for layer in compat.nested_layers(model)]
    assert {"inner", "inner_dense", "outer_dense"} <= set(names) and "outer" not in names


def test_producer_is_the_layer_whose_call_made_the_tensor():
    import keras

    inputs = keras.Input((3,))
    dense = keras.layers.Dense(2)
    assert compat.producer(dense(inputs)) is dense
    assert isinstance(compat.producer(inputs), keras.layers.InputLayer)
    assert compat.producer(np.zeros(3)) is None


def test_first_call_gives_the_outer_tensors_around_a_nested_model():
    import keras

    inner_inputs = keras.Input((3,))
    inner = keras.Model(inner_inputs, keras.layers.Dense(2)(inner_inputs), name="inner")
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(3)(inputs)
    called = inner(hidden)
    keras.Model(inputs, keras.layers.Dense(1)(called))
    (before,), (after,) = compat.first_call(inner)
    assert before is hidden and after is called
    assert inner.input is inner_inputs  # why: a nested functional model's `input` is its own


def test_keras_reads_the_optimizers_ema_momentum_at_every_step():
    """TorchSGD's ramped EMA (`ema_ramp_steps`) replaces the public `ema_momentum` by a property: Keras must read
    it at each step, not copy it once."""
    import keras

    from keras_cnn.training.optimizers import TorchSGD

    averages = {}
    for ramp in (None, 10**6):  # the ramp makes the momentum ~0: the average follows the weight
        variable = keras.Variable(np.zeros(1, "float32"))
        optimizer = TorchSGD(1.0, momentum=0.0, l2=0.0, use_ema=True, ema_momentum=0.9, ema_ramp_steps=ramp)
        optimizer.build([variable])
        for _ in range(3):
            optimizer.apply_gradients([(np.ones(1, "float32"), variable)])
        averages[ramp] = float(np.array(compat.ema_pairs(optimizer)[0][1])[0])
    assert averages[10**6] == pytest.approx(-3.0, abs=1e-2) and averages[None] > -2.0
    assert optimizer.get_config()["ema_momentum"] == 0.9


# ----------------------------------------------------------------------------------------------- TensorFlow


def test_custom_gradients_released_removes_what_tf_custom_gradient_registered():
    import tensorflow as tf
    from tensorflow.python.framework import ops

    registry = ops._gradient_registry._registry  # the dict compat.custom_gradients_released edits
    assert isinstance(registry, dict)

    @tf.custom_gradient
    def double(x):
        return 2 * x, lambda dy: 2 * dy

    before = set(registry)
    with compat.custom_gradients_released():
        tf.function(double).get_concrete_function(tf.TensorSpec([2], tf.float32))
        added = set(registry) - before
        assert added and all(name.startswith("CustomGradient-") for name in added)
    assert not added & set(registry)


# ------------------------------------------------------------------------------------------------ MediaPipe


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="MediaPipe (the mobile extra)")
def test_mediapipes_writer_calls_the_version_module_compat_supplies():
    from keras_cnn.artifacts import metadata as tflite_metadata

    metadata, _ = tflite_metadata.mediapipe_modules()  # installs the module where the wheel lacks it
    module = sys.modules[compat.MEDIAPIPE_VERSION_MODULE]
    assert metadata._pywrap_metadata_version is module
    assert "_pywrap_metadata_version.GetMinimumMetadataParserVersion(" in inspect.getsource(metadata)
    if compat.mediapipe_version_module_missing():
        assert module.GetMinimumMetadataParserVersion is tflite_metadata.min_parser_version
