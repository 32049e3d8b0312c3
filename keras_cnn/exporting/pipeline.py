"""Export a trained model for serving and mobile, and prove each artifact matches it.

`export(run_dir_or_model)` writes, by default to `RUN_DIR/export/`:

* `saved_model/`: a SavedModel with the serving signature `serve` (input `image`, float32 raw pixels
  [0, 255], NHWC, any batch size; output `probabilities`);
* `<model>_<quant>.tflite` for each of float32, float16, dynamic (dynamic-range) and int8 (full
  integer, uint8 or int8 input and output), converted with TFLite's built-in ops only (an op that would
  need the Flex delegate fails the export and is named), taking RGB images (a grayscale model converts
  them inside) and carrying the TFLite metadata that MediaPipe Tasks reads: image size, colour space,
  normalization, the labels packed in, the score range (`keras_cnn.exporting.tflite`);
* `<model>.onnx` through Keras's ONNX exporter (the optional `.[onnx]` extra);

and next to them `labels.txt`, one JSON sidecar per artifact (input shape and dtype, value range,
quantization scale and zero-point, class names, source run) and `export_report.json`.

`export` checks its settings once, into an `ExportConfig` (`keras_cnn.exporting.config`) that the steps read, and
is a pipeline whose steps it calls one after the other, each once: resolve the source (`_resolve`: the
model, its data and class names) and prepare what every artifact is made of (`_prepare`), stage the SavedModels
(`_stage`), convert the TFLite and ONNX files (`_convert`), load every artifact once through
`keras_cnn.artifacts.artifact`, the loader `predict` uses (`_load`), verify each (`_verify`, through
`keras_cnn.exporting.verification`), then install them with the report (`_install`).

What is exported is `inference_model(model)`: a float32 rebuild of the trained architecture with the
trained weights, without the `augment` layer, called with `training=False`. That removes the two ways
a direct export goes wrong: random augmentation ops and training-mode BatchNorm in the graph, and the
bfloat16/float16 ops of a mixed-precision model, which TFLite's built-in kernels do not have.

Nothing reaches `out_dir` unverified. Every artifact is written to a staging folder, loaded in its own
runtime (TensorFlow, the LiteRT interpreter, ONNX Runtime) by `keras_cnn.artifacts.artifact`'s loaders and
run on up to 2,000 held-out test images. A float32 artifact whose probabilities differ from the
rebuild's by more than 1e-4 raises `ExportError` and is deleted; quantized artifacts whose top-1
accuracy drops by more than `max_accuracy_drop` points are flagged in the report (with `rescue=True` an
int8 model is converted again with some layers in float until it is within the drop). Each `.tflite`
is also loaded from the file alone by MediaPipe Tasks' `ImageClassifier` (`keras_cnn.artifacts.mobile_client`): a
float32 file it classifies differently from LiteRT (below 99% top-1 agreement), or any file whose category
names are not the labels, fails the export like a parity failure. Only then, with their
sidecars, labels.txt and the report written next to them, are the files renamed into place, so a failed
or interrupted export leaves the previous files untouched.
"""
import dataclasses
import os
import shutil
import sys
import tempfile

import numpy as np

from keras_cnn.artifacts import metadata as tflite_metadata
from keras_cnn.artifacts.artifact import SIGNATURE, keras_artifact, load_artifact, sidecar_path
from keras_cnn.exporting import tflite as tflite_export
from keras_cnn.exporting import verification
from keras_cnn.exporting.config import MAX_TEST_IMAGES, ExportConfig
from keras_cnn.exporting.report import ExportReport, sidecar
from keras_cnn.exporting.tflite import ExportError, flex_ops  # noqa: F401  part of this module's interface
from keras_cnn.exporting.verification import flag, measure, verify
from keras_cnn.utils.io import LABELS_FILE, MODEL_FILE, make_folder, write_json, write_labels

AUGMENT_LAYER = "augment"
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
REPORT_FILE = "export_report.json"
_RANDOM_IMAGES = 256  # parity check of a bare model exported without data


def export(source, out_dir=None, formats=("saved_model", "tflite"), quantize=("float32", "int8"), *, data=None,
           io="uint8", max_accuracy_drop=1.0, rescue=False, calibration_samples=300, test_samples=MAX_TEST_IMAGES,
           latency_runs=50, class_names=None, author=None, license=None, converter="saved_model", verbose=True):
    """Export a run folder or a Keras model, verify every artifact, and return an `ExportReport`.

    Args:
        source: a run folder written by `keras_cnn.train`, or a `keras.Model` following the model contract.
        out_dir: where the artifacts go; default `RUN_DIR/export` (required for a model object).
        formats: any of "saved_model", "tflite", "onnx" (a tuple or a comma-separated string).
        quantize: TFLite variants, any of "float32", "float16", "dynamic", "int8".
        data: calibration and test data: an `ImageData`, a `load_data` spec or an (x, y) tuple;
            default the run's own data. int8 needs it; without it other formats are checked on random images.
        io: input/output type of the int8 TFLite model: "uint8" (raw pixels, what cameras and MediaPipe give)
            or "int8".
        max_accuracy_drop: top-1 accuracy points a quantized model may lose before it is flagged.
        rescue: when int8 loses more than `max_accuracy_drop`, keep layers in float until it does not
            (`tflite_export.rescue`).
        calibration_samples: distinct training images for int8 calibration, 100 to 500.
        test_samples: held-out test images for verification (at most 2,000).
        latency_runs: batch-1 runs whose median is the reported latency.
        class_names: the labels, in output order; default the run's, else the data's. TFLite files pack them.
        author, license: written into the TFLite metadata.
        converter: "saved_model" (TensorFlow's converter on the exported SavedModel) or "keras" (Keras's own
            `model.export(format="litert")`, given the same settings); see docs/mobile.md for how they compare.
        verbose: print the table (flagged rows in red on a terminal).
    """
    _check_backend(source)
    config = ExportConfig(out_dir=out_dir, formats=formats, quantize=quantize, data=data, io=io,
                          max_accuracy_drop=max_accuracy_drop, rescue=rescue, calibration_samples=calibration_samples,
                          test_samples=test_samples, latency_runs=latency_runs, class_names=class_names,
                          author=author, license=license, converter=converter, verbose=verbose)
    job = _resolve(source, config)
    _prepare(job)
    staging = tempfile.mkdtemp(prefix=".export-", dir=make_folder(job.out_dir, "out_dir"))
    try:
        staged, mobile = _stage(job, staging)
        staged += _convert(job, mobile, staging)
        keras_models, files = _load(job, staged)
        report, test = _verify(job, keras_models, files)
        if "int8" in job.tflite:
            _int8_errors_and_rescue(report, job, mobile, staging, test)
        _install(files, staging, report, job.class_names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if config.verbose:
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


@dataclasses.dataclass
class _Job:
    """One export as its steps share it: its settings, the source `_resolve` finds, what `_prepare` makes of it."""

    config: ExportConfig
    model: object  # the source keras.Model
    name: str
    class_names: list
    run_dir: str  # the run folder, or None for a model object
    precision: str  # the dtype policy the source was trained under
    image_data: object  # calibration and test data (an ImageData), or None
    out_dir: str  # `config.out_dir`, else the run's export folder
    tflite: tuple  # the TFLite variants to write
    rebuild: object = None  # `inference_model(model)`: what the artifacts are made of and measured against
    phone: object = None  # the rebuild as the .tflite files take it (`tflite_export.mobile_model`)
    test_images: tuple = None  # (x, y or None, description) of the images every artifact is verified on
    calibration: object = None  # int8's calibration images, or None
    card: dict = None  # what the TFLite metadata says about the model (`tflite_export.card`)


def _resolve(source, config):
    """The `_Job` of a run (folder) or model: what it is, its data and class names, where the artifacts go."""
    model, name, class_names, run, precision, image_data = _source(source, config.data, config.class_names)
    if config.out_dir is None and run is None:
        raise ValueError("out_dir is required when exporting a model object. Received: out_dir=None")
    tflite = tuple(q for q in config.quantize if "tflite" in config.formats)
    if "int8" in tflite and image_data is None:
        raise ExportError("int8 quantization needs calibration images from the training data, and none are "
                          "available: pass data= (an ImageData, a load_data spec or (x, y); --data SPEC on the "
                          "command line, e.g. --data folder:/path/to/cifar10). Received: data=None")
    if tflite:
        tflite_metadata.check_class_names(class_names)
    class_names = list(class_names or map(str, range(max(model.output_shape[-1], 2))))
    out_dir = os.path.abspath(config.out_dir or os.path.join(run.out_folder, "export"))
    return _Job(config, model, name, class_names, run.path if run else None, precision, image_data, out_dir, tflite)


def _source(source, data, class_names):
    """(model, name, class names, `Run` or None, precision, ImageData or None) of a run (folder) or model.

    Class names come from `class_names`, else the run, else the data; a bare model gets numbers only for
    formats that do not carry labels (TFLite metadata packs them: `tflite_metadata.check_class_names`)."""
    import keras

    from keras_cnn.artifacts import runs
    from keras_cnn.training.precision import model_precision

    if isinstance(source, keras.Model):
        model, name, run = source, source.name, None
        image_data = _image_data(data)
    elif runs.is_run(source):
        run = runs.as_run(source)
        model, class_names = run.model, class_names or run.class_names
        name = run.config.get("model", model.name)
        image_data = _image_data(data) if data is not None else _run_data(run)
    else:
        raise ValueError(f"export takes a run (folder) or a keras.Model. Received: source={type(source).__name__}")
    if image_data is not None:
        image_data.check_fits(model)
        image_data.report_skipped()
    class_names = class_names or (image_data.class_names if image_data else None)
    return model, name, class_names, run, model_precision(model), image_data


def _image_data(data):
    from keras_cnn.data.loading import ImageData, load_data

    return data if data is None or isinstance(data, ImageData) else load_data(data)


def _run_data(run):
    """The data a run was trained on, split with its training seed (None if its config names none)."""
    if run.data_spec is None:
        return None
    try:
        return run.load_data()
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"cannot load the data of {run.path} for calibration and verification; pass data= "
                         f"to use other data. {error}") from error


def _prepare(job):
    """Into `job`: the float32 rebuild and its mobile version, the test and calibration images, the metadata card."""
    config = job.config
    job.rebuild = inference_model(job.model)
    shape = tuple(job.rebuild.input_shape[1:])
    job.test_images = _test_set(job.image_data, shape, config.test_samples)
    job.calibration = (calibration_images(job.image_data, shape, config.calibration_samples)
                       if "int8" in job.tflite else None)
    run_name = os.path.basename(os.path.normpath(job.run_dir)) if job.run_dir else None
    job.card = tflite_export.card(job.name, job.class_names, shape, run_name, config.author, config.license)
    job.phone = tflite_export.mobile_model(job.rebuild) if job.tflite else job.rebuild


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


def tflite_bytes(model, quantization, calibration=None, *, class_names, io="uint8"):
    """The `.tflite` file `export` writes for a model object in one variant (metadata included where MediaPipe is
    installed), neither verified nor written: for measuring many candidate models, as a search does.
    `calibration`: int8's images, from `calibration_images`."""
    rebuild = inference_model(model)
    phone = tflite_export.mobile_model(rebuild)
    card = tflite_export.card(model.name, class_names, tuple(rebuild.input_shape[1:]), None, None, None)
    with tempfile.TemporaryDirectory(prefix=".tflite-") as staging:
        mobile = os.path.join(staging, "saved_model")
        _write_saved_model(phone, mobile)
        return tflite_export.variant(mobile, phone, quantization, io, calibration, name=model.name,
                                     class_names=class_names, card=card)


def calibration_images(image_data, shape, samples):
    """Distinct un-augmented training images (validation if there is no train split), float32 [0, 255], in RGB as
    the TFLite files take them (`tflite_export.mobile_model`)."""
    split = "train" if image_data.sizes["train"] else "val"
    x, _ = image_data.arrays(split, image_shape=shape, limit=samples)
    return np.repeat(x, 3 // x.shape[-1], axis=-1)


def _stage(job, staging):
    """The SavedModels in `staging`: the rebuild's if asked for, and the one the TFLite files convert from (the same
    one when the mobile model is the rebuild). Returns ([(format, quantization, path)], that one or None)."""
    saved_model = os.path.join(staging, "saved_model")
    staged = []
    if "saved_model" in job.config.formats:
        _write_saved_model(job.rebuild, saved_model)
        staged.append(("saved_model", "float32", saved_model))
    mobile = saved_model if job.phone is job.rebuild and staged else None  # the same model: reuse it
    if job.tflite and mobile is None:
        mobile = os.path.join(staging, ".mobile_saved_model")  # not installed
        _write_saved_model(job.phone, mobile)
    return staged, mobile


def _convert(job, mobile, staging):
    """The TFLite files (from the SavedModel `mobile`, or by Keras's exporter) and the ONNX file in `staging`:
    [(format, quantization, path)]."""
    staged = []
    for quantization in job.tflite:
        model_bytes = tflite_export.variant(mobile, job.phone, quantization, job.config.io, job.calibration,
                                            job.config.converter, name=job.name, class_names=job.class_names,
                                            card=job.card)
        staged.append(("tflite", quantization, _write_tflite(model_bytes, staging, job.name, quantization)))
    if "onnx" in job.config.formats:
        staged.append(("onnx", "float32", _write_onnx(job.rebuild, os.path.join(staging, f"{job.name}.onnx"))))
    return staged


def _load(job, staged):
    """Every artifact loaded once, in its own runtime, by `keras_cnn.artifacts.artifact`: ((the rebuild, the source
    model, the mobile rebuild of a gray model or None), [(artifact, format, quantization)] of the staged files)."""
    gray_phone = job.phone if job.tflite and job.rebuild.input_shape[-1] == 1 else None
    keras_models = (keras_artifact(job.rebuild, job.class_names, job.name), keras_artifact(job.model),
                    None if gray_phone is None else keras_artifact(gray_phone))
    return keras_models, [(load_artifact(path), fmt, quantization) for fmt, quantization, path in staged]


def _verify(job, keras_models, files):
    """(`ExportReport`, `TestSet`): the loaded Keras models and files measured and checked on the test images
    (`keras_cnn.exporting.verification`), quantized rows that lose accuracy flagged."""
    (rebuild, source, phone), (x, y, description) = keras_models, job.test_images
    latency_runs, max_accuracy_drop = job.config.latency_runs, job.config.max_accuracy_drop
    test, source_agreement = verification.test_set(x, y, latency_runs, rebuild, source, job.precision, phone)
    model_file = os.path.join(job.run_dir, MODEL_FILE) if job.run_dir else None
    rows = verification.verify_all(rebuild, files, test, job.class_names, model_file)
    flag(rows, max_accuracy_drop)
    calibration = 0 if job.calibration is None else len(job.calibration)
    return ExportReport(job.name, os.path.abspath(job.run_dir) if job.run_dir else None, job.out_dir, job.precision,
                        source_agreement, description, len(x), calibration, max_accuracy_drop, rows), test


def _write_tflite(model_bytes, staging, name, quantization):
    """The `.tflite` file of `model_bytes` in `staging`."""
    path = os.path.join(staging, f"{name}_{quantization}.tflite")
    with open(path, "wb") as handle:
        handle.write(model_bytes)
    return path


def _int8_errors_and_rescue(report, job, mobile, staging, test):
    """Per-layer int8 errors into the report; with `config.rescue` and a flagged int8 row, the rescued file replaces it.
    `mobile` is the SavedModel the TFLite files were converted from."""
    calibration = job.calibration
    report.int8_layers = tflite_export.layer_errors(mobile, calibration)
    index, row = next((i, row) for i, row in enumerate(report.rows) if row["quantization"] == "int8")
    if not (job.config.rescue and row["flagged"]):
        return
    path = os.path.join(staging, row["artifact"])

    def accuracy(model_bytes):
        model_bytes = tflite_export.with_metadata(model_bytes, name=job.name, class_names=job.class_names,
                                                  card=job.card)
        _write_tflite(model_bytes, staging, job.name, "int8")
        return measure(load_artifact(path), "tflite", "int8", test, path, timed=False)["accuracy_pct"]

    target = report.rows[0]["accuracy_pct"] - report.max_accuracy_drop
    layers = [layer["tensor"] for layer in report.int8_layers if layer["rmse_per_scale"]]  # 0: exact in int8
    model_bytes, kept, sensitivity = tflite_export.rescue(mobile, calibration, layers, accuracy, target)
    by_tensor = {entry["tensor"]: entry["accuracy_pct"] for entry in sensitivity}
    for layer in report.int8_layers:
        layer["accuracy_pct_in_float"] = by_tensor.get(layer["tensor"])
    if model_bytes is None:
        raise ExportError(f"int8 stays more than {report.max_accuracy_drop} points below Keras even with every "
                          "layer that int8 changes in float; export without int8 or allow a larger drop. "
                          "Received: rescue=True")
    accuracy(model_bytes)  # the file in staging is the rescued model again
    report.rows[index] = verify(load_artifact(path), "tflite", "int8", test, path, job.class_names)
    flag(report.rows, report.max_accuracy_drop)
    report.rescued_float_layers = kept


def _install(artifacts, staging, report, class_names):
    """Write the sidecars, labels.txt and the report into `staging` next to the verified artifacts, then move
    everything into `report.out_dir`: a writer that fails leaves the previous export as it was."""
    files = []
    for artifact, fmt, quantization in artifacts:
        final = os.path.join(report.out_dir, os.path.basename(artifact.path))
        write_json(sidecar_path(artifact.path), sidecar(artifact, final, fmt, quantization, report, class_names))
        files += [artifact.path, sidecar_path(artifact.path)]
    write_labels(os.path.join(staging, LABELS_FILE), class_names)
    write_json(os.path.join(staging, REPORT_FILE), report.to_dict())
    for staged in [*files, os.path.join(staging, LABELS_FILE), os.path.join(staging, REPORT_FILE)]:
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
    # The file serves inference: leaving out the training-only custom gradients (the timed kernel gradients
    # of `keras_cnn.models.layers.Conv2D`) spares tracing them, which would time the methods for nothing.
    archive.write_out(path, options=tf.saved_model.SaveOptions(experimental_custom_gradients=False), verbose=False)


def _write_onnx(model, path):
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name=INPUT_NAME)
    model.export(path, format="onnx", verbose=False, input_signature=[spec])
    return path


def _move(staged, final, staging):
    """Move a staged file or folder over `final`; an old folder is swapped out first, then deleted."""
    if os.path.isdir(staged) and os.path.exists(final):
        old = os.path.join(staging, ".replaced")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old)
    else:
        os.replace(staged, final)


def _check_backend(source):
    """Export converts with TensorFlow's converter, which takes TensorFlow models: refuse other backends in one
    line that says how a run trained on any backend exports."""
    import keras

    if keras.backend.backend() != "tensorflow":
        where = f"`keras-cnn export {source}`" if isinstance(source, (str, os.PathLike)) else "`keras-cnn export RUN`"
        raise ValueError(f"export runs on the tensorflow backend: save the model and export it from a TensorFlow "
                         f"process ({where} always does). Received: backend={keras.backend.backend()!r}")
