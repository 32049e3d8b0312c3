"""The run folder's one owner, `keras_cnn.artifacts.runs.Run`: what `train` returns is what `evaluate`, `export`, `predict`
and the CLI take, and a path works wherever a `Run` does."""
import json
import os
import shutil

import numpy as np
import pytest

import keras_cnn
from keras_cnn import cli
from keras_cnn.artifacts import runs

FAST = dict(epochs=1, batch_size=64, precision="float32", verbose=0, width=0.25, seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return keras_cnn.train("small", "digits", out=str(tmp_path_factory.mktemp("runs") / "small"), **FAST)


def test_train_returns_a_run_with_its_model_history_and_metrics(trained):
    assert isinstance(trained, runs.Run) and trained.model is not None
    assert len(trained.history["loss"]) == 1 and 0 <= trained.metrics.accuracy <= 1
    assert trained.class_names == [str(d) for d in range(10)] == runs.open_run(trained.path).class_names
    assert runs.open_run(trained.path).config == trained.config


def test_evaluate_takes_what_train_returns_and_its_path(trained):
    from_run = keras_cnn.evaluate(trained)
    from_path = keras_cnn.evaluate(trained.path)
    assert from_run.accuracy == pytest.approx(trained.metrics.accuracy)
    assert from_path.accuracy == pytest.approx(trained.metrics.accuracy)
    assert from_path.num_examples == trained.metrics.num_examples


def test_export_takes_what_train_returns(trained, tmp_path):
    report = keras_cnn.export(trained, tmp_path / "export", formats="tflite", quantize="float32", test_samples=50,
                              latency_runs=1, verbose=False)
    assert report.source == trained.path and os.path.isfile(tmp_path / "export" / "small_float32.tflite")
    assert report.rows[-1]["max_abs_diff"] <= 1e-4


def test_predict_takes_a_run(trained, digits):
    image = digits.arrays("test", limit=1)[0][0]
    (prediction,) = keras_cnn.predict(trained, [image], top=1)
    assert prediction.top[0][0] == trained.class_names[int(np.argmax(trained.model.predict(image[None], verbose=0)))]


def test_a_run_reloads_its_data_with_its_seed(trained):
    x = runs.open_run(trained.path).load_data().arrays("test")[0]
    np.testing.assert_array_equal(x, keras_cnn.load_data("digits", seed=3).arrays("test")[0])
    assert runs.open_run(trained.path).load_data(val_fraction=0.0).sizes["val"] == 0


def test_rerun_arguments_repeat_the_call(trained):
    arguments = runs.open_run(os.path.join(trained.path, runs.CONFIG_FILE)).rerun_arguments()
    assert arguments["model"] == "small" and arguments["data"] == "digits" and arguments["width"] == 0.25
    assert arguments["seed"] == 3 and arguments["epochs"] == 1
    assert not {"out", "resume", "verbose", "overrides"} & set(arguments)


def test_the_cli_reruns_a_config(trained, tmp_path, capsys):
    out = tmp_path / "again"
    assert cli.main(["train", "--config", os.path.join(trained.path, runs.CONFIG_FILE), "--out", str(out)]) == 0
    again = runs.load(out)
    assert again.config["arguments"]["seed"] == 3 and again.config["test_accuracy"] == trained.config["test_accuracy"]


def test_a_run_folder_written_before_runs_existed_reads_unchanged(run_dir, tmp_path):
    """config.json and labels.txt as `train` wrote them by hand (json.dump, one name a line), read through Run."""
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(os.path.join(run_dir, "model.keras"), folder / "model.keras")
    config = {"model": "small", "data": "digits", "data_options": {"seed": 0}, "input_shape": [8, 8, 1],
              "num_classes": 10, "class_names": [f"d{i}" for i in range(10)], "precision": "float32",
              "arguments": {"epochs": 2, "seed": 0, "overrides": {"width": 0.25}, "out": "x", "verbose": 0}}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "labels.txt").write_text("\n".join(config["class_names"]) + "\n")
    run = keras_cnn.load(folder)
    assert run.config == config and run.class_names[0] == "d0" and run.model.input_shape == (None, 8, 8, 1)
    assert run.rerun_arguments() == {"width": 0.25, "epochs": 2, "seed": 0, "model": "small", "data": "digits"}
    assert keras_cnn.evaluate(str(folder)).num_examples == keras_cnn.load_data("digits").sizes["test"]


def test_export_reports_the_precision_the_model_was_trained_under(trained, tmp_path):
    unrecorded = runs.Run(trained.path, {k: v for k, v in trained.config.items() if k != "precision"},
                          trained.class_names, trained.model)
    report = keras_cnn.export(unrecorded, tmp_path, formats="tflite", quantize="float32", test_samples=50,
                              latency_runs=1, verbose=False)
    assert report.precision == trained.config["precision"] == "float32"


def test_not_a_run_folder_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        runs.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="is not a keras-cnn run folder: it has no model.keras, config.json"):
        runs.load(tmp_path)
