"""Mobile budgets: measure a built, untrained model and refuse it before it costs any training.

Every trial's model is measured right after it is built: parameters and
multiply-accumulates from `keras_cnn.describe`, then the size of its float32
TFLite flatbuffer and its batch-1 latency in the LiteRT interpreter on this
machine. None of these depend on the weights' values, so a model over a budget is
refused (`FailedTrialError`, with its numbers kept in the trial's record) before
training; the cheap limits (params, MACs) are checked before the conversion.

The TFLite model is converted the way `keras_cnn.export` prepares one (its float32
`inference_model`: no augmentation, training=False), with TensorFlow's
`TFLiteConverter.from_keras_model` and built-in ops only, and timed with
`keras_cnn.prediction`'s loader and `latency_ms`, as the export report times it.
`keras_cnn.exporting` has no public model-to-bytes function; its own artifacts come
from a SavedModel and measured within 0.1 % (22 bytes on 47 KB) of these.
"""
import contextlib
import io
import os
import tempfile

import keras_tuner
import numpy as np

BUDGETS = {  # budget argument -> the measured quantity it limits
    "max_params": "params",
    "max_macs": "macs",
    "max_tflite_kb": "tflite_kb",
    "max_latency_ms": "latency_ms",
}
CHEAP = ("params", "macs")
LATENCY_RUNS = 50


def check(budgets):
    """The budgets that are set, validated: {argument: limit}."""
    unknown = sorted(set(budgets) - set(BUDGETS))
    if unknown:
        raise ValueError(f"unknown budget {unknown[0]!r}; budgets are {', '.join(BUDGETS)}. "
                         f"Received: {unknown[0]}={budgets[unknown[0]]!r}")
    for name, limit in budgets.items():
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
            raise ValueError(f"`{name}` must be a number > 0. Received: {name}={limit!r}")
    return {name: limit for name, limit in budgets.items() if limit is not None}


def measure_and_enforce(model, budgets, record):
    """Fill `record` with the model's numbers; raise FailedTrialError at the first budget it breaks."""
    from keras_cnn import describe

    summary = describe(model)
    record.update(params=summary.total_params, macs=summary.total_macs)
    _enforce(record, budgets, CHEAP)
    record.update(tflite(model))
    _enforce(record, budgets, ("tflite_kb", "latency_ms"))


def _enforce(record, budgets, quantities):
    for name, limit in budgets.items():
        quantity = BUDGETS[name]
        if quantity in quantities and record[quantity] > limit:
            raise keras_tuner.errors.FailedTrialError(
                f"over budget: {quantity} {record[quantity]:,} > {name} {limit:,}")


def tflite(model, runs=LATENCY_RUNS):
    """{"tflite_kb", "latency_ms"} of the model's float32 TFLite flatbuffer (median of `runs` batch-1 calls)."""
    import tensorflow as tf

    from keras_cnn.exporting import inference_model
    from keras_cnn.prediction import latency_ms, load_artifact

    rebuild = inference_model(model)
    # An untrained model has many equal constants (zero biases, unit BatchNorm scales) that the converter
    # stores once; nudging every weight makes them distinct, so the size is the trained model's to the byte.
    rng = np.random.default_rng(0)
    rebuild.set_weights([w + rng.uniform(1e-3, 2e-3, w.shape).astype(w.dtype) if np.issubdtype(w.dtype, np.floating)
                         else w for w in rebuild.get_weights()])
    converter = tf.lite.TFLiteConverter.from_keras_model(rebuild)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # what runs on a phone, no Flex
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the temporary SavedModel's signature
        flatbuffer = converter.convert()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as handle:
            handle.write(flatbuffer)
        image = rng.uniform(0, 255, rebuild.input_shape[1:]).astype(np.float32)
        latency = latency_ms(load_artifact(path), image, runs)
    return {"tflite_kb": round(len(flatbuffer) / 1024, 1), "latency_ms": round(latency, 4)}
