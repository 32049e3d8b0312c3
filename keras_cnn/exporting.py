"""Export a trained model for serving and mobile, and prove each artifact matches it.

`export(run_dir_or_model)` writes, by default to `RUN_DIR/export/`:

* `saved_model/`: a SavedModel with the serving signature `serve` (input `image`, float32 raw pixels
  [0, 255], NHWC, any batch size; output `probabilities`);
* `<model>_<quant>.tflite` for each of float32, float16, dynamic (dynamic-range) and int8 (full
  integer, int8 or uint8 input and output), converted from that SavedModel with TFLite's built-in
  ops only: an op that would need the Flex delegate fails the export and is named;
* `<model>.onnx` through Keras's ONNX exporter (the optional `.[onnx]` extra);

and next to them `labels.txt`, one JSON sidecar per artifact (input shape and dtype, value range,
quantization scale and zero-point, class names, source run) and `export_report.json`.

What is exported is `inference_model(model)`: a float32 rebuild of the trained architecture with the
trained weights, without the `augment` layer, called with `training=False`. That removes the two ways
a direct export goes wrong: random augmentation ops and training-mode BatchNorm in the graph, and the
bfloat16/float16 ops of a mixed-precision model, which TFLite's built-in kernels do not have.

Nothing reaches `out_dir` unverified. Every artifact is written to a staging folder, loaded in its own
runtime (TensorFlow, the LiteRT interpreter, ONNX Runtime) through `keras_cnn.prediction`'s loaders and
run on up to 2,000 held-out test images. A float32 artifact whose probabilities differ from the
rebuild's by more than 1e-4 raises `ExportError` and is deleted; quantized artifacts whose top-1
accuracy drops by more than `max_accuracy_drop` points are flagged in the report. Only then, with their
sidecars, labels.txt and the report written next to them, are the files renamed into place, so a failed
or interrupted export leaves the previous files untouched.
"""
import dataclasses
import importlib.util
import os
import shutil
import sys
import tempfile

import numpy as np

from keras_cnn.io import make_folder, write_json, write_text
from keras_cnn.prediction import SIGNATURE, keras_artifact, latency_ms, load_artifact, sidecar_path

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
INTEGER_IO = ("int8", "uint8")
PARITY_TOLERANCE = 1e-4  # max |probability difference| of a float32 artifact from the float32 rebuild
MAX_TEST_IMAGES = 2000
AUGMENT_LAYER = "augment"
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
REPORT_FILE = "export_report.json"
_RANDOM_IMAGES = 256  # parity check of a bare model exported without data


class ExportError(ValueError):
    """An export that cannot be shipped: a conversion failure, a Flex op, or a verification failure."""


@dataclasses.dataclass
class ExportReport:
    """What was exported and how each artifact measured against the Keras model; print it for a table."""

    model: str
    source: str  # the run folder, or None for a model object
    out_dir: str
    precision: str  # dtype policy the source model was trained under
    source_agreement_pct: float  # top-1 agreement of the float32 rebuild with the source model
    test_data: str
    test_images: int
    calibration_images: int
    max_accuracy_drop: float
    rows: list

    def to_dict(self):
        return dataclasses.asdict(self)

    def table(self, color=False):
        """The rows as a text table; flagged rows in red when `color`."""
        header = ("artifact", "format", "quant", "size KB", "top-1 %", "agree %", "max |dp|", "ms (b=1)", "")
        lines = [header]
        for row in self.rows:
            lines.append((row["artifact"], row["format"], row["quantization"], _fixed(row["size_kb"], 1),
                          _fixed(row["accuracy_pct"], 2), _fixed(row["agreement_pct"], 2),
                          f"{row['max_abs_diff']:.1e}", _fixed(row["latency_ms"], 2),
                          f"FLAG: top-1 -{row['accuracy_drop_pts']:.2f} pts" if row["flagged"] else ""))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        left = (0, 1, 2, 8)  # text columns; the numbers are right-aligned
        text = []
        for line, row in zip(lines, [None, *self.rows]):
            cells = [cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))]
            out = "  ".join(cells).rstrip()
            text.append(f"\033[31m{out}\033[0m" if color and row and row["flagged"] else out)
        text.append(f"{self.test_images} {self.test_data}; agreement and max |dp| against the float32 Keras "
                    f"rebuild of {self.model}, which agrees with the {self.precision} source model on "
                    f"{self.source_agreement_pct:.2f}% of them.")
        return "\n".join(text)

    def __str__(self):
        return self.table()


def export(source, out_dir=None, formats=("saved_model", "tflite"), quantize=("float32", "int8"), *, data=None,
           io="int8", max_accuracy_drop=1.0, calibration_samples=300, test_samples=MAX_TEST_IMAGES,
           latency_runs=50, verbose=True):
    """Export a run folder or a Keras model, verify every artifact, and return an `ExportReport`.

    Args:
        source: a run folder written by `keras_cnn.train`, or a `keras.Model` following the model contract.
        out_dir: where the artifacts go; default `RUN_DIR/export` (required for a model object).
        formats: any of "saved_model", "tflite", "onnx" (a tuple or a comma-separated string).
        quantize: TFLite variants, any of "float32", "float16", "dynamic", "int8".
        data: calibration and test data: an `ImageData`, a `load_data` spec or an (x, y) tuple;
            default the run's own data. int8 needs it; without it other formats are checked on random images.
        io: input/output type of the int8 TFLite model, "int8" or "uint8" (raw pixels, for image pipelines).
        max_accuracy_drop: top-1 accuracy points a quantized model may lose before it is flagged.
        calibration_samples: distinct training images for int8 calibration, 100 to 500.
        test_samples: held-out test images for verification (at most 2,000).
        latency_runs: batch-1 runs whose median is the reported latency.
        verbose: print the table (flagged rows in red on a terminal).
    """
    formats = _choices("formats", formats, FORMATS)
    quantize = _choices("quantize", quantize, QUANTIZATIONS)
    if io not in INTEGER_IO:
        raise ValueError(f"io must be one of {INTEGER_IO}. Received: io={io!r}")
    if not 100 <= calibration_samples <= 500:
        raise ValueError("calibration_samples must be in [100, 500]. "
                         f"Received: calibration_samples={calibration_samples!r}")
    if not 1 <= test_samples <= MAX_TEST_IMAGES:
        raise ValueError(f"test_samples must be in [1, {MAX_TEST_IMAGES}]. Received: test_samples={test_samples!r}")
    if "onnx" in formats:
        _require_onnx()
    model, name, class_names, run_dir, precision, image_data = _resolve(source, data)
    if out_dir is None and run_dir is None:
        raise ValueError("out_dir is required when exporting a model object. Received: out_dir=None")
    out_dir = os.path.abspath(out_dir or os.path.join(run_dir, "export"))
    tflite = [q for q in quantize if "tflite" in formats]
    if "int8" in tflite and image_data is None:
        raise ExportError("int8 quantization needs calibration images from the training data, and none are "
                          "available: pass data= (an ImageData, a load_data spec or (x, y)). Received: data=None")

    rebuild = inference_model(model)
    shape = tuple(rebuild.input_shape[1:])
    x_test, y_test, test_data = _test_set(image_data, shape, test_samples)
    reference = keras_artifact(rebuild, class_names, name)
    expected = reference.probabilities(x_test)
    source_agreement = _check_rebuild(model, expected, x_test, precision)
    calibration = _calibration_set(image_data, shape, calibration_samples) if "int8" in tflite else None

    staging = tempfile.mkdtemp(prefix=".export-", dir=make_folder(out_dir, "out_dir"))
    try:
        staged = _stage(rebuild, name, staging, formats, tflite, io, calibration)
        rows = [_measure(reference, "keras", "float32", x_test, y_test, expected, latency_runs,
                         os.path.join(run_dir, "model.keras") if run_dir else None)]
        artifacts = []
        for fmt, quantization, path in staged:
            artifact = load_artifact(path)
            rows.append(_measure(artifact, fmt, quantization, x_test, y_test, expected, latency_runs, path))
            _check_parity(rows[-1], len(x_test))
            artifacts.append((artifact, fmt, quantization))
        _flag(rows, max_accuracy_drop)
        report = ExportReport(name, os.path.abspath(run_dir) if run_dir else None, out_dir, precision,
                              source_agreement, test_data, len(x_test), 0 if calibration is None else len(calibration),
                              max_accuracy_drop, rows)
        _install(artifacts, staging, report, class_names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if verbose:
        print(report.table(color=sys.stdout.isatty()))
    return report


def inference_model(model):
    """A float32 copy of `model` for inference: every layer but `augment`, rebuilt under float32, trained weights."""
    import keras

    def float32_clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    def skip_augment(layer, *args, **kwargs):
        return args[0] if layer.name == AUGMENT_LAYER else layer(*args, **kwargs)

    rebuilt = keras.models.clone_model(model, clone_function=float32_clone, call_function=skip_augment)
    for layer in rebuilt.layers:
        if layer.weights:  # by name: the clone keeps the names (input layers may be renamed, but have no weights)
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt


def flex_ops(message):
    """The TensorFlow op names a TFLite converter error says need the Flex (select TF ops) fallback."""
    import re

    listed = re.findall(r"TF Select ops: ([^\n]+)", message)
    named = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)
    ops = [op.strip() for line in listed for op in line.split(",")] + named
    return sorted(set(op for op in ops if op))


def _resolve(source, data):
    """(model, name, class names, run folder or None, precision, ImageData or None) of a run folder or model."""
    import keras

    from keras_cnn.evaluation import check_compatible
    from keras_cnn import runs
    from keras_cnn.precision import model_precision

    if isinstance(source, keras.Model):
        model, name, run_dir, class_names = source, source.name, None, None
        image_data = _image_data(data)
    elif runs.is_run(source):
        run = runs.as_run(source)
        model, run_dir, class_names = run.model, run.path, run.class_names
        name = run.config.get("model", model.name)
        image_data = _image_data(data) if data is not None else _run_data(run)
    else:
        raise ValueError(f"export takes a run (folder) or a keras.Model. Received: source={type(source).__name__}")
    if image_data is not None:
        check_compatible(model, image_data)
    numbered = [str(i) for i in range(max(model.output_shape[-1], 2))]
    class_names = list(class_names or (image_data.class_names if image_data else numbered))
    return model, name, class_names, run_dir, model_precision(model), image_data


def _image_data(data):
    from keras_cnn.data import ImageData, load_data

    return data if data is None or isinstance(data, ImageData) else load_data(data)


def _run_data(run):
    """The data a run was trained on, split with its training seed (None if its config names none)."""
    if run.data_spec is None:
        return None
    try:
        return run.load_data()
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"cannot load the data of {run.path} for calibration and verification; pass data= "
                         f"to use other data. {error}") from None


def _test_set(image_data, shape, limit):
    """(x, y or None, description): the held-out test split, or random images when there is no data."""
    if image_data is None:
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (min(limit, _RANDOM_IMAGES), *shape)).astype(np.float32)
        return x, None, "random images (no data given: parity only, no accuracy)"
    if not image_data.sizes["test"]:
        raise ExportError(f"{image_data.name} has no test split to verify the export on. "
                          f"Received: data={image_data.name!r}")
    x, y = image_data.arrays("test", image_shape=shape, limit=limit)
    return x, y, f"test images of {image_data.name}"


def _calibration_set(image_data, shape, samples):
    """Distinct un-augmented training images (validation if there is no train split), float32 [0, 255]."""
    split = "train" if image_data.sizes["train"] else "val"
    x, _ = image_data.arrays(split, image_shape=shape, limit=samples)
    return x


def _check_rebuild(model, expected, x, precision):
    """Top-1 agreement (%) of the source model with its float32 rebuild; a float32 source must match exactly."""
    original = keras_artifact(model).probabilities(x)
    difference = float(np.abs(original - expected).max())
    if precision == "float32" and difference > PARITY_TOLERANCE:
        raise ExportError(f"the float32 rebuild of {model.name} differs from the model by {difference:.2e}; "
                          "its layers do not rebuild from their configs")
    return _agreement(original, expected)


def _stage(rebuild, name, staging, formats, tflite, io, calibration):
    """Write every requested artifact into `staging`: [(format, quantization, path)]."""
    saved_model = os.path.join(staging, "saved_model")
    if "saved_model" in formats or tflite:  # TFLite converts from the SavedModel
        _write_saved_model(rebuild, saved_model)
    staged = [("saved_model", "float32", saved_model)] if "saved_model" in formats else []
    for quantization in tflite:
        path = os.path.join(staging, f"{name}_{quantization}.tflite")
        with open(path, "wb") as handle:
            handle.write(_convert_tflite(saved_model, quantization, io, calibration))
        staged.append(("tflite", quantization, path))
    if "onnx" in formats:
        staged.append(("onnx", "float32", _write_onnx(rebuild, os.path.join(staging, f"{name}.onnx"))))
    return staged


def _install(artifacts, staging, report, class_names):
    """Write the sidecars, labels.txt and the report into `staging` next to the verified artifacts, then move
    everything into `report.out_dir`: a writer that fails leaves the previous export as it was."""
    files = []
    for artifact, fmt, quantization in artifacts:
        final = os.path.join(report.out_dir, os.path.basename(artifact.path))
        write_json(sidecar_path(artifact.path), _sidecar(artifact, final, fmt, quantization, report, class_names))
        files += [artifact.path, sidecar_path(artifact.path)]
    write_text(os.path.join(staging, "labels.txt"), "".join(f"{c}\n" for c in class_names))
    write_json(os.path.join(staging, REPORT_FILE), report.to_dict())
    for staged in [*files, os.path.join(staging, "labels.txt"), os.path.join(staging, REPORT_FILE)]:
        _move(staged, os.path.join(report.out_dir, os.path.basename(staged)), staging)


def _write_saved_model(model, path):
    """The rebuild as a SavedModel whose `serve` signature maps `image` to `probabilities`, training=False."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=lambda image: {OUTPUT_NAME: model(image, training=False)},
        input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(path, verbose=False)


def _convert_tflite(saved_model, quantization, io, calibration):
    """TFLite flatbuffer bytes from the SavedModel's `serve` signature, built-in ops only."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[SIGNATURE])
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantization == "int8" else tf.lite.OpsSet.TFLITE_BUILTINS
    converter.target_spec.supported_ops = [builtins]  # never SELECT_TF_OPS: a Flex model does not run on phones
    converter.allow_custom_ops = False
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
        converter.inference_input_type = converter.inference_output_type = tf.as_dtype(io)
    try:
        return converter.convert()
    except Exception as error:  # ConverterError, and the ValueErrors of the quantizer
        ops = flex_ops(str(error))
        if ops:
            raise ExportError(f"TFLite {quantization}: the model uses TensorFlow ops that TFLite's built-in "
                              f"op set lacks and that would need the Flex delegate: {', '.join(ops)}") from None
        raise ExportError(f"TFLite {quantization} conversion failed: {_first_error_line(error)}") from None


def _require_onnx():
    missing = [module for module in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, which are not installed: "
                          f'pip install -e ".[onnx]". Received: formats=onnx')


def _write_onnx(model, path):
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=INPUT_NAME)
    model.export(path, format="onnx", verbose=False, input_signature=[spec])
    return path


def _measure(artifact, fmt, quantization, x, y, expected, latency_runs, path):
    """One report row: size, top-1 accuracy, agreement and max |difference| against `expected`, latency."""
    probabilities = artifact.probabilities(x)
    return {
        "artifact": os.path.basename(path) if path else artifact.path,
        "format": fmt,
        "quantization": quantization,
        "size_kb": round(_size_kb(path), 1) if path and os.path.exists(path) else None,
        "accuracy_pct": None if y is None else round(float(np.mean(probabilities.argmax(1) == y) * 100), 3),
        "agreement_pct": _agreement(probabilities, expected),
        "max_abs_diff": float(np.abs(probabilities - expected).max()),
        "latency_ms": round(latency_ms(artifact, x[0], latency_runs), 4),
        "accuracy_drop_pts": None,
        "flagged": False,
    }


def _check_parity(row, count):
    if row["quantization"] == "float32" and not row["max_abs_diff"] <= PARITY_TOLERANCE:
        raise ExportError(f"{row['artifact']} does not match the Keras model: its probabilities differ by up to "
                          f"{row['max_abs_diff']:.2e} (tolerance {PARITY_TOLERANCE:g}) on {count} test images; "
                          "nothing was written")


def _flag(rows, max_accuracy_drop):
    """Mark quantized rows whose top-1 accuracy is more than `max_accuracy_drop` points below Keras's."""
    keras_accuracy = rows[0]["accuracy_pct"]
    for row in rows[1:]:
        if keras_accuracy is not None and row["quantization"] != "float32":
            row["accuracy_drop_pts"] = round(keras_accuracy - row["accuracy_pct"], 3)
            row["flagged"] = row["accuracy_drop_pts"] > max_accuracy_drop


def _sidecar(artifact, final, fmt, quantization, report, class_names):
    """Everything an app needs to feed the artifact and read its output, without keras_cnn."""
    from keras_cnn import __version__

    return {
        "artifact": os.path.basename(final),
        "format": fmt,
        "quantization": quantization,
        "model": report.model,
        "input": {**artifact.tensors["input"], "layout": "NHWC", "value_range": [0, 255],
                  "preprocessing": "RGB or grayscale to match the channels, resized to the input height and width; "
                                   "raw pixel values (the model rescales them); quantized inputs take "
                                   "round(pixel / scale + zero_point)"},
        "output": {**artifact.tensors["output"], "meaning": "class probabilities (softmax), in the order of "
                                                            "class_names; quantized: scale * (q - zero_point)"},
        "class_names": class_names,
        "labels": "labels.txt",
        "signature": SIGNATURE if fmt in ("saved_model", "tflite") else None,
        "source": {"run": report.source, "model": report.model, "precision": report.precision},
        "keras_cnn_version": __version__,
    }


def _move(staged, final, staging):
    """Move a staged file or folder over `final`; an old folder is swapped out first, then deleted."""
    if os.path.isdir(staged) and os.path.exists(final):
        old = os.path.join(staging, ".replaced")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old)
    else:
        os.replace(staged, final)


def _choices(name, values, allowed):
    values = tuple(v.strip() for v in values.split(",")) if isinstance(values, str) else tuple(values)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"{name} must be one or more of {', '.join(allowed)}. Received: {name}={values!r}")
    return tuple(dict.fromkeys(values))


def _agreement(probabilities, expected):
    return round(float(np.mean(probabilities.argmax(1) == expected.argmax(1)) * 100), 3)


def _size_kb(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 1024
    return os.path.getsize(path) / 1024


def _fixed(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def _first_error_line(error):
    lines = [line.strip() for line in str(error).splitlines() if "error:" in line] or str(error).splitlines() or [""]
    return lines[0] or type(error).__name__
