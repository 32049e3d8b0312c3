"""Calibration metrics, temperature fitting, the temperature stored in the model, and `evaluate --calibrate`."""
import json
import math
import shutil

import keras
import numpy as np
import pytest

import keras_cnn
from keras_cnn import cli
from keras_cnn.evaluation import calibration
from keras_cnn.evaluation import evaluate as evaluation
from keras_cnn.models.layers import TemperatureScaling
from keras_cnn.utils import io


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_metrics_of_a_worked_example():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1])  # right with 0.9, wrong with 0.6
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx((0.1 + 0.6) / 2)
    assert calibration.negative_log_likelihood(probabilities, labels) == pytest.approx(-(math.log(0.9) +
                                                                                        math.log(0.4)) / 2)
    assert calibration.brier_score(probabilities, labels) == pytest.approx((0.02 + 0.72) / 2)
    # one sigmoid unit is P(class 1)
    assert calibration.brier_score(np.array([[0.1], [0.4]]), labels) == pytest.approx((0.02 + 0.72) / 2)


def test_a_calibrated_model_has_a_small_ece_and_a_fitted_temperature_near_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 5))
    probabilities = softmax(logits)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])  # drawn from the model's own belief
    assert calibration.expected_calibration_error(probabilities, labels) < 0.02
    assert calibration.fit_temperature(probabilities, labels) == pytest.approx(1.0, abs=0.05)
    # the same model made over-confident: the fit finds the temperature that undoes it
    sharp = softmax(3 * logits)
    assert calibration.expected_calibration_error(sharp, labels) > 0.1
    assert calibration.fit_temperature(sharp, labels) == pytest.approx(3.0, rel=0.05)
    assert (calibration.scale(sharp, 3.0).argmax(1) == sharp.argmax(1)).all()


@pytest.fixture
def overconfident(run_dir, tmp_path):
    """A copy of the digits run whose logits are multiplied by 8: right or wrong, it is nearly sure."""
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    model = io.load_model(folder / "model.keras")
    dense = model.get_layer("predictions")
    dense.set_weights([8 * w for w in dense.get_weights()])
    io.save_model(model, folder / "model.keras")
    return folder


def test_calibrate_lowers_the_ece_of_an_overconfident_model_and_stores_the_temperature(overconfident, digits):
    before = keras_cnn.evaluate(str(overconfident))
    result = keras_cnn.evaluate(str(overconfident), calibrate=True)
    assert result.calibration["before"]["ece_pct"] == pytest.approx(before.calibration["ece_pct"])
    assert result.calibration["ece_pct"] < before.calibration["ece_pct"] / 2
    assert result.calibration["nll"] < before.calibration["nll"]
    assert result.calibration["temperature"] > 2  # it softens
    assert result.accuracy == before.accuracy  # a temperature never changes the predicted class
    # stored in the run's model, the original kept
    model = io.load_model(overconfident / "model.keras")
    assert isinstance(model.get_layer("temperature"), TemperatureScaling)
    assert model.get_layer("temperature").temperature == pytest.approx(result.calibration["temperature"])
    assert model.layers[-1].name == "predictions" and model.output.dtype == "float32"
    assert (overconfident / "model_uncalibrated.keras").is_file()
    saved = json.loads((overconfident / "metrics.json").read_text())
    assert saved["calibration"]["before"]["ece_pct"] > saved["calibration"]["ece_pct"]
    assert (overconfident / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "temperature" in str(result) and "before it: ECE" in str(result)


def test_calibrating_twice_multiplies_the_temperatures(run_dir):
    model = io.load_model(run_dir / "model.keras")
    once = calibration.with_temperature(model, 2.0)
    twice = calibration.with_temperature(once, 1.5)
    assert twice.get_layer("temperature").temperature == pytest.approx(3.0)
    x = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(twice.predict(x, verbose=0), calibration.scale(model.predict(x, verbose=0), 3.0),
                               atol=1e-5)


def test_the_temperature_survives_saving_and_tflite_export(run_dir, digits, tmp_path):
    model = calibration.with_temperature(io.load_model(run_dir / "model.keras"), 4.0)
    io.save_model(model, tmp_path / "calibrated.keras")
    loaded = io.load_model(tmp_path / "calibrated.keras")
    assert loaded.get_layer("temperature").temperature == 4.0
    report = keras_cnn.export(loaded, tmp_path / "export", formats=("tflite",), quantize=("float32",), data=digits,
                              test_samples=64, latency_runs=1, verbose=False)
    keras_row, tflite_row = report.rows
    assert tflite_row["max_abs_diff"] < 1e-4  # the exported file applies the same temperature
    assert tflite_row["ece_pct"] == pytest.approx(keras_row["ece_pct"], abs=0.01)


def test_a_model_without_a_softmax_predictions_layer_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="scores")(inputs))
    with pytest.raises(ValueError, match="named 'predictions'.*Received: model="):
        calibration.with_temperature(model, 2.0)
    with pytest.raises(ValueError, match="Received: temperature=0"):
        TemperatureScaling(0)


def test_every_report_has_calibration_and_the_cli_prints_it(run_dir, tmp_path, capsys):
    result = evaluation.evaluate(str(run_dir), out=str(tmp_path))
    assert set(result.calibration) == {"ece_pct", "nll", "brier", "bins"}  # no temperature: not calibrated
    assert result.calibration["nll"] == pytest.approx(result.loss, abs=1e-4)
    assert (tmp_path / "reliability.png").is_file()
    assert cli.main(["evaluate", str(run_dir), "--split", "val"]) == 0
    assert "calibration: ECE" in capsys.readouterr().out


def test_the_model_card_shows_the_new_figures():
    from keras_cnn.artifacts.card import model_card

    report = evaluation.Report("test", 2, 0.5, 0.7, None, ["a", "b"], [], [[1, 0], [1, 0]],
                               calibration={"ece_pct": 3.25, "nll": 0.7, "brier": 0.4, "bins": 15},
                               corruptions={"model.keras": {"artifact": "model.keras", "num_examples": 2,
                                                            "clean_accuracy_pct": 50.0,
                                                            "accuracy_pct": {"jpeg": [50.0, 0.0]},
                                                            "mean_corruption_accuracy_pct": 25.0, "seed": 0,
                                                            "seconds": 1.0}})
    config = {"model": "small", "data": "digits", "input_shape": [8, 8, 1], "num_classes": 2,
              "class_names": ["a", "b"], "epochs_run": 1, "precision": "float32", "best_epoch": 1,
              "monitor": "val_loss", "train_seconds": 1.0, "versions": {"keras": keras.__version__},
              "arguments": {"recipe": "adam", "epochs": 1, "batch_size": 8, "seed": 0}}
    data = type("Data", (), {"sizes": {"train": 1, "val": 1, "test": 2}})()
    card = model_card(config, report, data)
    assert "ECE 3.25%" in card and "reliability.png" in card
    assert "mean corruption accuracy 25.00%" in card and "corruptions.png" in card
