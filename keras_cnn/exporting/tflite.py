"""The TFLite side of `keras_cnn.exporting.pipeline`: the mobile model, conversion, metadata and int8 rescue.

* `mobile_model`: what a phone runs takes RGB frames and gives one score per label: a grayscale model gets an
  `RGBToGray` layer in front, a single sigmoid unit a `SigmoidToTwoClasses` layer after it.
* `convert`: TensorFlow's converter from the SavedModel's `serve` signature, built-in ops only.
* `with_metadata`: the image-classifier metadata MediaPipe Tasks reads (`keras_cnn.artifacts.metadata`), with the
  normalization that matches the file's real input.
* `variant`: one `.tflite` file's bytes, converted by either converter and carrying that metadata.
* `layer_errors` and `rescue`: TensorFlow's `QuantizationDebugger` measures each layer's int8 error; a rescue keeps
  the layers whose float version gives back the most accuracy in float (selective quantization) until the model
  is within the allowed accuracy drop.
"""
import contextlib
import re
import warnings

import numpy as np

from keras_cnn.artifacts import metadata as tflite_metadata
from keras_cnn.artifacts.artifact import SIGNATURE, interpreter

DEBUG_IMAGES = 100  # calibration images the quantization debugger runs to measure each layer's error


class ExportError(ValueError):
    """An export that cannot be shipped: a conversion failure, a Flex op, or a verification failure."""


def mobile_model(model):
    """`model` as a phone client runs it: taking RGB images (`RGBToGray` in front of a grayscale model) and giving
    one probability per label (`SigmoidToTwoClasses` after a single sigmoid unit); `model` itself if it does."""
    import keras

    from keras_cnn.models.layers import RGBToGray, SigmoidToTwoClasses

    *size, channels = model.input_shape[1:]
    if channels == 3 and model.output_shape[-1] > 1:
        return model
    image = keras.Input((*size, 3), name="image")
    outputs = model(RGBToGray(name="rgb_to_gray")(image) if channels == 1 else image)
    if model.output_shape[-1] == 1:
        outputs = SigmoidToTwoClasses(name="two_classes")(outputs)
    return keras.Model(image, outputs, name=model.name)


def variant(saved_model, model, quantization, io, calibration, converter="saved_model", *, name, class_names, card):
    """One `.tflite` file's bytes: converted by `converter` ("saved_model": TensorFlow's converter on the SavedModel
    `saved_model`; "keras": Keras's exporter on `model`, the same model), `with_metadata`."""
    model_bytes = (convert_with_keras(model, quantization, io, calibration) if converter == "keras"
                   else convert(saved_model, quantization, io, calibration))
    return with_metadata(model_bytes, name=name, class_names=class_names, card=card)


def convert(saved_model, quantization, io, calibration):
    """TFLite flatbuffer bytes from the SavedModel's `serve` signature, built-in ops only.

    `io` is the int8 model's input and output type: "uint8" (raw pixels: what cameras and MediaPipe give) or
    "int8"; `calibration` the float32 images that set int8's ranges.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[SIGNATURE])
    _configure(converter, _settings(quantization, io, calibration))
    return _run(converter, quantization)


def convert_with_keras(model, quantization, io, calibration):
    """The same conversion through Keras's own exporter, `model.export(path, format="litert")`, given the same
    converter settings (Keras's default would also allow Flex ops, which phones do not run)."""
    import tempfile

    settings = _settings(quantization, io, calibration)
    with tempfile.TemporaryDirectory(prefix="keras-litert-") as folder:
        path = f"{folder}/model.tflite"
        try:
            model.export(path, format="litert", verbose=False, **settings)
        except Exception as error:  # ConverterError and ValueError, as from the converter itself
            _raise_conversion_error(error, quantization)
        with open(path, "rb") as handle:
            return handle.read()


def layer_errors(saved_model, calibration):
    """Each quantized layer's int8 error on calibration images, worst first: [{tensor, op, rmse_per_scale}].

    TensorFlow's `QuantizationDebugger` measure: the root-mean-square difference between a layer's float output
    and its dequantized int8 output, in quantization steps (pure rounding gives 1/sqrt(12) ~ 0.29). It is blind
    to one kind of damage: an outlier channel that stretches a layer's per-tensor range makes the step coarse
    for every other channel while the error stays small in steps; `rescue` therefore ranks layers by accuracy."""
    import csv
    import io

    import tensorflow as tf

    with _debugger_warnings_off():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=_converter(saved_model, "int8", calibration),
            debug_dataset=_samples(calibration[:DEBUG_IMAGES]))
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = [{"tensor": row["tensor_name"], "op": row["op_name"],
             "rmse_per_scale": round(float(np.sqrt(float(row["mean_squared_error"])) / float(row["scale"])), 4)}
            for row in csv.DictReader(io.StringIO(dump.getvalue())) if float(row["scale"])]
    return sorted(rows, key=lambda row: -row["rmse_per_scale"])


def rescue(saved_model, calibration, layers, accuracy, target):
    """Selective quantization: keep layers in float until `accuracy(model bytes) >= target`.

    Each layer of `layers` is first kept in float alone and the accuracy it gives back measured (its
    sensitivity); then the 1, 2, 4, ... most sensitive are kept in float together, up to all of them.
    Returns (model bytes or None if even that falls short, the float layers, [{tensor, accuracy_pct}] per
    layer). The file keeps float32 input and output around its int8 body, which MediaPipe accepts."""
    sensitivity = [{"tensor": name, "accuracy_pct": accuracy(_selective(saved_model, calibration, [name]))}
                   for name in layers]
    ranked = [row["tensor"] for row in sorted(sensitivity, key=lambda row: -row["accuracy_pct"])]
    for count in sorted({min(2 ** i, len(ranked)) for i in range(len(ranked).bit_length() + 1)}):  # 1, 2, 4, ...
        try:
            candidate = _selective(saved_model, calibration, ranked[:count])
        except ValueError:  # the debugger's "check if the quantized model is in debug mode": nothing left in int8
            break
        if accuracy(candidate) >= target:
            return candidate, ranked[:count], sensitivity
    return None, ranked, sensitivity


def _selective(saved_model, calibration, denied):
    import tensorflow as tf

    with _debugger_warnings_off():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=_converter(saved_model, "int8", calibration), debug_dataset=_samples(calibration[:1]),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denied))
    return debugger.get_nondebug_quantized_model()


@contextlib.contextmanager
def _debugger_warnings_off():
    """The quantization debugger runs TensorFlow's own tf.lite.Interpreter, which warns that it is deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        yield


def card(name, class_names, shape, run_name, author, license):
    """What the TFLite metadata says about the model: description, author, licence, and as its version the name of
    the run folder it was trained in (`run_name`; "1" for a model object)."""
    return {"description": _description(name, class_names, shape, run_name), "author": author, "license": license,
            "version": run_name or "1"}


def _description(name, class_names, shape, run_name):
    height, width, _ = shape
    source = f" ({run_name})" if run_name else ""
    return (f"{name}{source}: a keras-cnn image classifier of {len(class_names)} classes; takes {height}x{width} "
            "RGB images with raw pixel values, gives class probabilities.")


def input_dtype(model_bytes):
    return np.dtype(_input_detail(model_bytes)["dtype"]).name


def with_metadata(model_bytes, *, name, class_names, card):
    """`model_bytes` carrying image-classifier metadata (`card` gives description, version, author, licence) where
    MediaPipe, which writes it, is installed; else `model_bytes` as they are."""
    if not tflite_metadata.available():
        return model_bytes
    detail = _input_detail(model_bytes)
    _, height, width, _ = detail["shape"]
    return tflite_metadata.add_metadata(model_bytes, name=name, class_names=class_names, image_size=(height, width),
                                        normalization=_normalization(detail), **card)


def flex_ops(message):
    """The TensorFlow op names a TFLite converter error says need the Flex (select TF ops) fallback."""
    listed = re.findall(r"TF Select ops: ([^\n]+)", message)
    named = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)
    ops = [op.strip() for line in listed for op in line.split(",")] + named
    return sorted(set(op for op in ops if op))


def _converter(saved_model, quantization, calibration):
    """A converter for the quantization debugger: the settings of `convert`, float input and output."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[SIGNATURE])
    _configure(converter, _settings(quantization, None, calibration))
    return converter


def _settings(quantization, io, calibration):
    """TFLiteConverter attributes for a variant: built-in ops only, never SELECT_TF_OPS (a Flex model does not
    run on phones); `io` None keeps an int8 model's float input and output."""
    import tensorflow as tf

    builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantization == "int8" else tf.lite.OpsSet.TFLITE_BUILTINS
    settings = {"target_spec": {"supported_ops": [builtins]}, "allow_custom_ops": False}
    if quantization != "float32":
        settings["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        settings["target_spec"]["supported_types"] = [tf.float16]
    if quantization == "int8":
        settings["representative_dataset"] = _samples(calibration)
        if io is not None:
            settings["inference_input_type"] = settings["inference_output_type"] = tf.as_dtype(io)
    return settings


def _configure(converter, settings):
    for name, value in settings.items():
        if name == "target_spec":
            for key, spec in value.items():
                setattr(converter.target_spec, key, spec)
        else:
            setattr(converter, name, value)


def _samples(images):
    return lambda: ([images[i:i + 1]] for i in range(len(images)))


def _run(converter, quantization):
    try:
        return converter.convert()
    except Exception as error:  # ConverterError, and the ValueErrors of the quantizer
        _raise_conversion_error(error, quantization)


def _raise_conversion_error(error, quantization):
    from keras_cnn.utils.io import first_line

    ops = flex_ops(str(error))
    if ops:
        raise ExportError(f"TFLite {quantization}: the model uses TensorFlow ops that TFLite's built-in "
                          f"op set lacks and that would need the Flex delegate: {', '.join(ops)}") from error
    lines = [line.strip() for line in str(error).splitlines() if "error:" in line]
    raise ExportError(f"TFLite {quantization} conversion failed: {lines[0] if lines else first_line(error)}") from error


def _normalization(input_detail):
    """(mean, std) such that the input tensor takes (pixel - mean) / std: (0, 1) for float inputs, which take
    raw pixels, and the quantization's (-zero_point * scale, scale) for integer inputs."""
    scale, zero_point = input_detail["quantization"]
    return (0.0, 1.0) if not scale else (-zero_point * scale, scale)


def _input_detail(model_bytes):
    return interpreter(model_content=bytes(model_bytes)).get_input_details()[0]

