"""Hyperparameter search (tuning/): zoo models from spaces, rejected configurations, budgets, resume,
results and the retrained model; memory over many trials, Hyperband and distributed mode are slow."""
import dataclasses
import gc
import glob
import importlib.util
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import keras
import keras_tuner
import numpy as np
import pytest
from tensorflow.python.framework.func_graph import FuncGraph

import keras_cnn
from keras_cnn.tuning import budgets, results, search, spaces
from keras_cnn.tuning.config import SearchConfig
from keras_cnn.tuning.hypermodel import ZooHyperModel
from keras_cnn.tuning.tuners import HyperbandOracle, HyperbandTuner, ZooTuner, make_tuner
from keras_cnn.utils.compat import custom_gradients_released

DIGITS = (8, 8, 1)
FAST = dict(epochs=2, verbose=0, seed=3)


def tiny(hp):
    """Small, quick models on digits: one or two stages of a few channels, GAP head, Adam at some rate."""
    stages = hp.Int("stages", 1, 2)
    width = hp.Choice("width", [4, 8])
    return spaces.Proposal("small", {"filters": [width * 2 ** i for i in range(stages)], "head": "gap", "dense": [],
                                     "dropout": 0.0}, "adam", hp.Float("lr", 3e-3, 3e-2, sampling="log"))


def mostly_impossible(hp):
    """Half the depths collapse 8x8 digits (4+ pooled stages need 16x16 or more); wide ones break max_params."""
    stages = hp.Int("stages", 1, 6)
    width = hp.Choice("width", [4, 64])
    return spaces.Proposal("small", {"filters": [width * 2 ** i for i in range(stages)], "head": "gap", "dense": [],
                                     "dropout": 0.0}, "adam", 0.01)


def hypermodel(space, **kwargs):
    return ZooHyperModel(space, input_shape=DIGITS, num_classes=10, steps_per_epoch=10, epochs=2, **kwargs)


def records(folder):
    return {row["trial"]: row for row in results.trial_rows(folder)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished random search of 8 trials where most proposals are impossible or over budget."""
    out = str(tmp_path_factory.mktemp("search") / "tune")
    return search("digits", space=mostly_impossible, tuner="random", max_trials=8, out=out, max_params=20_000,
                  **{**FAST, "seed": 14})  # proposals C C C . C B C . (collapsed, over budget, trained)


def test_the_hypermodel_builds_the_zoo_model_the_space_names():
    hp = keras_tuner.HyperParameters()
    model = hypermodel(spaces.cnn).build(hp)
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["image", "preprocess"] and names[-1] == "predictions"  # the model contract's names
    assert {"stage1_conv", "stage1_bn", "stage1_pool", "stage2_conv", "head_dense1"} <= set(names)
    assert model.input_shape == (None, *DIGITS) and model.output_shape == (None, 10)
    assert isinstance(model.optimizer, keras.optimizers.Adam) and not model.jit_compile
    assert model.steps_per_execution == keras_cnn.training.recipes.steps_per_execution(model, 128) > 1  # as train does
    hp.values.update(stages=3, filters_3=32, downsample="stride", recipe="sgd", sgd_lr=0.05, augment="basic",
                     flip=False)
    model = hypermodel(spaces.cnn).build(hp)
    assert model.get_layer("stage3_conv").strides == (2, 2) and "stage3_pool" not in [l.name for l in model.layers]
    assert model.get_layer("augment") is not None
    assert isinstance(model.optimizer, keras_cnn.training.optimizers.TorchSGD)  # the training recipes, not a copy


@pytest.mark.parametrize("preset, layer", [("randaugment", keras.layers.RandAugment), ("augmix", keras.layers.AugMix)])
def test_the_spaces_search_keras_randaugment_and_augmix(preset, layer):
    for space in (spaces.cnn, spaces.resnet, spaces.fast):
        hp = keras_tuner.HyperParameters()
        space(hp)
        augment = next(parameter for parameter in hp.space if parameter.name == "augment")
        assert preset in augment.values, space.__name__
    hp = keras_tuner.HyperParameters()
    hp.values.update(augment=preset, flip=False)
    model = hypermodel(spaces.cnn).build(hp)
    assert any(isinstance(sub, layer) for sub in model.get_layer("augment").layers)


def test_a_collapsing_configuration_fails_its_trial_before_anything_is_built(monkeypatch):
    hp = keras_tuner.HyperParameters()
    spaces.cnn(hp)
    hp.values.update(stages=4, filters_3=16, filters_4=16, downsample="maxpool")
    monkeypatch.setattr("keras_cnn.models.registry.build", lambda *a, **k: pytest.fail("built a collapsing model"))
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="collapsed: needs inputs of at least 16x16"):
        hypermodel(spaces.cnn).build(hp)


def test_spaces_resolve_by_name_path_or_function():
    assert spaces.resolve("cnn") == ("cnn", spaces.cnn)
    assert spaces.resolve("keras_cnn.tuning.spaces:cnn")[1] is spaces.cnn
    assert spaces.resolve(tiny) == ("test_tuning:tiny", tiny)
    with pytest.raises(ValueError, match="Received: space='nope'"):
        spaces.resolve("nope")


def test_budgets_refuse_a_model_cheap_limits_first():
    model = hypermodel(tiny).build(keras_tuner.HyperParameters())
    record = {}
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="over budget: params"):
        budgets.measure_and_enforce(model, {"max_params": 10, "max_tflite_kb": 1}, record)
    assert "tflite_kb" not in record  # refused before the TFLite conversion
    record = {}
    with pytest.raises(keras_tuner.errors.FailedTrialError, match=r"over budget: tflite_kb [\d.]+ > max_tflite_kb 1"):
        budgets.measure_and_enforce(model, {"max_tflite_kb": 1}, record)
    assert record["params"] == model.count_params() and record["macs"] > 0
    assert record["tflite_kb"] > 4 * model.count_params() / 1024 * 0.8 and record["latency_ms"] > 0
    with pytest.raises(ValueError, match="Received: max_macs=0"):
        budgets.check({"max_macs": 0})


def test_a_trained_models_graph_does_not_outlive_its_trial():
    def train_steps():  # Keras's traced training steps still in memory
        gc.collect()
        return sum(isinstance(o, FuncGraph) and o.name == "one_step_on_data" for o in gc.get_objects())

    before = train_steps()  # other tests may have trained outside a trial
    x, y = np.zeros((16, *DIGITS), "float32"), np.eye(10, dtype="float32")[np.arange(16) % 10]
    with custom_gradients_released():
        model = hypermodel(tiny).build(keras_tuner.HyperParameters())
        model.fit(x, y, epochs=1, verbose=0)
        assert train_steps() > before
    del model
    keras.backend.clear_session()
    assert train_steps() == before  # TensorFlow's gradient registry would keep it


def test_a_search_completes_when_most_proposals_are_impossible(finished):
    rows = finished.trials
    assert len(rows) == 8 and all(row["status"] in ("COMPLETED", "FAILED") for row in rows)
    outcomes = [row["outcome"] for row in rows]
    collapsed = [o.startswith("collapsed") for o in outcomes]
    rejected = [o != "ok" for o in outcomes]
    assert sum(collapsed) >= 3 and any(all(rejected[i:i + 3]) for i in range(6))  # keras-tuner's default stops here
    assert all(row["params"] is None for row, c in zip(rows, collapsed) if c)  # never built


def test_over_budget_trials_are_recorded_untrained_and_never_best(finished):
    over = [row for row in finished.trials if row["outcome"].startswith("over budget: params")]
    assert over and all(row["params"] > 20_000 and row["status"] == "FAILED" for row in over)
    for row in over:
        assert row["val_accuracy"] is None and row["epochs"] is None and row["tflite_kb"] is None
        assert not os.path.exists(os.path.join(finished.path, "trials", f"trial_{row['trial']}",
                                               "checkpoint.weights.h5"))
    completed = [row for row in finished.trials if row["status"] == "COMPLETED"]
    assert finished.best_trial["trial"] == max(completed, key=lambda row: row["score"])["trial"]
    assert all(row["params"] <= 20_000 and row["ship_kb"] > 0 and row["ship_latency_ms"] > 0 for row in completed)
    assert all(row["epochs"] == 2 and row["val_accuracy"] == pytest.approx(row["score"]) for row in completed)


def test_results_table_and_files(finished):
    folder = finished.path
    table = finished.table()
    assert table == open(os.path.join(folder, "results.txt")).read().rstrip("\n")
    header, *lines = table.splitlines()
    assert header.split()[:3] == ["trial", "val", "acc"] and "int8 KB" in header and "int8 acc" in header
    assert len(lines) == 8
    assert [line.split()[0] for line in lines].count(finished.best_trial["trial"] + "*") == 1
    summary = json.load(open(os.path.join(folder, "results.json")))
    assert summary["best_trial"] == finished.best_trial["trial"] and len(summary["trials"]) == 8
    best = json.load(open(os.path.join(folder, "best_hyperparameters.json")))
    assert best["hyperparameters"] == finished.best_hyperparameters and best["model"] == "small"
    assert best["overrides"]["filters"] == [best["hyperparameters"]["width"] * 2 ** i
                                            for i in range(best["hyperparameters"]["stages"])]
    events = glob.glob(os.path.join(folder, "tensorboard", finished.best_trial["trial"], "execution0", "events*"))
    assert events and b"hparams" in open(events[0], "rb").read()  # keras-tuner's HParams session summary


def test_the_best_settings_are_retrained_into_a_loadable_run_folder(finished):
    assert os.path.basename(finished.run_dir) == f"retrained-trial_{finished.best_trial['trial']}"
    run = keras_cnn.load(finished.run_dir)
    assert run.config["model"] == "small" and run.config["data_options"]["val_fraction"] == 0.0
    assert run.config["arguments"]["overrides"] == finished.proposal.overrides
    assert run.config["epochs_run"] == 2 and run.config["test_accuracy"] == pytest.approx(finished.test_accuracy)
    assert [l.name for l in run.model.layers] == [l.name for l in finished.best_trial_model.layers]
    checkpoint = keras_cnn.utils.io.load_model(os.path.join(finished.path, "best_trial.keras"))
    assert checkpoint.count_params() == run.model.count_params()
    assert 0 <= finished.best_trial_test_accuracy <= 1


def test_an_existing_folder_is_not_reused_without_resume(tmp_path):
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not empty: pass resume=True"):
        search("digits", space=tiny, out=str(tmp_path / "tune"), **FAST)
    with pytest.raises(ValueError, match="resume needs the folder of an earlier search"):
        search("digits", space=tiny, out=str(tmp_path / "tune"), resume=True, **FAST)


def test_resume_continues_the_same_search_and_refuses_another(tmp_path):
    out, quick = str(tmp_path / "tune"), {**FAST, "epochs": 1}
    search("digits", space=tiny, max_trials=2, out=out, retrain=False, **quick)
    first = {path: os.path.getmtime(path) for path in glob.glob(os.path.join(out, "trials", "trial_*", "*.json"))}
    with pytest.raises(ValueError, match="cannot resume .* with a different space: it searched the space "
                                         "'test_tuning:tiny'.*Received: space=the space 'cnn'"):
        search("digits", space="cnn", max_trials=3, out=out, resume=True, **quick)
    with pytest.raises(ValueError, match=r"with a different data: it searched digits .*Received: data=digits"):
        search("digits", space=tiny, max_trials=3, out=out, resume=True, data_options={"val_fraction": 0.2}, **quick)
    with pytest.raises(ValueError, match="with a different epochs"):
        search("digits", space=tiny, max_trials=3, out=out, resume=True, **FAST)
    result = search("digits", space=tiny, max_trials=3, out=out, resume=True, retrain=False, **quick)
    assert [row["trial"] for row in result.trials] == ["0", "1", "2"]
    assert all(os.path.getmtime(path) == mtime for path, mtime in first.items())  # finished trials were not rerun
    assert result.run_dir is None and result.best_model is result.best_trial_model


def test_each_tuner_lifts_keras_tuners_failure_limit(tmp_path):
    settings = {"objective": {"name": "val_accuracy", "direction": "max"}, "seed": 0, "max_trials": 5, "epochs": 2,
                "max_epochs": 9, "factor": 3}
    kinds = {"random": keras_tuner.oracles.RandomSearchOracle,
             "bayesian": keras_tuner.oracles.BayesianOptimizationOracle, "hyperband": HyperbandOracle}
    for kind, oracle_class in kinds.items():
        tuner = make_tuner(str(tmp_path / kind), {**settings, "tuner": kind}, hypermodel(spaces.cnn))
        assert isinstance(tuner.oracle, oracle_class) and tuner.oracle.max_consecutive_failed_trials > 10**6
        assert isinstance(tuner, HyperbandTuner if kind == "hyperband" else ZooTuner)
        assert tuner.oracle.seed == 1  # keras-tuner would pick a random seed for 0
        assert {hp.name for hp in tuner.oracle.get_space().space} >= {"stages", "filters_4", "flip", "sgd_lr"}
    assert (tuner.oracle.max_epochs, tuner.oracle.factor) == (9, 3)


def test_hyperband_gives_a_rejected_first_round_place_to_a_new_configuration(tmp_path):
    oracle = HyperbandOracle(objective=keras_tuner.Objective("score", "max"), max_epochs=3, factor=3, seed=1,
                             max_consecutive_failed_trials=sys.maxsize)
    oracle._set_project_dir(str(tmp_path), "hyperband")
    hp = keras_tuner.HyperParameters()
    hp.Int("x", 0, 1000)
    oracle.update_space(hp)
    promoted = None
    for i in range(12):
        trial = oracle.create_trial("tuner0")
        if trial.status != "RUNNING":
            break
        if "tuner/trial_id" in trial.hyperparameters.values:
            promoted = trial
        if i % 2 == 0:  # every other proposal is rejected
            trial.status = "FAILED"
        else:
            oracle.update_trial(trial.trial_id, {"score": float(trial.hyperparameters.values["x"])})
            trial.status = "COMPLETED"
        oracle.end_trial(trial)
    assert promoted is not None  # successive halving went on despite the rejections


def test_search_arguments_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="Received: tuner='grid'"):
        search("digits", tuner="grid", out=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="Received: factor=1"):
        search("digits", tuner="hyperband", factor=1, out=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="Received: data=<tuple>"):
        search((None, None), distributed=True, out=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="Received: max_tflite_kb=-1"):
        search("digits", max_tflite_kb=-1, out=str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_search_config_takes_searchs_arguments_with_its_defaults():
    config_defaults = {field.name: field.default if field.default_factory is dataclasses.MISSING
                       else field.default_factory() for field in dataclasses.fields(SearchConfig) if field.init}
    assert config_defaults == {name: parameter.default for name, parameter in
                               inspect.signature(search).parameters.items()}


def test_search_config_is_frozen_and_normalised_once():
    config = SearchConfig(space=tiny, tuner="hyperband", max_trials=0, max_epochs=np.int64(4), objective="val_loss",
                          max_params=20_000, distributed=1)
    assert (config.space, config.space_function) == ("test_tuning:tiny", tiny)
    assert (config.max_trials, config.epochs, config.max_epochs, config.factor) == (None, None, 4, 3)  # hyperband's
    assert type(config.max_epochs) is int and config.distributed is True and config.data_options == {}
    assert (config.objective.name, config.objective.direction) == ("val_loss", "min")
    assert config.budgets == {"max_params": 20_000}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    several = SearchConfig(objectives="accuracy, kb", max_epochs=0)
    assert several.objectives == ("accuracy", "kb") and several.objective.name == "ship_accuracy"
    assert (several.max_trials, several.epochs, several.max_epochs, several.factor) == (10, 5, None, None)


@pytest.mark.parametrize("arguments, received", [
    (dict(tuner="grid"), "tuner='grid'"),
    (dict(tuner="hyperband", factor=1), "factor=1"),
    (dict(data=(None, None), distributed=True), "data=<tuple>"),
    (dict(max_tflite_kb=-1), "max_tflite_kb=-1"),
    (dict(export_front=True, objectives="kb"), "objectives='kb'"),
    (dict(ship="int4"), "ship='int4'"),
    (dict(latency_runs=0, max_latency_ms=5), "latency_runs=0"),
    (dict(executions_per_trial=0), "executions_per_trial=0"),
])
def test_search_config_refuses_a_bad_value_with_searchs_one_line(arguments, received, tmp_path):
    with pytest.raises(ValueError) as refused_by_config:
        SearchConfig(**arguments)
    with pytest.raises(ValueError) as refused_by_search:
        search(**arguments, out=str(tmp_path / "a"))
    message = str(refused_by_config.value)
    assert message == str(refused_by_search.value) and "\n" not in message and message.endswith(f"Received: {received}")


def test_search_config_settings_are_the_keys_search_json_has_always_had():
    images = (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, np.int64))
    config = SearchConfig(images, space=tiny, objectives="accuracy,kb", max_params=20_000, out="elsewhere")
    assert config.data is images  # held as given, never copied
    assert json.loads(json.dumps(config.settings())) == {
        "data": None, "data_options": {}, "space": "test_tuning:tiny", "tuner": "random",
        "objective": {"name": "ship_accuracy", "direction": "max"}, "max_trials": 10, "epochs": 5,
        "max_epochs": None, "factor": None, "seed": 0, "batch_size": 128, "budgets": {"max_params": 20_000},
        "distributed": False, "objectives": ["accuracy", "kb"], "ship": "int8", "latency_runs": 50,
        "executions_per_trial": 1}


@pytest.mark.slow
def test_memory_stays_flat_over_many_trials(tmp_path):
    result = search("digits", space=tiny, max_trials=20, epochs=1, out=str(tmp_path / "tune"), retrain=False,
                    verbose=0, objectives="accuracy,kb,latency")  # each trial converted to int8 and run in LiteRT
    assert all(row["ship_kb"] > 0 for row in result.trials)
    rss = [row["rss_mb"] for row in result.trials]
    # From trial 3 to 20, by the line fitted through them (RSS swings by up to 15 MB from one trial to the next, so
    # two single trials do not decide): +12 MB measured alone. When each trial's training graph stayed in
    # TensorFlow's gradient registry, two single trials gave +44 to +51.
    growth = np.polyfit(np.arange(18), rss[2:], 1)[0] * 17
    assert len(rss) == 20 and growth < 20, rss


@pytest.mark.slow
def test_hyperband_continues_the_best_models(tmp_path):
    result = search("digits", space="cnn", tuner="hyperband", max_epochs=3, factor=3, out=str(tmp_path / "hb"),
                    retrain=False, verbose=0, seed=1)
    values = [json.load(open(path))["hyperparameters"]["values"]
              for path in glob.glob(os.path.join(result.path, "trials", "trial_*", "trial.json"))]
    assert any("tuner/trial_id" in v for v in values) and {v["tuner/epochs"] for v in values} == {1, 3}
    assert result.best_trial["status"] == "COMPLETED"


def _in_private_network(command):
    """`command` in a new network namespace with only loopback, where `unshare` works (root), else as it is."""
    probe = shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    if not probe:
        return command
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax is not installed"))])
def test_distributed_chief_and_two_workers_share_the_trials(tmp_path, backend):
    out = str(tmp_path / "tune")
    script = textwrap.dedent(f"""
        from keras_cnn.tuning import search
        search("digits", space="cnn", max_trials=4, epochs=1, out={out!r}, retrain=False, verbose=0,
               distributed=True, workers=2)
    """)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
           "KERAS_BACKEND": backend}  # the workers inherit it; the chief only hands out trials
    process = subprocess.Popen(_in_private_network([sys.executable, "-c", script]), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # the launcher's finally stops its chief and workers by PID
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, output.decode()[-3000:]
    rows = results.trial_rows(out)
    logs = {name: open(os.path.join(out, "logs", name)).read()[-1500:]
            for name in os.listdir(os.path.join(out, "logs"))}
    assert len(rows) == 4 and all(row["status"] == "COMPLETED" for row in rows), (rows, logs)
    assert {row["tuner_id"] for row in rows} == {"tuner1", "tuner2"}, (rows, logs)  # the logs say why, if not
    assert os.path.isfile(os.path.join(out, "results.txt"))
    assert sorted(os.listdir(os.path.join(out, "logs"))) == ["chief.log", "tuner1.log", "tuner2.log"]


def test_keras_cnn_tune_is_the_search():
    assert keras_cnn.tune is search  # the function keras_cnn.tuning exports


# ---------------------------------------------------------------- keras-tuner's private API (tuning/tuners.py)
# One test per private method or attribute tuning/tuners.py overrides or reads: each fails when a keras-tuner
# release renames it, changes its arguments or stops calling it where the override expects.


def _source(function):
    import inspect

    return inspect.getsource(function)


def _parameters(function):
    import inspect

    return list(inspect.signature(function).parameters)


def test_private_api_populate_initial_space_is_replaced_by_declaring_the_space(tmp_path):
    from keras_tuner.src.engine import base_tuner

    assert "self._populate_initial_space()" in _source(base_tuner.BaseTuner.__init__)
    assert _parameters(base_tuner.BaseTuner._populate_initial_space) == ["self"]
    model = hypermodel(mostly_impossible)
    model.build = lambda hp: pytest.fail("keras-tuner's own way builds models to find the space")
    settings = {"objective": {"name": "val_accuracy", "direction": "max"}, "seed": 0, "tuner": "random",
                "max_trials": 1}
    tuner = make_tuner(str(tmp_path), settings, model)
    assert set(tuner.oracle.get_space().values) == {"stages", "width"}


def test_private_api_build_and_fit_model_receives_each_trials_fit_arguments():
    from keras_tuner.src.engine import tuner as tuner_module

    assert _parameters(tuner_module.Tuner._build_and_fit_model) == ["self", "trial", "args", "kwargs"]
    assert "self._build_and_fit_model(trial, *args, **copied_kwargs)" in _source(tuner_module.Tuner.run_trial)
    assert "self.hypermodel.fit(hp, model, *args, **kwargs)" in _source(tuner_module.Tuner._build_and_fit_model)
    assert ZooTuner._build_and_fit_model is not keras_tuner.Tuner._build_and_fit_model


def test_private_api_the_concrete_tuners_constructors_only_make_their_oracle():
    source = _source(keras_tuner.Hyperband.__init__)
    assert "oracle = HyperbandOracle(" in source and "super().__init__(oracle=oracle, hypermodel=hypermodel" in source
    assert HyperbandTuner.__mro__.index(ZooTuner) < HyperbandTuner.__mro__.index(keras_tuner.Hyperband)
    assert _parameters(keras_tuner.Tuner.__init__)[:3] == ["self", "oracle", "hypermodel"]


def test_private_api_hyperband_brackets_sizes_and_rounds():
    oracle = HyperbandOracle(objective=keras_tuner.Objective("val_accuracy", "max"), max_epochs=9, factor=3)
    assert oracle._brackets == [{"bracket_num": 2, "rounds": [[], [], []]}] and oracle._get_num_brackets() == 3
    assert _parameters(keras_tuner.oracles.HyperbandOracle._get_size) == ["self", "bracket_num", "round_num"]
    assert [oracle._get_size(bracket, 0) for bracket in range(3)] == [3, 5, 9]
    source = _source(keras_tuner.oracles.HyperbandOracle)
    assert 'bracket["rounds"]' in source and '"id": trial_id' in source  # entries of a round: {"id": ..., ...}


def test_private_api_trials_load_from_their_json(tmp_path):
    from keras_tuner.engine.trial import Trial

    trial = Trial(keras_tuner.HyperParameters(), trial_id="03", status="COMPLETED")
    trial.save(str(tmp_path / "trial.json"))
    assert results._trial_class() is Trial and Trial.load(str(tmp_path / "trial.json")).trial_id == "03"


def test_private_api_state_files_are_written_where_tuning_recovery_writes_them_atomically():
    from keras_tuner.src.engine import base_tuner, oracle

    assert "self.oracle.save()" in _source(base_tuner.BaseTuner.save)  # ZooTuner.save does what it did
    assert "self._get_tuner_fname()" in _source(base_tuner.BaseTuner.save)
    assert "self._get_tuner_fname()" in _source(base_tuner.BaseTuner.__init__)  # reloads when the file is there
    assert "super().save(self._get_oracle_fname())" in _source(oracle.Oracle.save)
    assert _source(oracle).count("self._save_trial(trial)") == 3  # create_trial, update_trial, end_trial
    assert _parameters(oracle.Oracle._save_trial) == ["self", "trial"]
    assert _parameters(oracle.Oracle._compute_values_hash) == ["self", "values"]  # recovery.rebuilt_state
    assert '"trial_*", "trial.json"' in _source(oracle.Oracle.reload)


def test_private_api_bayesian_oracle_draws_from_its_random_state():
    oracle = keras_tuner.oracles.BayesianOptimizationOracle(objective=keras_tuner.Objective("score", "max"), seed=4)
    assert isinstance(oracle._random_state, np.random.RandomState)  # ParEGOOracle draws its weights from it
    assert "self._random_state" in _source(keras_tuner.oracles.BayesianOptimizationOracle.populate_space)


def test_private_api_trials_checkpoint_through_save_best_epoch():
    from keras_tuner.src.engine import tuner as tuner_module
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

    source = _source(tuner_module.Tuner.run_trial)  # ZooHyperModel.fit finds the callback by its name and filepath
    assert "tuner_utils.SaveBestEpoch(" in source and "callbacks.append(model_checkpoint)" in source
    assert SaveBestEpoch(keras_tuner.Objective("x", "max"), "w.weights.h5").filepath == "w.weights.h5"


def test_private_api_what_the_atomic_files_and_the_rebuilt_brackets_read():
    from keras_tuner.src.engine import base_tuner, oracle

    assert "if not self._is_worker():" in _source(base_tuner.BaseTuner.save)  # ZooTuner.save keeps it
    assert 'self._get_trial_dir(trial_id), "trial.json"' in _source(oracle.Oracle._save_trial)  # AtomicOracle's
    assert _parameters(oracle.Oracle._get_trial_dir) == ["self", "trial_id"]
    hyperband = HyperbandOracle(objective=keras_tuner.Objective("val_accuracy", "max"), max_epochs=9, factor=3)
    assert (hyperband._current_bracket, hyperband._current_iteration) == (2, 0)  # the plan starts at the top
    assert [hyperband._get_epochs(bracket, 0) for bracket in range(3)] == [9, 3, 1]
