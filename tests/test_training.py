"""Training: the recipes' maths, the run folder, resuming, repeatability and the model contract in training."""
import dataclasses
import inspect
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_cnn
from keras_cnn.artifacts import runs
from keras_cnn.evaluation import evaluate as evaluation
from keras_cnn.training import batches as training_batches
from keras_cnn.training import optimizers, precision, recipes
from keras_cnn.training import trainer as training
from keras_cnn.training.config import TrainConfig
from keras_cnn.utils import io

FAST = dict(epochs=2, batch_size=64, precision="float32", verbose=0, width=0.25)
RUN_FILES = {"model.keras", "config.json", "labels.txt", "history.csv", "metrics.json", "curves.png",
             "confusion_matrix.png", "README.md"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, digits):
    return keras_cnn.train("small", digits, out=str(tmp_path_factory.mktemp("run") / "small"), **FAST)


def test_torch_sgd_matches_the_pytorch_update_formula():
    """g = grad + l2 * w; buf = 0.9 * buf + g; w -= lr * buf, over two steps."""
    w0 = np.array([[0.5], [-1.5]], dtype="float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.set_weights([w0])
    opt = optimizers.TorchSGD(learning_rate=0.1, momentum=0.9, l2=5e-4)
    x = np.array([[1.0, 2.0]], dtype="float32")
    w, buf = w0.astype("float64"), 0.0
    for _ in range(2):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        grad = 2 * (x @ w) * x.T  # d/dw (x w)^2
        buf = 0.9 * buf + grad + 5e-4 * w
        w = w - 0.1 * buf
        np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-6)


def test_sgd_recipe_warms_up_then_decays_by_cosine_per_step():
    opt = recipes.optimizer("sgd", total_steps=1000)
    schedule = opt._learning_rate
    warmup = int(1000 * recipes.WARMUP_FRACTION)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(warmup)) == pytest.approx(0.1)
    middle = warmup + (1000 - warmup) // 2
    assert float(schedule(middle)) == pytest.approx(0.05, rel=1e-3)  # cosine halfway
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-7)
    assert isinstance(recipes.optimizer("adam", total_steps=10), keras.optimizers.Adam)
    with pytest.raises(ValueError, match="Received: recipe='rmsprop'"):
        recipes.optimizer("rmsprop", total_steps=10)


def test_losses_and_metric_names():
    loss, metrics = recipes.loss_and_metrics(10, label_smoothing=0.1)
    assert isinstance(loss, keras.losses.CategoricalCrossentropy) and loss.label_smoothing == 0.1
    assert [m.name for m in metrics] == ["accuracy", "top5_accuracy"]
    assert [m.name for m in recipes.loss_and_metrics(3)[1]] == ["accuracy"]
    loss, metrics = recipes.loss_and_metrics(1)
    assert isinstance(loss, keras.losses.BinaryCrossentropy) and metrics[0].name == "accuracy"


def test_cheap_models_run_several_steps_per_call(finished_run):
    def steps(name, batch_size=128, **overrides):
        return recipes.steps_per_execution(keras_cnn.build(name, input_shape=(32, 32, 3), **overrides), batch_size)

    assert 1 < steps("deeper") < steps("small") <= recipes.MAX_STEPS_PER_EXECUTION
    assert steps("deeper", batch_size=4096) == 1
    assert steps("small", width=0.25) == recipes.MAX_STEPS_PER_EXECUTION
    assert finished_run.model.steps_per_execution == recipes.steps_per_execution(finished_run.model, 64)


def test_several_steps_per_call_train_the_same_model(tmp_path, digits, monkeypatch):
    several = keras_cnn.train("small", digits, out=str(tmp_path / "several"), seed=3, **FAST)
    monkeypatch.setattr(recipes, "steps_per_execution", lambda model, batch_size: 1)
    one = keras_cnn.train("small", digits, out=str(tmp_path / "one"), seed=3, **FAST)
    assert several.model.steps_per_execution > 1 == one.model.steps_per_execution
    np.testing.assert_allclose(several.history["loss"], one.history["loss"], rtol=1e-5)
    assert several.metrics.accuracy == pytest.approx(one.metrics.accuracy, abs=1e-3)


def test_run_folder_is_complete_and_consistent(finished_run, digits):
    assert RUN_FILES <= set(os.listdir(finished_run.path))
    assert "backup" not in os.listdir(finished_run.path) and "best.json" not in os.listdir(finished_run.path)
    config = json.load(open(os.path.join(finished_run.path, "config.json")))
    assert config["model"] == "small" and config["data"] == "digits" and config["input_shape"] == [8, 8, 1]
    assert config["arguments"]["overrides"] == {"width": 0.25} and config["best_epoch"] in (1, 2)
    assert config["versions"]["keras"] == keras.__version__
    assert open(os.path.join(finished_run.path, "labels.txt")).read().split() == [str(d) for d in range(10)]
    assert len(open(os.path.join(finished_run.path, "history.csv")).read().splitlines()) == 1 + 2
    run = keras_cnn.load(finished_run.path)
    again = evaluation.evaluate(run.model, digits)
    saved = json.load(open(os.path.join(finished_run.path, "metrics.json")))
    assert saved["accuracy"] == pytest.approx(again.accuracy) == pytest.approx(finished_run.metrics.accuracy)
    assert np.sum(saved["confusion_matrix"]) == digits.sizes["test"]
    card = open(os.path.join(finished_run.path, "README.md")).read()
    assert "# small trained on digits" in card and f"{again.accuracy:.2%}" in card


def test_pictures_are_real_pngs(finished_run):
    from PIL import Image

    for name in ("curves.png", "confusion_matrix.png"):
        image = np.asarray(Image.open(os.path.join(finished_run.path, name)).convert("L"))
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 10


def test_same_seed_same_run(tmp_path, digits):
    first = keras_cnn.train("small", digits, out=str(tmp_path / "a"), seed=3, **FAST)
    second = keras_cnn.train("small", digits, out=str(tmp_path / "b"), seed=3, **FAST)
    assert first.history["loss"] == second.history["loss"]
    assert first.metrics.accuracy == second.metrics.accuracy


def test_interrupted_run_resumes_where_it_stopped(tmp_path, digits, stop_after):
    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        keras_cnn.train("small", digits, out=out, callbacks=[stop_after(2)], **{**FAST, "epochs": 4})
    assert os.path.isfile(os.path.join(out, "model.keras")) and os.path.isdir(os.path.join(out, "backup"))
    seen = []
    epochs = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    run = keras_cnn.train("small", digits, out=out, resume=True, callbacks=[epochs], **{**FAST, "epochs": 4})
    assert seen == [2, 3]  # only the unfinished epochs
    assert len(run.history["loss"]) == 4 and run.config["epochs_run"] == 4
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary files left


def test_existing_folder_needs_resume_and_resume_needs_the_same_run(tmp_path, finished_run, digits):
    with pytest.raises(ValueError, match="already exists and is not empty: pass --resume"):
        keras_cnn.train("small", digits, out=finished_run.path, **FAST)
    with pytest.raises(ValueError, match="cannot resume .* with a different model"):
        keras_cnn.train("compact", digits, out=finished_run.path, resume=True, **FAST)
    with pytest.raises(ValueError, match="--resume needs the folder of an interrupted run"):
        keras_cnn.train("small", digits, out=str(tmp_path / "nothing"), resume=True, **FAST)


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders = {runs.create(None, "small", "digits", resume=False).path for _ in range(5)}
    assert len(folders) == 5 and all(f.startswith("saved_models/small-digits-") for f in folders)


def test_small_inputs_are_resized_up_to_the_models_smallest(tmp_path, digits, caplog):
    caplog.set_level("INFO", logger="keras_cnn")
    run = keras_cnn.train("lenet", digits, out=str(tmp_path / "lenet"), **{**FAST, "width": 1.0, "epochs": 1})
    assert run.model.input_shape == (None, 16, 16, 1)
    assert "lenet needs at least 16x16 pixels: resizing digits images from 8x8 to 16x16" in caplog.text


def test_explicit_model_must_fit_the_classes(tmp_path, digits):
    model = keras_cnn.build("small", input_shape=(8, 8, 1), num_classes=3, width=0.25)
    with pytest.raises(ValueError, match="predicts 3 classes but digits has 10"):
        keras_cnn.train(model, digits, out=str(tmp_path / "x"), epochs=1, verbose=0)


def test_binary_problem_with_one_sigmoid_unit(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 60, (200, 8, 8, 1)).astype("float32")
    y = np.arange(200) % 2
    x[y == 1, 2:6, 2:6] += 180  # class 1 has a bright square
    run = keras_cnn.train("small", (x, y), num_classes=1, out=str(tmp_path / "bin"), recipe="adam",
                          **{**FAST, "epochs": 5})
    assert run.model.output_shape == (None, 1)
    assert run.metrics.accuracy > 0.9


def test_divergence_explains_what_to_try(tmp_path, digits):
    with pytest.raises(training.TrainingDiverged, match="a lower learning rate"):
        keras_cnn.train("small", digits, out=str(tmp_path / "nan"), learning_rate=1e12, batchnorm=False,
                        **{**FAST, "epochs": 2})


@pytest.mark.parametrize("mix", [{"mixup": 0.4}, {"cutmix": 1.0}])
def test_mixup_and_cutmix_soften_the_labels(digits, mix):
    model = keras_cnn.build("small", input_shape=(8, 8, 1), width=0.25)
    batches = training_batches.shuffled_batches(digits, 64, (8, 8, 1), 0, mix.get("mixup", 0),
                                                mix.get("cutmix", 0), model)
    _, labels = next(iter(batches))
    labels = labels.numpy()
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(labels.max(axis=1) < 1.0) > 0.2  # many labels are mixtures now


def test_invalid_training_arguments(digits):
    for kwargs, fragment in [({"epochs": 0}, "Received: epochs=0"), ({"batch_size": -1}, "Received: batch_size=-1"),
                             ({"mixup": 1.5}, "Received: mixup=1.5"), ({"precision": "fp8"}, "precision='fp8'"),
                             ({"strategy": "tpu"}, "Received: strategy='tpu'"),
                             ({"mixup": 0.2, "cutmix": 0.5}, "not both")]:
        with pytest.raises(ValueError, match=fragment):
            keras_cnn.train("small", digits, verbose=0, **kwargs)


def test_the_train_config_is_checked_once_frozen_and_is_what_config_json_records(finished_run, digits):
    config = TrainConfig("airbench", "digits", recipe="airbench", batch_size=64)
    assert (config.epochs, config.batch_size, config.tta) == (9.9, 64, "flip+translate")  # the recipe's, but given
    assert config.overrides["stem_init"] == "whitening"  # the recipe's network options the model has
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 1
    for bad in ({"mixup": 1.5}, {"strategy": "tpu"}, {"unfreeze": 2}):
        with pytest.raises(ValueError) as from_config:
            TrainConfig("small", **bad)
        with pytest.raises(ValueError) as from_train:
            keras_cnn.train("small", "digits", verbose=0, **bad)
        assert str(from_config.value) == str(from_train.value) and "\n" not in str(from_train.value)
    recorded = json.load(open(os.path.join(finished_run.path, "config.json")))["arguments"]
    settings = {key: value for key, value in FAST.items() if key != "width"}
    expected = TrainConfig("small", digits, out=finished_run.path, overrides={"width": 0.25}, **settings).settings()
    assert recorded == json.loads(json.dumps(io.jsonable(expected, other=repr)))
    assert set(recorded) == {field.name for field in dataclasses.fields(TrainConfig)} - {"model", "data", "callbacks"}


def test_the_train_config_has_train_s_parameters_and_defaults():
    parameters = inspect.signature(keras_cnn.train).parameters
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    assert list(parameters) == list(fields)
    for name, parameter in parameters.items():
        default = fields[name].default_factory() if name == "overrides" else fields[name].default
        expected = {} if parameter.kind is parameter.VAR_KEYWORD else parameter.default
        assert default == expected or (default is dataclasses.MISSING and expected is parameter.empty), name


def test_inference_is_deterministic_with_augmentation(finished_run):
    model = keras_cnn.build("small", input_shape=(8, 8, 1), augment="strong", width=0.25)
    x = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 1)).astype("float32")
    first, second = model(x, training=False), model(x, training=False)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(model.predict(x, verbose=0), first, atol=1e-6)
    assert not np.allclose(model(x, training=True), first)  # augmentation really is on in training


def test_evaluation_report_against_hand_counts():
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    report = evaluation.report(probabilities, np.array([0, 1, 2, 1]), ["a", "b", "c"])
    assert report.accuracy == 0.75 and report.top5_accuracy is None
    assert report.confusion_matrix == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert report.per_class[0]["precision"] == 0.5 and report.per_class[1]["recall"] == 0.5
    assert report.loss == pytest.approx(-np.mean(np.log([0.9, 0.7, 0.7, 0.3])))


def test_flip_tta_averages_each_image_with_its_mirror(digits):
    model = keras_cnn.build("small", input_shape=(8, 8, 1), width=0.25, num_classes=10)
    dataset = digits.pipeline("test", batch_size=64)
    x, labels = digits.arrays("test")
    plain, plain_labels = evaluation.predict_probabilities(model, dataset)
    flipped, tta_labels = evaluation.predict_probabilities(model, dataset, tta="flip")
    mirror = model.predict(x[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(flipped, (plain + mirror) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(flipped, plain)  # digits are not mirror-symmetric: a no-op flip would show
    assert (plain_labels == labels).all() and (tta_labels == labels).all()
    with pytest.raises(ValueError, match="Received: tta='rotate'"):
        evaluation.predict_probabilities(model, dataset, tta="rotate")


def test_tta_evaluation_leaves_the_runs_metrics_alone(finished_run):
    path = os.path.join(finished_run.path, "metrics.json")
    before = open(path).read()
    report = keras_cnn.evaluate(finished_run.path, tta="flip")
    assert report.tta == "flip" and "with flip test-time augmentation" in str(report)
    assert open(path).read() == before
    assert json.loads(before)["tta"] is None


def test_unknown_tta_fails_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="Received: tta='flop'"):  # not the missing run folder's error
        keras_cnn.evaluate(str(tmp_path / "no-such-run"), tta="flop")


def test_precision_auto_is_a_measured_choice():
    assert precision.resolve_precision("auto") in ("float32", "mixed_bfloat16")
    assert precision.resolve_precision("float32") == "float32"


MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras_cnn
run = keras_cnn.train("small", "digits", out={out!r}, strategy="mirrored", epochs=1, precision="float32",
                      verbose=0, width=0.25)
print("replicas", tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
      .num_replicas_in_sync, "accuracy", run.metrics.accuracy)
"""


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    """In a subprocess: logical devices are process-wide and must be set before TensorFlow starts."""
    result = subprocess.run([sys.executable, "-c", MIRRORED.format(out=str(tmp_path / "m"))], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout
    assert runs.load(str(tmp_path / "m")).model.output_shape == (None, 10)


def test_cli_train_and_evaluate(tmp_path):
    out = str(tmp_path / "cli")
    command = [sys.executable, "-m", "keras_cnn.cli"]
    result = subprocess.run([*command, "train", "small", "--epochs", "1", "--out", out, "--precision", "float32",
                             "--set", "width=0.25"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout and f"run folder: {out}" in result.stdout
    result = subprocess.run([*command, "evaluate", out], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("test: 359 images")
    result = subprocess.run([*command, "evaluate", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is not a keras-cnn run folder" in result.stderr


def test_atomic_writes_leave_normal_permissions_and_no_partial_file(tmp_path):
    io.write_text(tmp_path / "a.txt", "ok")
    assert oct(os.stat(tmp_path / "a.txt").st_mode & 0o777) == oct(0o666 & ~io.umask())
    previous = os.umask(0o027)
    try:
        assert io.umask() == 0o027 and os.umask(0o027) == 0o027  # read, never changed
    finally:
        os.umask(previous)
    io.write_text(tmp_path / "b.txt", "good")
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "b.txt") as temporary:
            open(temporary, "w").write("half")
            raise RuntimeError("writer failed")
    assert open(tmp_path / "b.txt").read() == "good" and sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]
