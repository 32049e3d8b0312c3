"""Mobile budgets: refuse a model before it costs any training where that is sound, and after it otherwise.

Every trial's model is measured right after it is built: parameters and
multiply-accumulates from `keras_cnn.describe`, which do not depend on the weights, so
a model over those budgets is refused (`FailedTrialError`, with its numbers kept in the
trial's record) before training. The size and latency budgets apply to the file the
search ships (`tuning.shipping`, measured after training). When it ships float32, the
untrained model's float32 flatbuffer is also measured before training: the shipped file
is that flatbuffer plus its metadata, so its size is a lower bound of the shipped size
and a model over the size budget is refused untrained (its latency is the same model's,
timed). The quantized variants are smaller than the float32 flatbuffer, so for them the
float32 numbers bound nothing and only the shipped file is checked.

The TFLite model is converted the way `keras_cnn.export` prepares one (its float32
`inference_model`: no augmentation, training=False), with TensorFlow's
`TFLiteConverter.from_keras_model` and built-in ops only, and timed with
`keras_cnn.artifacts.prediction`'s loader and `latency_ms`, as the export report times it.
`keras_cnn.exporting.pipeline` has no public model-to-bytes function; its own artifacts come
from a SavedModel and measured within 0.1 % (22 bytes on 47 KB) of these.
"""
import contextlib
import io
import os
import tempfile

import keras_tuner
import numpy as np

from keras_cnn.models.options import positive_float

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
        if limit is not None:
            positive_float(name, limit)
    return {name: limit for name, limit in budgets.items() if limit is not None}


def measure_and_enforce(model, budgets, record, float32_precheck=True):
    """Fill `record` with the untrained model's numbers; raise FailedTrialError at the first budget it breaks.
    `float32_precheck`: also convert it to float32 TFLite and check the size and latency budgets (sound when
    the search ships float32)."""
    from keras_cnn import describe

    summary = describe(model)
    record.update(params=summary.total_params, macs=summary.total_macs)
    _enforce(record, budgets, CHEAP)
    if float32_precheck:
        record.update(tflite(model))
        _enforce(record, budgets, ("tflite_kb", "latency_ms"), " (float32, before training)")


def enforce_shipped(record, budgets):
    """FailedTrialError if the shipped file (`record`'s ship_kb, ship_latency_ms) breaks the size or latency budget."""
    _enforce({"tflite_kb": record.get("ship_kb"), "latency_ms": record.get("ship_latency_ms")}, budgets,
             ("tflite_kb", "latency_ms"), f" ({record.get('ship', 'shipped')} file, trained)")


def _enforce(record, budgets, quantities, when=""):
    for name, limit in budgets.items():
        quantity = BUDGETS[name]
        if quantity in quantities and record[quantity] is not None and record[quantity] > limit:
            raise keras_tuner.errors.FailedTrialError(
                f"over budget: {quantity} {record[quantity]:,} > {name} {limit:,}{when}")


def tflite(model, runs=LATENCY_RUNS):
    """{"tflite_kb", "latency_ms"} of the model's float32 TFLite flatbuffer (median of `runs` batch-1 calls)."""
    import tensorflow as tf

    from keras_cnn.artifacts.prediction import latency_ms, load_artifact
    from keras_cnn.exporting.pipeline import inference_model

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
