"""Every file keras-cnn writes, loaded in its own runtime: `load_artifact` and `keras_artifact` give an `Artifact`.

One loader per kind of artifact (a run folder or `model.keras`, a SavedModel folder, a `.tflite` file, a `.onnx`
file) turns it into an `Artifact`: a function from float32 images in raw pixel units [0, 255] at the artifact's
input (H, W, C) to class probabilities, plus its class names. Quantized TFLite inputs and outputs are converted
with the scale and zero-point stored in the model, exactly as a mobile app does. This module is the one owner of
loading: `predict` (`keras_cnn.artifacts.prediction`), evaluation and `keras_cnn.exporting.pipeline` load through
it, so what the export report measures is what `predict` and the CLI run, and code that measures a loaded
artifact (the export's `keras_cnn.exporting.verification`) calls `Artifact` methods only.
`keras_cnn.artifacts.mobile_client` gives an `Artifact` that runs MediaPipe's client instead.
"""
import dataclasses
import json
import os
from typing import Callable

import numpy as np

from keras_cnn.models import checkpoints
from keras_cnn.utils.io import LABELS_FILE, first_line, read_labels
from keras_cnn.utils.timing import median_seconds

_BATCH = 256  # images per runtime call when predicting many at once
WARMUP = 3  # untimed calls before a latency measurement
SIGNATURE = "serve"  # the SavedModel / TFLite signature keras_cnn.exporting.pipeline writes


@dataclasses.dataclass
class Artifact:
    """A loaded model in its own runtime: float32 (N, H, W, C) images in [0, 255] -> probabilities."""

    path: str
    kind: str  # "keras", "saved_model", "tflite" or "onnx"
    input_shape: tuple  # (H, W, C)
    class_names: list
    run: Callable = dataclasses.field(repr=False)  # one batch -> raw outputs, dequantized
    tensors: dict = dataclasses.field(default_factory=dict)  # {"input"/"output": name, shape, dtype, quantization}

    def probabilities(self, images):
        """Class probabilities for a float32 batch, in chunks; one sigmoid unit becomes [1 - p, p]."""
        images = np.asarray(images, dtype=np.float32)
        outputs = np.concatenate([self.run(images[i:i + _BATCH]) for i in range(0, len(images), _BATCH)])
        return np.concatenate([1.0 - outputs, outputs], axis=1) if outputs.shape[1] == 1 else outputs

    def latency_ms(self, image, runs):
        """Median wall time in ms of `runs` batch-1 calls on one image, after a warm-up."""
        batch = np.asarray(image, dtype=np.float32)[np.newaxis]
        return median_seconds(lambda: self.run(batch), runs, warmup=WARMUP) * 1000


def interpreter(model_path=None, model_content=None):
    """The LiteRT interpreter (`ai_edge_litert`), or TensorFlow's deprecated one when LiteRT is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    return Interpreter(model_path=model_path, model_content=model_content)


def sidecar_path(artifact_path):
    """The JSON sidecar next to an artifact: `small_int8.tflite` -> `small_int8.json`."""
    return os.path.splitext(os.path.normpath(str(artifact_path)))[0] + ".json"


def load_artifact(path):
    """Load `path` in its own runtime: run folder (or `Run`, or a shipped checkpoint "model:dataset") / `.keras`,
    SavedModel folder, `.tflite` or `.onnx`."""
    from keras_cnn.artifacts import runs

    if isinstance(path, runs.Run) or checkpoints.is_checkpoint_spec(path):
        run = runs.as_run(path)
        return keras_artifact(run.model, run.class_names, run.path)
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"artifact not found: {path}. Received: artifact={path!r}")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return _load_saved_model(path)
    if os.path.isdir(path) or path.endswith(".keras"):
        return _load_keras(path)
    if path.endswith(".tflite"):
        return _load_tflite(path)
    if path.endswith(".onnx"):
        return _load_onnx(path)
    raise ValueError(f"cannot tell what {path} is: expected a run folder, a .keras file, a SavedModel folder, "
                     f"a .tflite or an .onnx file. Received: artifact={path!r}")


def keras_artifact(model, class_names=None, path=None):
    """An in-memory Keras model as an `Artifact`: `model(x, training=False)` compiled once for any batch (a
    `tf.function` on TensorFlow, Keras's compiled `predict_on_batch` on the other backends)."""
    import keras

    input_shape = tuple(model.input_shape[1:])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        serve = tf.function(lambda x: model(x, training=False),
                            input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)])
    else:
        serve = model.predict_on_batch
    outputs = model.output_shape[-1]
    names = list(class_names) if class_names else _numbered(max(outputs, 2))
    tensors = {"input": _spec("image", model.input_shape, "float32"),
               "output": _spec("output", model.output_shape, "float32")}
    return Artifact(path or model.name, "keras", input_shape, names,
                    lambda x: np.asarray(serve(x), dtype=np.float32), tensors)


def _load_keras(path):
    from keras_cnn.artifacts import runs
    from keras_cnn.utils import io

    if os.path.isdir(path):
        run = runs.load(path)
        return keras_artifact(run.model, run.class_names, path)
    model = io.load_model(path)
    labels = os.path.join(os.path.dirname(os.path.abspath(path)), LABELS_FILE)
    return keras_artifact(model, read_labels(labels) if os.path.isfile(labels) else None, path)


def _load_saved_model(path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError) as error:  # a damaged saved_model.pb: "Cannot parse file ..."
        raise ValueError(f"cannot load the SavedModel {path}: it is damaged ({first_line(error)}); export it again. "
                         f"Received: artifact={path!r}") from error
    signatures = loaded.signatures
    name = SIGNATURE if SIGNATURE in signatures else "serving_default"
    if name not in signatures:
        raise ValueError(f"{path} has no {SIGNATURE!r} or 'serving_default' signature "
                         f"(it has {sorted(signatures)}). Received: artifact={path!r}")
    function = signatures[name]
    (input_name, input_spec), = function.structured_input_signature[1].items()
    (output_name, output_spec), = function.structured_outputs.items()

    def run(x):  # goes through `loaded`, which owns the variables the signature reads
        return loaded.signatures[name](**{input_name: tf.constant(x)})[output_name].numpy()

    tensors = {"input": _spec(input_name, input_spec.shape, "float32"),
          "output": _spec(output_name, output_spec.shape, "float32"), "signature": name}
    return _artifact(path, "saved_model", tuple(input_spec.shape[1:]), run, tensors)


def _load_tflite(path):
    try:
        runtime = interpreter(path)
        runtime.allocate_tensors()
    except (ValueError, RuntimeError) as error:  # "The model is not a valid Flatbuffer buffer", ...
        raise ValueError(f"cannot load {path}: it is not a valid TFLite model ({first_line(error)}); export it "
                         f"again. Received: artifact={path!r}") from error
    inputs, outputs = runtime.get_input_details(), runtime.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; predict runs image "
                         f"classifiers with one of each. Received: artifact={path!r}")
    (input_detail,), (output_detail,) = inputs, outputs
    in_scale, in_zero = input_detail["quantization"]
    out_scale, out_zero = output_detail["quantization"]
    in_dtype = input_detail["dtype"]

    def run(x):
        if runtime.get_input_details()[0]["shape"][0] != len(x):
            runtime.resize_tensor_input(input_detail["index"], [len(x), *x.shape[1:]], strict=True)
            runtime.allocate_tensors()
        if in_scale:
            info = np.iinfo(in_dtype)
            x = np.clip(np.round(x / in_scale + in_zero), info.min, info.max)
        runtime.set_tensor(input_detail["index"], x.astype(in_dtype))
        runtime.invoke()
        output = runtime.get_tensor(output_detail["index"]).astype(np.float32)
        return (output - out_zero) * out_scale if out_scale else output

    shape = tuple(int(d) for d in input_detail["shape_signature"])
    tensors = {"input": _spec(input_detail["name"], shape, np.dtype(in_dtype).name, in_scale, in_zero),
          "output": _spec(output_detail["name"], tuple(output_detail["shape_signature"]),
                          np.dtype(output_detail["dtype"]).name, out_scale, out_zero)}
    return _artifact(path, "tflite", shape[1:], run, tensors)


def _load_onnx(path):
    try:
        import onnxruntime
    except ImportError as error:
        raise ValueError(f'running {path} needs onnxruntime: pip install -e ".[onnx]". '
                         f"Received: artifact={path!r}") from error
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (input_,), (output,) = session.get_inputs(), session.get_outputs()

    def run(x):
        return session.run([output.name], {input_.name: x})[0]

    tensors = {"input": _spec(input_.name, input_.shape, "float32"),
               "output": _spec(output.name, output.shape, "float32")}
    return _artifact(path, "onnx", tuple(input_.shape[1:]), run, tensors)


def _artifact(path, kind, input_shape, run, tensors):
    """An exported artifact with the class names of its sidecar, else of labels.txt beside it, else numbers."""
    sidecar, labels = sidecar_path(path), os.path.join(os.path.dirname(os.path.normpath(path)), LABELS_FILE)
    if os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8") as handle:
            class_names = json.load(handle)["class_names"]
    elif os.path.isfile(labels):
        class_names = read_labels(labels)
    else:
        class_names = _numbered(max(tensors["output"]["shape"][-1], 2))
    return Artifact(path, kind, tuple(int(d) for d in input_shape), class_names, run, tensors)


def _spec(name, shape, dtype, scale=0.0, zero_point=0):
    """Input or output description for sidecars: shape with None batch, dtype, quantization or None."""
    dims = [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in list(shape)[1:]]
    quantization = {"scale": float(scale), "zero_point": int(zero_point)} if scale else None
    return {"name": name, "shape": [None, *dims], "dtype": dtype, "quantization": quantization}


def _numbered(count):
    return [str(i) for i in range(count)]
