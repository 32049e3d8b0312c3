"""Export: SavedModel, TFLite (float32, float16, dynamic, int8) and ONNX, each verified against Keras.

One tiny SmallCNN (8x8x1, a quarter of the width) is trained for two epochs on the digits and exported
once for the shared checks; the traps (augmentation layers, mixed precision, Flex ops) and the failure
paths each export their own small model. The artifacts are checked here with the runtimes directly
(LiteRT interpreter, a fresh Python process for the SavedModel), not only through keras_cnn.predict.
"""
import dataclasses
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import keras_cnn
from keras_cnn import export, predict  # the package's functions, resolved before the modules below
from keras_cnn.artifacts import runs
from keras_cnn.exporting.pipeline import ExportConfig, ExportError, flex_ops, inference_model
from keras_cnn.exporting.verification import flag
from keras_cnn.utils.io import load_model

export_module = importlib.import_module("keras_cnn.exporting.pipeline")
SHAPE = (8, 8, 1)
MOBILE = (8, 8, 3)  # every .tflite takes RGB; the digits model converts to gray inside
CLASS_NAMES = [f"d{i}" for i in range(10)]
ALL_QUANT = ("float32", "float16", "dynamic", "int8")


def tiny_model(**overrides):
    return keras_cnn.build("small", input_shape=SHAPE, width=0.25, num_classes=10, **overrides)


def litert(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def run_litert(interpreter, x, sidecar):
    """Run a TFLite model the way a mobile app would: quantize with the sidecar's numbers only."""
    spec_in, spec_out = sidecar["input"], sidecar["output"]
    index_in = interpreter.get_input_details()[0]["index"]
    index_out = interpreter.get_output_details()[0]["index"]
    x = np.repeat(x, sidecar["input"]["shape"][-1] // x.shape[-1], axis=-1)
    interpreter.resize_tensor_input(index_in, [len(x), *x.shape[1:]])
    interpreter.allocate_tensors()
    if spec_in["quantization"]:
        q = spec_in["quantization"]
        x = np.round(x / q["scale"] + q["zero_point"])
    interpreter.set_tensor(index_in, x.astype(spec_in["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(index_out).astype(np.float32)
    if spec_out["quantization"]:
        q = spec_out["quantization"]
        y = (y - q["zero_point"]) * q["scale"]
    return y


@pytest.fixture(scope="module")
def report(run_dir):
    return export(run_dir, formats=("saved_model", "tflite"), quantize=ALL_QUANT, latency_runs=3, verbose=False)


@pytest.fixture(scope="module")
def test_images(digits):
    return digits.arrays("test", image_shape=SHAPE)


@pytest.fixture(scope="module")
def expected(run_dir, test_images):
    """The float32 rebuild's probabilities on the test images: the parity reference."""
    model = keras_cnn.load(run_dir).model
    return np.asarray(inference_model(model).predict(test_images[0], verbose=0))


@pytest.fixture(scope="module")
def mobile_expected(run_dir, test_images):
    """What the .tflite files are converted from: the rebuild taking RGB, on the test images repeated into RGB."""
    from keras_cnn.exporting.tflite import mobile_model

    model = mobile_model(inference_model(keras_cnn.load(run_dir).model))
    return np.asarray(model.predict(np.repeat(test_images[0], 3, axis=-1), verbose=0))


def read_sidecar(path):
    with open(path) as handle:
        return json.load(handle)


def test_artifacts_sidecars_labels_and_report_land_in_run_export(run_dir, report):
    out = run_dir / "export"
    names = ["saved_model", *(f"small_{q}.tflite" for q in ALL_QUANT)]
    assert os.path.isfile(out / "saved_model" / "saved_model.pb")
    for name in names:
        assert (out / name).exists() and (out / (os.path.splitext(name)[0] + ".json")).is_file()
    assert (out / "labels.txt").read_text().splitlines() == CLASS_NAMES
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no staging or temporary files
    on_disk = read_sidecar(out / "export_report.json")
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    assert [row["artifact"] for row in report.rows] == ["model.keras", *names]
    assert report.test_images == 359 and report.calibration_images == 300 and report.out_dir == str(out)
    table = str(report)
    assert all(name in table for name in names) and "top-1 %" in table and "\033[" not in table


def test_float32_artifacts_match_keras_within_1e4_and_quantized_ones_are_measured(report):
    rows = {row["artifact"]: row for row in report.rows}
    for name in ("saved_model", "small_float32.tflite"):
        assert rows[name]["max_abs_diff"] <= 1e-4 and rows[name]["agreement_pct"] == 100.0
        assert rows[name]["accuracy_pct"] == rows["model.keras"]["accuracy_pct"]
    int8 = rows["small_int8.tflite"]
    assert 90 <= int8["agreement_pct"] <= 100 and int8["accuracy_pct"] > 50
    assert int8["accuracy_drop_pts"] == pytest.approx(rows["model.keras"]["accuracy_pct"] - int8["accuracy_pct"])
    assert int8["flagged"] == (int8["accuracy_drop_pts"] > 1.0)
    assert rows["small_int8.tflite"]["size_kb"] < rows["small_float32.tflite"]["size_kb"]
    assert all(row["latency_ms"] > 0 for row in report.rows)


@pytest.mark.parametrize("quantization", ALL_QUANT)
def test_each_tflite_runs_in_litert_with_the_sidecar_quantization(run_dir, report, test_images, mobile_expected,
                                                                 quantization):
    expected = mobile_expected
    out = run_dir / "export"
    sidecar = read_sidecar(out / f"small_{quantization}.json")
    probabilities = run_litert(litert(out / f"small_{quantization}.tflite"), test_images[0], sidecar)
    agreement = np.mean(probabilities.argmax(1) == expected.argmax(1))
    if quantization == "float32":
        np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    else:
        assert agreement >= 0.9
    integer = quantization == "int8"
    assert sidecar["input"]["dtype"] == ("uint8" if integer else "float32")
    assert (sidecar["input"]["quantization"] is not None) == integer
    assert (sidecar["output"]["quantization"] is not None) == integer


def test_sidecar_tells_an_app_everything(run_dir, report):
    sidecar = read_sidecar(run_dir / "export" / "small_int8.json")
    assert sidecar["input"]["shape"] == [None, *MOBILE] and sidecar["input"]["value_range"] == [0, 255]
    assert sidecar["input"]["quantization"]["scale"] > 0 and "zero_point" in sidecar["input"]["quantization"]
    assert sidecar["output"]["shape"] == [None, 10] and sidecar["class_names"] == CLASS_NAMES
    assert sidecar["labels"] == "labels.txt" and sidecar["signature"] == "serve"
    assert sidecar["source"] == {"run": str(run_dir), "model": "small", "precision": "float32"}
    assert read_sidecar(run_dir / "export" / "saved_model.json")["input"]["dtype"] == "float32"


def test_saved_model_signature_runs_in_a_fresh_process(run_dir, report, test_images, expected, tmp_path):
    np.save(tmp_path / "x.npy", test_images[0][:50])
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serve']\n"
        "out = serve(image=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], out['probabilities'].numpy())\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(run_dir / "export" / "saved_model"),
                             str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected[:50], atol=1e-5)


def test_tflite_input_resizes_to_batch_7(run_dir, report, test_images, mobile_expected):
    interpreter = litert(run_dir / "export" / "small_float32.tflite")
    detail = interpreter.get_input_details()[0]
    assert list(detail["shape_signature"]) == [-1, *MOBILE]
    interpreter.resize_tensor_input(detail["index"], [7, *MOBILE], strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.repeat(test_images[0][:7], 3, axis=-1))
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert output.shape == (7, 10)
    np.testing.assert_allclose(output, mobile_expected[:7], atol=1e-4)


def test_uint8_io_is_the_default_and_takes_raw_pixels(run_dir, report, test_images, mobile_expected):
    sidecar = read_sidecar(run_dir / "export" / "small_int8.json")
    assert sidecar["input"]["dtype"] == "uint8" and sidecar["output"]["dtype"] == "uint8"
    assert sidecar["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}  # pixels go in as they are
    probabilities = run_litert(litert(run_dir / "export" / "small_int8.tflite"), test_images[0], sidecar)
    assert np.mean(probabilities.argmax(1) == mobile_expected.argmax(1)) >= 0.9


def test_int8_io_on_request(tmp_path, run_dir, digits, test_images):
    model = keras_cnn.load(run_dir).model  # trained: an untrained model's near-uniform outputs flip at random
    report = export(model, tmp_path, formats="tflite", quantize="int8", data=digits, io="int8", latency_runs=1,
                    verbose=False)
    sidecar = read_sidecar(tmp_path / "small_int8.json")
    assert sidecar["input"]["dtype"] == "int8" and sidecar["output"]["dtype"] == "int8"
    probabilities = run_litert(litert(tmp_path / "small_int8.tflite"), test_images[0], sidecar)
    reference = inference_model(model).predict(test_images[0], verbose=0)
    assert np.mean(probabilities.argmax(1) == reference.argmax(1)) >= 0.9
    assert report.source is None and sidecar["source"]["run"] is None
    assert report.rows[1]["client"]["status"].startswith("not loadable: int8 input")


def test_augmentation_layers_are_left_out_and_the_export_is_deterministic(tmp_path, digits, test_images):
    """Trap 1: exported as is, random augmentation ops would reach the converter."""
    model = tiny_model(augment="strong", flip=False)
    assert "augment" in [layer.name for layer in model.layers]
    assert "augment" not in [layer.name for layer in inference_model(model).layers]
    arrays = digits.arrays("train", image_shape=SHAPE)  # an (x, y) tuple is split as load_data splits it
    report = export(model, tmp_path, formats="tflite", quantize="float32", data=arrays, latency_runs=1,
                    verbose=False)
    assert report.test_data == "test images of arrays" and report.test_images == round(0.2 * len(arrays[0]))
    sidecar = read_sidecar(tmp_path / "small_float32.json")
    interpreter = litert(tmp_path / "small_float32.tflite")
    first, second = (run_litert(interpreter, test_images[0][:20], sidecar) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, model(test_images[0][:20], training=False), atol=1e-4)


def test_a_mixed_bfloat16_model_exports_a_tflite_that_runs(tmp_path, digits, test_images):
    """Trap 2: the bfloat16 graph converts only with Flex ops; the float32 rebuild converts to built-ins."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny_model()
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("stage1_conv").compute_dtype == "bfloat16"
    report = export(model, tmp_path, formats="tflite", quantize="float32", data=digits, latency_runs=1,
                    verbose=False)
    assert report.precision == "mixed_bfloat16" and 0 <= report.source_agreement_pct <= 100
    assert "mixed_bfloat16 source model" in str(report)
    probabilities = run_litert(litert(tmp_path / "small_float32.tflite"), test_images[0][:20],
                               read_sidecar(tmp_path / "small_float32.json"))
    assert probabilities.shape == (20, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-4)
    assert read_sidecar(tmp_path / "small_float32.json")["source"]["precision"] == "mixed_bfloat16"
    model.save(tmp_path / "small.keras")  # a loaded Functional model says float32; its layers keep the policy
    again = export(load_model(tmp_path / "small.keras"), tmp_path / "loaded", formats="tflite", quantize="float32",
                   data=digits, latency_runs=1, verbose=False)
    assert again.precision == "mixed_bfloat16"


def test_int8_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match=r"int8 quantization needs calibration images.*Received: data=None"):
        export(tiny_model(), tmp_path, formats="tflite", quantize=("float32", "int8"), verbose=False)
    assert os.listdir(tmp_path) == []


def test_without_data_float_formats_are_checked_on_random_images(tmp_path):
    report = export(tiny_model(), tmp_path, formats="tflite", quantize="float32", class_names=CLASS_NAMES,
                    latency_runs=1, verbose=False)
    assert "random images" in report.test_data and report.rows[1]["accuracy_pct"] is None
    assert report.rows[1]["max_abs_diff"] <= 1e-4 and "-" in str(report)


def test_layers_with_cpu_training_kernels_export_like_any_other(tmp_path, monkeypatch):
    """Convolutions with the timed kernel gradient and the GELU with fused training kernels. The SavedModel
    leaves the training-only kernel gradient out, so exporting never times the methods."""
    from keras_cnn.models import layers

    monkeypatch.setattr(layers, "fastest_kernel_gradient", lambda *shapes: pytest.fail("export timed the methods"))
    model = keras_cnn.build("small", input_shape=SHAPE, width=4.0, num_classes=10,  # stage 2: 4x4 maps, 128 channels
                            activation="gelu")
    assert any(isinstance(layer, layers.Conv2D) and layer.times_kernel_gradient(layer.input.shape)
               for layer in model.layers)
    assert any(isinstance(layer, layers.GELU) and layer.uses_fused() for layer in model.layers)
    report = export(model, tmp_path, formats="saved_model,tflite", quantize="float32", class_names=CLASS_NAMES,
                    latency_runs=1, verbose=False)
    rows = {row["artifact"]: row for row in report.rows}
    assert rows["saved_model"]["max_abs_diff"] <= 1e-4 and rows["small_float32.tflite"]["max_abs_diff"] <= 1e-4


def test_a_run_whose_data_is_gone_says_to_pass_data(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    runs.Run(tmp_path / "run", config={"model": "small", "data": "folder:/nowhere"}).write_config()
    with pytest.raises(ValueError, match=r"cannot load the data of .*run .*pass data= .*Image folder not found"):
        export(tmp_path / "run", verbose=False)


def test_a_run_is_verified_on_the_test_split_of_its_training_seed(run_dir):
    run = keras_cnn.load(run_dir)
    run.config["arguments"] = {"seed": 3}  # keras_cnn.train splits the data with its seed
    x, _ = export_module._run_data(run).arrays("test")
    np.testing.assert_array_equal(x, keras_cnn.load_data("digits", seed=3).arrays("test")[0])
    assert not np.array_equal(x, keras_cnn.load_data("digits").arrays("test")[0])


def test_a_parity_failure_raises_and_leaves_no_artifact(tmp_path, digits, monkeypatch):
    convert = export_module.tflite_export.convert
    monkeypatch.setattr(export_module.tflite_export, "convert",
                        lambda saved_model, quantization, io, calibration: convert(saved_model, "dynamic", io, None))
    with pytest.raises(ExportError, match=r"small_float32.tflite does not match the Keras model.*tolerance 0.0001"):
        export(tiny_model(), tmp_path, formats=("saved_model", "tflite"), quantize="float32", data=digits,
               latency_runs=1, verbose=False)
    assert os.listdir(tmp_path) == []


def test_an_op_needing_flex_fails_the_export_and_is_named(tmp_path):
    import keras
    import tensorflow as tf

    class CumulativeProduct(keras.layers.Layer):  # tf.math.cumprod has no TFLite built-in kernel
        def call(self, x):
            return tf.math.cumprod(x, axis=-1)

    inputs = keras.Input(SHAPE)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(CumulativeProduct()(inputs)))
    with pytest.raises(ExportError, match=r"would need the Flex delegate: Cumprod$"):
        export(keras.Model(inputs, outputs), tmp_path, formats="tflite", quantize="float32", class_names=CLASS_NAMES,
               verbose=False)
    assert os.listdir(tmp_path) == []


def test_flex_ops_reads_both_converter_messages():
    message = ("error: 'tf.Erf' op is neither a custom op nor a flex op\n"
               "Some ops are not supported by the native TFLite runtime, you can enable TF kernels fallback "
               "using TF Select.\nTF Select ops: Conv2D, MaxPool\nDetails:\n\ttf.Conv2D(...)\n")
    assert flex_ops(message) == ["Conv2D", "Erf", "MaxPool"]
    assert flex_ops("error: 'tfl.conv_2d' op requires a tensor of rank 4") == []


@pytest.mark.parametrize("writer", ["_write_saved_model", "_write_tflite"])
def test_a_writer_failing_midway_leaves_the_previous_export_untouched(tmp_path, digits, monkeypatch, writer):
    model = tiny_model()
    arguments = dict(formats=("saved_model", "tflite"), quantize="float32", data=digits, latency_runs=1,
                     verbose=False)
    export(model, tmp_path, **arguments)
    before = {os.path.relpath(os.path.join(d, f), tmp_path): open(os.path.join(d, f), "rb").read()
              for d, _, files in os.walk(tmp_path) for f in files}
    original = getattr(export_module, writer)

    def half_written(*args):
        original(*args)  # the file is complete in the staging folder when the failure hits
        raise OSError("disk full")

    monkeypatch.setattr(export_module, writer, half_written)
    with pytest.raises(OSError, match="disk full"):
        export(model, tmp_path, **arguments)
    after = {os.path.relpath(os.path.join(d, f), tmp_path): open(os.path.join(d, f), "rb").read()
             for d, _, files in os.walk(tmp_path) for f in files}
    assert after == before


def test_onnx_artifact_matches_keras(tmp_path, digits):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    report = export(tiny_model(), tmp_path, formats="onnx", data=digits, latency_runs=1, verbose=False)
    assert report.rows[1]["artifact"] == "small.onnx" and report.rows[1]["max_abs_diff"] <= 1e-4
    assert read_sidecar(tmp_path / "small.json")["format"] == "onnx"


def test_onnx_without_its_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # find_spec then reports it missing
    with pytest.raises(ExportError, match=r'tf2onnx.*pip install -e "\.\[onnx\]"'):
        export(tiny_model(), tmp_path, formats="onnx", verbose=False)


@pytest.mark.parametrize("arguments, fragment", [
    (dict(formats="pdf"), "Received: formats=('pdf',)"),
    (dict(quantize="int4"), "Received: quantize=('int4',)"),
    (dict(io="float32"), "Received: io='float32'"),
    (dict(formats="tflite", quantize="float32"), "needs the class names"),  # a bare model without data or names
    (dict(formats="tflite", quantize="float32", class_names=["a", ""] + list("cdefghij")),
     "Received: class_names=['']"),
    (dict(test_samples=5000), "Received: test_samples=5000"),
    (dict(converter="onnx"), "Received: converter='onnx'"),
    (dict(calibration_samples=20), "Received: calibration_samples=20"),
    (dict(latency_runs=0), "Received: latency_runs=0"),
    (dict(max_accuracy_drop="1"), "Received: max_accuracy_drop='1'"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, arguments, fragment):
    with pytest.raises(ValueError) as error:
        export(tiny_model(), tmp_path, **arguments)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_the_settings_are_a_frozen_config_with_formats_and_quantize_as_tuples():
    config = ExportConfig(formats="saved_model,tflite", quantize=["int8", "float32", "int8"])
    assert config.formats == ("saved_model", "tflite") and config.quantize == ("int8", "float32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.io = "int8"


def test_the_config_has_export_s_arguments_and_defaults():
    arguments = list(inspect.signature(export).parameters.values())[1:]  # all but the source
    assert {field.name: field.default for field in dataclasses.fields(ExportConfig)} == \
        {argument.name: argument.default for argument in arguments}


@pytest.mark.parametrize("arguments", [dict(formats="pdf"), dict(test_samples=0), dict(latency_runs=1.5)])
def test_a_bad_setting_fails_the_config_as_it_fails_export(tmp_path, arguments):
    with pytest.raises(ValueError) as from_config:
        ExportConfig(out_dir=str(tmp_path), **arguments)
    with pytest.raises(ValueError) as from_export:
        export(tiny_model(), tmp_path, **arguments)
    assert str(from_config.value) == str(from_export.value) and "\n" not in str(from_config.value)


def test_a_model_object_needs_out_dir():
    with pytest.raises(ValueError, match="Received: out_dir=None"):
        export(tiny_model(), formats="tflite", quantize="float32")


def test_flagged_rows_are_red_on_a_terminal(report):
    rows = [dict(row) for row in report.rows]
    flag(rows, max_accuracy_drop=-100.0)  # every quantized row loses "too much"
    flagged = dataclasses.replace(report, rows=rows)
    assert [row["flagged"] for row in rows] == [False, False, False, True, True, True]
    colored = flagged.table(color=True).splitlines()
    assert sum(line.startswith("\033[31m") for line in colored) == 3 and "FLAG" in colored[len(rows)]
    assert "\033[" not in flagged.table(color=False)


def test_package_exposes_the_functions():
    assert keras_cnn.export is export and keras_cnn.predict is predict


def test_keras_s_own_exporter_is_an_option_with_the_same_checks(tmp_path, run_dir, digits):
    report = export(run_dir, tmp_path, formats="tflite", quantize=("float32", "int8"), converter="keras",
                    latency_runs=1, verbose=False)
    rows = {row["quantization"]: row for row in report.rows[1:]}
    assert rows["float32"]["max_abs_diff"] <= 1e-4 and rows["int8"]["agreement_pct"] >= 90
    assert all(row["client"]["status"] == "ok" and row["client"]["names_match"] for row in rows.values())
    assert read_sidecar(tmp_path / "small_int8.json")["input"]["dtype"] == "uint8"
