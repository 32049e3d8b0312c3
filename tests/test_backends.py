"""keras-cnn on Keras's other backends: a model moves between TensorFlow, JAX and PyTorch with the same weights
and predictions, and the commands run on JAX end to end (export through TensorFlow).

The suite itself runs on TensorFlow (conftest); each other backend runs in a fresh process, since Keras keeps one
backend per process.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_cnn

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")

# Prints the class probabilities of keras_cnn.load(sys.argv[1]).model on the images in the .npy file sys.argv[2].
PREDICT = ("import sys, json, numpy as np, keras, keras_cnn; model = keras_cnn.load(sys.argv[1]).model; "
           "print(json.dumps([keras.backend.backend(), np.asarray(model.predict(np.load(sys.argv[2]), verbose=0), "
           "np.float64).tolist()]))")


def _python(code, backend, *args, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cli(*args, backend="jax", timeout=900):
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    return subprocess.run([sys.executable, "-m", "keras_cnn.cli", "--backend", backend, *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def _images(shape, count=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, *shape)).astype(np.float32)


@pytest.mark.parametrize("backend", [pytest.param("jax", marks=needs_jax), pytest.param("torch", marks=needs_torch)])
@pytest.mark.parametrize("checkpoint", ["airbench:cifar10", "small:digits"])
def test_a_model_trained_on_tensorflow_predicts_the_same_on_another_backend(tmp_path, checkpoint, backend):
    """The zoo's checkpoints were trained on TensorFlow; airbench's holds every custom layer that uses TensorFlow
    ops there (fused batch norm, timed kernel gradients, fused GELU, the frozen whitening stem)."""
    model = keras_cnn.load(checkpoint).model
    images = _images(model.input_shape[1:])
    np.save(tmp_path / "images.npy", images)
    expected = model.predict(images, verbose=0)
    ran_on, probabilities = _python(PREDICT, backend, checkpoint, tmp_path / "images.npy")
    assert ran_on == backend
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert (np.argmax(probabilities, -1) == np.argmax(expected, -1)).all()


@needs_jax
def test_a_tensorflow_run_evaluates_and_explains_the_same_on_jax(run_dir, tmp_path):
    tensorflow = _cli("evaluate", run_dir, backend="tensorflow")
    jax = _cli("evaluate", run_dir)
    assert tensorflow.returncode == jax.returncode == 0, jax.stderr[-2000:]
    assert jax.stdout.splitlines()[0] == tensorflow.stdout.splitlines()[0]  # "test: N images  accuracy ..."
    explain = ("import sys, json, numpy as np, keras, keras_cnn; "
               "e = keras_cnn.explain(sys.argv[1], np.load(sys.argv[2])); "
               "print(json.dumps([e.heatmaps.tolist(), e.class_indices.tolist()]))")
    images = _images((8, 8, 1), count=4)
    np.save(tmp_path / "images.npy", images)
    on_jax = _python(explain, "jax", run_dir, tmp_path / "images.npy")
    here = keras_cnn.explain(run_dir, images)
    assert on_jax[1] == here.class_indices.tolist()
    np.testing.assert_allclose(on_jax[0], here.heatmaps, atol=1e-3)
    assert np.ptp(here.heatmaps) > 0.5  # real maps, not all zeros


@pytest.mark.slow  # 1-2 minutes: two trainings and an export
@needs_jax
def test_small_trained_on_jax_reaches_the_tensorflow_figure_and_exports_to_mediapipe(tmp_path, digits):
    arguments = ("train", "small", "--precision", "float32", "--epochs", "15")
    tensorflow = keras_cnn.train("small", digits, precision="float32", epochs=15, out=str(tmp_path / "tf"),
                                 verbose=0)
    trained = _cli(*arguments, "--out", tmp_path / "jax", "--export", "tflite")
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = keras_cnn.load(tmp_path / "jax")
    assert run.config["backend"]["backend"] == "jax" and run.config["versions"]["jax"]
    with open(tmp_path / "jax" / "metrics.json") as handle:
        assert json.load(handle)["accuracy"] >= tensorflow.metrics.accuracy - 0.01
    with open(tmp_path / "jax" / "export" / "export_report.json") as handle:
        rows = {row["artifact"]: row for row in json.load(handle)["rows"]}
    assert rows["small_int8.tflite"]["client"]["status"] == "ok"
    assert rows["small_int8.tflite"]["client"]["agreement_pct"] >= 99.0
    resumed = _cli(*arguments, "--out", tmp_path / "jax", "--resume", backend="tensorflow")
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines() == [
        f"keras-cnn: error: cannot resume {tmp_path / 'jax'} on tensorflow: it was trained on jax; resume it with "
        "--backend jax (its model.keras loads on any backend). Received: backend='tensorflow'"]


@needs_jax
def test_export_refuses_another_backend_in_one_line(run_dir):
    done = _cli("export", run_dir, backend="jax")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("keras-cnn: error: export runs on TensorFlow")
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unknown_or_missing_backend_is_one_line(monkeypatch):
    from keras_cnn.utils import backends

    with pytest.raises(ValueError, match=r"Received: backend='mxnet'"):
        backends.select("mxnet")
    with pytest.raises(ValueError, match=r"Keras already runs on tensorflow .* Received: backend='jax'"):
        backends.select("jax")
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delitem(sys.modules, "keras")
    with pytest.raises(ValueError, match=r'the jax package, which is not installed \(pip install -e "\.\[jax\]"\)'):
        backends.select("jax")


def test_auto_precision_is_measured_on_the_backend_that_trains(monkeypatch, tmp_path):
    import keras

    from keras_cnn.training import precision

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(precision, "_has_gpu", lambda backend: False)
    monkeypatch.setattr(precision, "SPEEDUP_TIMERS", {"tensorflow": lambda dtype: 1.0,
                                                      "jax": lambda dtype: {"float32": 2.0, "bfloat16": 1.0}[dtype]})
    monkeypatch.setattr("keras_cnn.utils.backends.current", lambda: {"backend": "jax", "version": "9.9"})
    precision._bf16_speedup.cache_clear()
    try:
        for backend, expected in [("tensorflow", "float32"), ("jax", "mixed_bfloat16"), ("torch", "float32")]:
            monkeypatch.setattr(keras.backend, "backend", lambda backend=backend: backend)
            assert precision.resolve_precision("auto") == expected
    finally:
        precision._bf16_speedup.cache_clear()
    with open(tmp_path / ".cache" / "keras_cnn" / "precision.json") as handle:
        keys = sorted(json.load(handle))
    assert len(keys) == 2 and keys[1] == keys[0] + "|jax9.9"


@pytest.mark.slow  # about a minute: a trial on JAX, its shipped file measured in a TensorFlow process
@needs_jax
def test_a_search_on_jax_measures_each_trials_shipped_int8_file(tmp_path):
    done = _cli("tune", "--max-trials", "1", "--epochs", "1", "--no-retrain", "--quiet", "--out", tmp_path / "search")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "search" / "results.json") as handle:
        trial, = json.load(handle)["trials"]
    assert trial["status"] == "COMPLETED"
    assert trial["ship"] == "int8" and trial["ship_kb"] > 0 and 0 < trial["ship_accuracy"] <= 1


@pytest.mark.slow  # about a minute a recipe
@needs_jax
@pytest.mark.parametrize("recipe", ["airbench", "airbench_muon"])
def test_the_airbench_recipes_train_on_jax(tmp_path, recipe):
    """Their optimizers (Nesterov TorchSGD with a ramped EMA as lookahead; Muon), label smoothing, the whitening
    stem initialised from the data, flip+translate augmentation and TTA, on JAX."""
    done = _cli("train", "airbench", "--recipe", recipe, "--epochs", "2", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.json") as handle:
        metrics = json.load(handle)
    assert set(metrics["tta_accuracy"]) == {"none", "flip", "flip+translate"}
    assert metrics["accuracy"] > 0.3  # 10 classes: learning, not chance
