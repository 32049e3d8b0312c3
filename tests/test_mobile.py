"""Mobile export: the TFLite metadata inside each file, MediaPipe Tasks loading it alone, and the int8 rescue.

conftest's trained digits run (8x8x1) is exported once to all four TFLite variants; its files are copied
into a folder of their own, without labels.txt or sidecars, before MediaPipe's ImageClassifier loads them.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import keras_cnn
from keras_cnn.artifacts import metadata as tflite_metadata
from keras_cnn.artifacts import mobile_client
from keras_cnn.artifacts.prediction import load_artifact, predict
from keras_cnn.exporting.tflite import ExportError

ALL_QUANT = ("float32", "float16", "dynamic", "int8")
CLASS_NAMES = [f"d{i}" for i in range(10)]


@pytest.fixture(scope="module")
def report(run_dir):
    return keras_cnn.export(run_dir, formats="tflite", quantize=ALL_QUANT, latency_runs=1, author="Ada",
                            license="Apache-2.0", verbose=False)


@pytest.fixture(scope="module")
def alone(report, tmp_path_factory):
    """The .tflite files copied into an empty folder: what an app bundles."""
    folder = tmp_path_factory.mktemp("app")
    for quantization in ALL_QUANT:
        shutil.copy(os.path.join(report.out_dir, f"small_{quantization}.tflite"), folder)
    return folder


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


@pytest.mark.parametrize("quantization", ALL_QUANT)
def test_every_tflite_carries_the_metadata_mediapipe_reads(alone, quantization):
    metadata, files = tflite_metadata.read_metadata(read(alone / f"small_{quantization}.tflite"))
    assert metadata["name"] == "small" and metadata["author"] == "Ada" and metadata["license"] == "Apache-2.0"
    assert metadata["version"] and "10 classes" in metadata["description"]
    image = metadata["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert image["content"]["content_properties"] == {"color_space": "RGB", "default_size": {"width": 8,
                                                                                             "height": 8}}
    assert image["process_units"][0]["options"] == {"mean": [0.0], "std": [1.0]}  # raw pixels in
    score = metadata["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert score["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert files["labels.txt"].decode().splitlines() == CLASS_NAMES


@pytest.mark.parametrize("quantization", ALL_QUANT)
def test_mediapipe_loads_each_file_alone_and_agrees_with_litert(report, alone, digits, quantization):
    rows = {row["quantization"]: row for row in report.rows if row["format"] == "tflite"}
    client = rows[quantization]["client"]
    assert client["status"] == "ok" and client["names_match"] and client["client"].startswith("mediapipe ")
    assert client["agreement_pct"] >= (98.0 if quantization == "int8" else 99.5)
    x, _ = digits.arrays("test", image_shape=(8, 8, 3), limit=40)
    litert = load_artifact(alone / f"small_{quantization}.tflite")
    with mobile_client.Classifier(alone / f"small_{quantization}.tflite") as classifier:
        indices, names = classifier.top1(x)
    assert names == [CLASS_NAMES[i] for i in indices]
    assert np.mean(indices == litert.probabilities(x).argmax(1)) >= 0.95


def test_the_sidecar_says_what_the_metadata_says(report):
    with open(os.path.join(report.out_dir, "small_float32.json")) as handle:
        sidecar = json.load(handle)
    metadata, _ = tflite_metadata.read_metadata(read(os.path.join(report.out_dir, "small_float32.tflite")))
    options = metadata["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"][0]["options"]
    assert sidecar["metadata"]["normalization"] == options and sidecar["metadata"]["image_size"] == [8, 8]
    assert sidecar["input"]["shape"] == [None, 8, 8, 3] and sidecar["metadata"]["packed_files"] == ["labels.txt"]


def test_a_gray_model_takes_rgb_and_converts_with_the_loaders_weights():
    import tensorflow as tf

    from keras_cnn.exporting.tflite import mobile_model

    gray = keras_cnn.build("small", input_shape=(8, 8, 1), width=0.25, num_classes=10)
    rgb = mobile_model(gray)
    assert rgb.input_shape == (None, 8, 8, 3) and mobile_model(rgb) is rgb
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(rgb.predict(x, verbose=0), gray.predict(tf.image.rgb_to_grayscale(x), verbose=0),
                               atol=1e-6)


def test_the_metadata_bridge_is_still_needed():
    """Fails the day a MediaPipe wheel ships its metadata-version module again: then delete the bridge."""
    code = "from keras_cnn.utils import compat; print(compat.mediapipe_version_module_missing())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr[-1000:]


def test_min_parser_version_follows_the_schema_rules():
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    def version(subgraph, files=()):
        model = schema.ModelMetadataT()
        model.subgraphMetadata, model.associatedFiles = [subgraph], list(files)
        builder = flatbuffers.Builder(0)
        builder.Finish(model.Pack(builder), b"M001")
        return tflite_metadata.min_parser_version(builder.Output())

    def file(kind):
        associated = schema.AssociatedFileT()
        associated.name, associated.type = "f.txt", kind
        return associated

    assert version(schema.SubGraphMetadataT()) == "1.0.0"
    assert version(schema.SubGraphMetadataT(), [file(schema.AssociatedFileType.TENSOR_AXIS_LABELS)]) == "1.0.0"
    assert version(schema.SubGraphMetadataT(), [file(schema.AssociatedFileType.VOCABULARY)]) == "1.0.1"
    units = schema.SubGraphMetadataT()
    units.inputProcessUnits = []
    assert version(units) == "1.1.0"
    custom = schema.SubGraphMetadataT()
    custom.customMetadata = []
    assert version(custom, [file(schema.AssociatedFileType.SCANN_INDEX_FILE)]) == "1.5.0"


def test_non_ascii_long_and_a_thousand_class_names_load_in_mediapipe(tmp_path):
    import keras

    names = ["chat noir", "Straße", "猫", "x" * 300] + [f"class {i}" for i in range(996)]
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(1000, activation="softmax", name="predictions")(keras.layers.Flatten()(inputs))
    report = keras_cnn.export(keras.Model(inputs, outputs), tmp_path, formats="tflite", quantize="float32",
                              class_names=names, test_samples=20, latency_runs=1, verbose=False)
    assert report.rows[1]["client"]["names_match"] and report.rows[1]["client"]["agreement_pct"] == 100.0
    _, files = tflite_metadata.read_metadata(read(tmp_path / f"{report.model}_float32.tflite"))
    assert files["labels.txt"].decode("utf-8").splitlines() == names
    assert (tmp_path / "labels.txt").read_text(encoding="utf-8").splitlines() == names


def test_predict_through_mediapipe_refuses_a_file_without_metadata(tmp_path, run_dir):
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(_without_metadata(run_dir))
    with pytest.raises(ValueError, match=r"has no image-classifier metadata .*Received: artifact="):
        predict(bare, np.zeros((8, 8, 3)), client="mediapipe")
    with pytest.raises(ValueError, match=r"runs \.tflite files.*Received: artifact="):
        predict(run_dir, np.zeros((8, 8, 3)), client="mediapipe")
    with pytest.raises(ValueError, match=r"Received: client='tflite'"):
        predict(bare, np.zeros((8, 8, 3)), client="tflite")


def test_foreign_metadata_is_one_line(tmp_path, run_dir):
    """Labels for 3 classes on a 10-class model (MediaPipe itself loads it and names 7 classes ""): one line."""
    model_bytes = _without_metadata(run_dir)
    foreign = tflite_metadata.add_metadata(model_bytes, name="other", description="", version="1", author=None,
                                           license=None, class_names=["a", "b", "c"], image_size=(8, 8),
                                           normalization=(0, 1))
    path = tmp_path / "foreign.tflite"
    path.write_bytes(foreign)
    with pytest.raises(ValueError, match=r"packs 3 labels for a model of 10 outputs.*Received: artifact="):
        predict(path, np.zeros((8, 8, 3)), client="mediapipe")


def _without_metadata(run_dir):
    """A float32 TFLite file of the run's model taking RGB, with no metadata: what TensorFlow's converter gives."""
    import tensorflow as tf

    from keras_cnn.exporting.pipeline import inference_model
    from keras_cnn.exporting.tflite import mobile_model

    model = mobile_model(inference_model(keras_cnn.load(run_dir).model))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.fixture(scope="module")
def fragile_model(digits):
    """A digits classifier whose hidden activations int8 cannot hold: one extra unit always outputs 1e5 (and
    feeds nothing), so the layer's per-tensor int8 step is ~400 and the real activations (up to ~300) round away."""
    import keras

    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="predictions")(hidden))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(*digits.arrays("train"), epochs=15, batch_size=64, verbose=0)
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:, 0], bias[0] = 0.0, 1e5
    model.get_layer("hidden").set_weights([kernel, bias])
    out_kernel, out_bias = model.get_layer("predictions").get_weights()
    out_kernel[0] = 0.0
    model.get_layer("predictions").set_weights([out_kernel, out_bias])
    return model


def test_a_fragile_int8_model_is_flagged_and_rescued_with_its_float_layers_named(tmp_path, digits, fragile_model):
    model = fragile_model
    arguments = dict(formats="tflite", quantize="int8", data=digits, latency_runs=1, verbose=False)
    flagged = keras_cnn.export(model, tmp_path / "plain", **arguments)
    int8 = flagged.rows[1]
    assert int8["flagged"] and int8["accuracy_drop_pts"] > 5 and flagged.rescued_float_layers is None
    assert {"tensor", "op", "rmse_per_scale"} <= set(flagged.int8_layers[0])
    assert any("hidden" in layer["tensor"] for layer in flagged.int8_layers)
    rescued = keras_cnn.export(model, tmp_path / "rescued", rescue=True, **arguments)
    row = rescued.rows[1]
    assert not row["flagged"] and row["accuracy_drop_pts"] <= 1.0
    assert any("hidden" in name for name in rescued.rescued_float_layers)
    assert all((layer["accuracy_pct_in_float"] is None) == (layer["rmse_per_scale"] == 0)
               for layer in rescued.int8_layers)  # layers exact in int8 are not tried
    assert row["client"]["status"] == "ok" and row["client"]["names_match"]
    assert "rescued int8: kept in float" in str(rescued)
    assert os.path.getsize(tmp_path / "rescued" / f"{model.name}_int8.tflite") == pytest.approx(
        row["size_kb"] * 1024, abs=60)


def test_rescue_that_cannot_reach_the_drop_is_one_line(tmp_path, digits, fragile_model):
    model = fragile_model
    with pytest.raises(ExportError, match=r"even with every layer that int8 changes in float.*Received: rescue=True"):
        keras_cnn.export(model, tmp_path, formats="tflite", quantize="int8", data=digits, rescue=True,
                         max_accuracy_drop=-1.0, latency_runs=1, verbose=False)
    assert os.listdir(tmp_path) == []


def test_an_rgb_deeper_exports_four_files_that_mediapipe_loads(tmp_path):
    """The CIFAR-shaped case: `deeper` (32x32x3, random weights) on random RGB images, all four variants."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (300, 32, 32, 3)).astype("float32"), np.arange(300) % 10
    data = keras_cnn.load_data((x, y), val_fraction=0, test_fraction=0.34, class_names=[f"c{i}" for i in range(10)])
    model = keras_cnn.build("deeper", input_shape=(32, 32, 3), width=0.25, num_classes=10)
    report = keras_cnn.export(model, tmp_path, formats="tflite", quantize=ALL_QUANT, data=data,
                              calibration_samples=100, latency_runs=1, verbose=False)
    for row in report.rows[1:]:
        assert row["client"]["status"] == "ok" and row["client"]["names_match"]
        if row["quantization"] in ("float32", "float16"):
            assert row["client"]["agreement_pct"] >= 99.5


def test_a_single_sigmoid_unit_becomes_two_named_probabilities_on_the_phone(tmp_path, digits):
    x, y = digits.arrays("train")
    pairs = y < 2
    data = keras_cnn.load_data((x[pairs], y[pairs]), class_names=["zero", "one"])
    model = keras_cnn.build("small", input_shape=(8, 8, 1), width=0.25, num_classes=1)
    report = keras_cnn.export(model, tmp_path, formats="tflite", quantize=("float32", "int8"), data=data,
                              calibration_samples=100, latency_runs=1, verbose=False)
    rows = {row["quantization"]: row for row in report.rows[1:]}
    assert rows["float32"]["max_abs_diff"] <= 1e-4 and rows["float32"]["client"]["agreement_pct"] >= 99.5
    assert all(row["client"]["names_match"] for row in rows.values())
    _, files = tflite_metadata.read_metadata(read(tmp_path / "small_float32.tflite"))
    assert files["labels.txt"].decode().splitlines() == ["zero", "one"]
    assert load_artifact(tmp_path / "small_float32.tflite").tensors["output"]["shape"] == [None, 2]
