"""Searches on the file that ships: the Pareto maths, the front and its verified exports, objectives on resume,
repeated trainings, ParEGO steering, the bad inputs, and the spaces of every family."""
import dataclasses
import json
import os
import types

import keras
import keras_tuner
import numpy as np
import pytest

import keras_cnn
from keras_cnn import cli
from keras_cnn.tuning import front as front_module
from keras_cnn.tuning import pareto, search, shipping, spaces
from keras_cnn.tuning.hypermodel import ZooHyperModel
from keras_cnn.tuning.tuners import ParEGOOracle

MAX, MIN = "max", "min"
QUICK = dict(epochs=1, verbose=0, seed=3, latency_runs=5, retrain=False)


def tiny(hp):
    """Small, quick models on digits: one or two stages of a few channels, GAP head, Adam at some rate."""
    stages = hp.Int("stages", 1, 2)
    width = hp.Choice("width", [4, 8])
    return spaces.Proposal("small", {"filters": [width * 2 ** i for i in range(stages)], "head": "gap", "dense": [],
                                     "dropout": 0.0}, "adam", hp.Float("lr", 3e-3, 3e-2, sampling="log"))


# ---------------------------------------------------------------- the Pareto maths, on hand-made vectors

def test_the_front_of_hand_made_vectors():
    accuracy_kb = [MAX, MIN]
    assert pareto.front([[0.9, 100]], accuracy_kb) == [0]  # one point
    assert pareto.front([[0.9, 100], [0.8, 50], [0.95, 300], [0.7, 60]], accuracy_kb) == [0, 1, 2]
    assert pareto.front([[0.9, 10], [0.8, 50], [0.5, 300], [0.9, 11]], accuracy_kb) == [0]  # all dominated by one
    assert pareto.front([[0.9, 100], [0.9, 100], [0.8, 200]], accuracy_kb) == [0, 1]  # duplicates stay together
    assert pareto.front([[0.9, 100], [0.9, 80], [0.95, 80]], accuracy_kb) == [2]  # a tie in one, better in the other
    assert pareto.front([[1, 2, 3], [3, 2, 1], [2, 2, 2], [3, 3, 3]], [MIN, MIN, MIN]) == [0, 1, 2]
    assert not pareto.dominates([0.9, 100], [0.9, 100], accuracy_kb)
    assert pareto.dominates([0.9, 100], [0.9, 101], accuracy_kb) and not pareto.dominates([0.9, 101], [0.9, 100],
                                                                                          accuracy_kb)


def test_tchebycheff_scalarisation_prefers_what_its_weights_favour():
    vectors = [[0.9, 300], [0.7, 50], [0.6, 400]]  # accurate and big, small and less accurate, dominated
    accurate = pareto.tchebycheff(vectors, [MAX, MIN], [0.9, 0.1])
    small = pareto.tchebycheff(vectors, [MAX, MIN], [0.1, 0.9])
    assert np.argmin(accurate) == 0 and np.argmin(small) == 1
    assert all(value > min(accurate) for value in accurate[1:]) and small[2] == max(small)
    assert pareto.tchebycheff([[1, 5], [1, 5]], [MAX, MIN], [0.5, 0.5]) == [0.0, 0.0]  # no spread: no division by 0


def test_hypervolume_of_hand_made_fronts():
    assert pareto.hypervolume([[0.9, 100]], [MAX, MIN], [0.0, 200]) == pytest.approx(0.9 * 100)  # one box
    two = pareto.hypervolume([[0.9, 100], [0.5, 20]], [MAX, MIN], [0.0, 200])
    assert two == pytest.approx(0.9 * 100 + 0.5 * 80)  # union of two boxes: 0.9x100 and 0.5x(180-100)
    assert pareto.hypervolume([[0.9, 100], [0.5, 20], [0.4, 150]], [MAX, MIN], [0.0, 200]) == pytest.approx(two)
    assert pareto.hypervolume([[0.9, 300]], [MAX, MIN], [0.0, 200]) == 0.0  # outside the reference
    cube = pareto.hypervolume([[1, 1, 1], [0, 2, 2]], [MIN, MIN, MIN], [3, 3, 3])
    assert cube == pytest.approx(8 + 3 * 1 * 1 - 2 * 1 * 1)  # 2x2x2, plus the second box's 3x1x1 less the overlap


def test_objectives_parse_and_name_their_metrics():
    assert pareto.parse("accuracy, kb,latency") == ("accuracy", "kb", "latency")
    assert pareto.vector({"ship_accuracy": 0.9, "ship_kb": 12.5, "macs": 3}, ("accuracy", "kb")) == [0.9, 12.5]
    assert pareto.vector({"ship_accuracy": 0.9}, ("accuracy", "kb")) is None
    with pytest.raises(ValueError, match="Received: objectives='accuracy,size'"):
        pareto.parse("accuracy,size")
    with pytest.raises(ValueError, match="twice"):
        pareto.parse(["kb", "kb"])


def test_parego_fits_keras_tuners_process_to_the_scalarised_objectives(tmp_path, monkeypatch):
    oracle = ParEGOOracle(objectives=("accuracy", "kb"), objective=keras_tuner.Objective("ship_accuracy", "max"),
                          max_trials=10, seed=1, num_initial_points=2)
    oracle._set_project_dir(str(tmp_path), "parego")
    hp = keras_tuner.HyperParameters()
    hp.Int("x", 0, 100)
    oracle.update_space(hp)
    vectors = [[0.9, 300.0], [0.7, 50.0], [0.6, 400.0]]
    for accuracy, kb in vectors:
        trial = oracle.create_trial("tuner0")
        oracle.update_trial(trial.trial_id, {"ship_accuracy": accuracy, "ship_kb": kb})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    seen = []
    monkeypatch.setattr(keras_tuner.oracles.BayesianOptimizationOracle, "populate_space",
                        lambda self, trial_id: seen.append([t.score for t in self.trials.values()]) or
                        {"status": "RUNNING", "values": {"x": 1}})
    drawn = []
    random_state = oracle._random_state
    oracle._random_state = types.SimpleNamespace(  # the weights it draws, recorded
        dirichlet=lambda alpha: drawn.append(random_state.dirichlet(alpha)) or drawn[-1])
    oracle.populate_space("3")
    oracle.populate_space("4")
    assert [t.score for t in oracle.trials.values()] == [0.9, 0.7, 0.6]  # each trial's own score is kept
    for scores, weights in zip(seen, drawn):  # negated: keras-tuner's process maximises a "max" objective's scores
        assert scores == pytest.approx([-v for v in pareto.tchebycheff(vectors, [MAX, MIN], weights)])
    assert len(drawn) == 2 and list(drawn[0]) != list(drawn[1])  # a new weighting per proposal


# ---------------------------------------------------------------- a search with objectives, its front and exports

@pytest.fixture(scope="module")
def front_search(tmp_path_factory):
    """A 4-trial digits search of accuracy against size, every front model exported."""
    out = str(tmp_path_factory.mktemp("pareto") / "tune")
    return search("digits", space=tiny, max_trials=4, out=out, objectives="accuracy,kb", export_front=True, **QUICK)


def test_size_and_latency_budgets_apply_to_the_shipped_file():
    from keras_cnn.tuning import budgets

    model = ZooHyperModel(tiny, input_shape=(8, 8, 1), num_classes=10, steps_per_epoch=2,
                          epochs=1).build(keras_tuner.HyperParameters())
    record = {}
    budgets.measure_and_enforce(model, {"max_tflite_kb": 0.1}, record, float32_precheck=False)
    assert "tflite_kb" not in record  # an int8 file is smaller than the float32 one: that bounds nothing
    shipped = {"ship": "int8", "ship_kb": 9.4, "ship_latency_ms": 0.02}
    budgets.enforce_shipped(shipped, {"max_tflite_kb": 10, "max_latency_ms": 1})
    with pytest.raises(keras_tuner.errors.FailedTrialError,
                       match=r"over budget: tflite_kb 9.4 > max_tflite_kb 5 \(int8 file, trained\)"):
        budgets.enforce_shipped(shipped, {"max_tflite_kb": 5})
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="latency_ms 0.02 > max_latency_ms 0.01"):
        budgets.enforce_shipped(shipped, {"max_latency_ms": 0.01})


def test_every_trial_keeps_its_objective_vector(front_search):
    summary = json.load(open(os.path.join(front_search.path, "results.json")))
    assert summary["objectives"] == ["accuracy", "kb"] and summary["ship"] == "int8"
    completed = [row for row in summary["trials"] if row["status"] == "COMPLETED"]
    assert len(completed) == 4
    for row in completed:
        assert 0 <= row["ship_accuracy"] <= 1 and row["ship_kb"] > 0 and row["ship_latency_ms"] > 0
        assert row["ship"] == "int8" and row["cpus"] == os.cpu_count() and row["latency_threads"]
        assert row["tflite_kb"] is None  # no float32 pre-check: it bounds nothing for an int8 file


def test_the_front_is_the_non_dominated_trials_sorted_by_accuracy(front_search):
    rows = [row for row in front_search.trials if row["status"] == "COMPLETED"]
    vectors = [[row["ship_accuracy"], row["ship_kb"]] for row in rows]
    expected = {rows[i]["trial"] for i in pareto.front(vectors, [MAX, MIN])}
    ids = [row["trial"] for row in front_search.front]
    assert set(ids) == expected and ids == json.load(open(os.path.join(front_search.path, "results.json")))["front"]
    accuracies = [row["ship_accuracy"] for row in front_search.front]
    assert accuracies == sorted(accuracies, reverse=True)
    table = open(os.path.join(front_search.path, "front.txt")).read()
    assert table.rstrip("\n") == front_search.front_table()
    assert [line.split()[0] for line in table.splitlines()[1:]] == ids
    assert "int8 acc*" in table.splitlines()[0] and "int8 KB*" in table.splitlines()[0]
    with open(os.path.join(front_search.path, "front.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_each_front_model_is_exported_verified_and_its_kb_is_the_shipped_files(front_search):
    for row in front_search.front:
        export = row["export"]
        assert "error" not in export
        path = os.path.join(export["out_dir"], export["file"])
        report = json.load(open(os.path.join(export["out_dir"], "export_report.json")))
        shipped = next(r for r in report["rows"] if r["format"] == "tflite")
        assert shipped["quantization"] == "int8" and shipped["client"]["status"] == "ok"  # MediaPipe ran it
        assert row["ship_kb"] == round(os.path.getsize(path) / 1024, 1) == export["kb"]
    assert set(os.listdir(os.path.join(front_search.path, "front"))) == {f"trial_{r['trial']}"
                                                                        for r in front_search.front}


def test_the_measured_file_is_the_file_export_writes(tmp_path):
    data = keras_cnn.load_data("digits", seed=0)
    model = ZooHyperModel(tiny, input_shape=data.image_shape, num_classes=10, steps_per_epoch=4,
                          epochs=1).build(keras_tuner.HyperParameters())
    ships = shipping.prepare(data, "int8", 0)
    measured = shipping.measure(model, ships)
    assert measured["ship_latency_ms"] is None  # 0 runs: not timed
    exported = keras_cnn.exporting.pipeline.tflite_bytes(model, "int8", ships.calibration, class_names=ships.class_names)
    assert measured["ship_kb"] == round(len(exported) / 1024, 1)
    report = keras_cnn.export(model, out_dir=str(tmp_path), formats="tflite", quantize="int8", data=data,
                              latency_runs=1, verbose=False)
    written = os.path.getsize(os.path.join(report.out_dir, f"{model.name}_int8.tflite"))
    # The same conversion; the files may differ only in the layer names Keras numbers as models are rebuilt.
    assert abs(written - len(exported)) <= 16 and round(written / 1024, 1) == measured["ship_kb"]


def test_a_proposal_s_input_size_resizes_the_images_it_trains_and_ships_on(tmp_path):
    def upsized(hp):  # the transfer space's `input_size`, on a model quick enough for digits
        return spaces.Proposal("small", {"filters": [16, 32], "head": "gap", "dense": [], "dropout": 0.0}, "adam",
                               0.01, input_size=16)

    result = search("digits", space=upsized, max_trials=1, out=str(tmp_path / "s"), objectives="accuracy,kb",
                    **{**QUICK, "epochs": 4})
    trial = result.trials[0]
    assert trial["status"] == "COMPLETED", trial["outcome"]
    assert result.best_trial_model.input_shape == (None, 16, 16, 1)
    # Validated on the digits resized to 16x16 in Keras, and the file measured on the same resized images:
    assert trial["ship_agreement_pct"] >= 95 and abs(trial["ship_accuracy"] - trial["val_accuracy"]) < 0.03
    assert spaces.Proposal("small", {}, input_size=16).input_shape((8, 8, 1)) == (16, 16, 1)
    assert spaces.Proposal("small", {}).input_shape((8, 8, 1)) == (8, 8, 1)


def test_resume_keeps_the_vectors_and_refuses_other_objectives_or_ship(tmp_path):
    out = str(tmp_path / "tune")
    first = search("digits", space=tiny, max_trials=1, out=out, objectives="accuracy,kb", **QUICK)
    with pytest.raises(ValueError, match=r"cannot resume .* with a different objectives: it searched "
                                         r"\['accuracy', 'kb'\]\. Received: objectives=\['accuracy', 'latency'\]"):
        search("digits", space=tiny, max_trials=3, out=out, resume=True, objectives="accuracy,latency", **QUICK)
    with pytest.raises(ValueError, match="with a different ship: it searched 'int8'. Received: ship='float16'"):
        search("digits", space=tiny, max_trials=3, out=out, resume=True, objectives="accuracy,kb", ship="float16",
               **QUICK)
    resumed = search("digits", space=tiny, max_trials=2, out=out, resume=True, objectives="accuracy,kb", **QUICK)
    assert len(resumed.trials) == 2
    for before, after in zip(first.trials, resumed.trials):
        assert (before["ship_accuracy"], before["ship_kb"]) == (after["ship_accuracy"], after["ship_kb"])


@pytest.mark.slow
def test_repeated_trainings_are_averaged_and_their_spread_shown(tmp_path):
    result = search("digits", space=tiny, max_trials=1, out=str(tmp_path / "tune"), objectives="accuracy,kb",
                    executions_per_trial=2, **QUICK)
    row = result.trials[0]
    runs = row["executions"]
    assert len(runs) == 2 and runs[0]["val_accuracy"] != runs[1]["val_accuracy"]  # two seeds, two trainings
    assert row["ship_accuracy"] == pytest.approx(np.mean([run["ship_accuracy"] for run in runs]))
    assert row["val_accuracy"] == pytest.approx(np.mean([run["val_accuracy"] for run in runs]))
    spread = front_module.spread(row, "ship_accuracy")
    assert spread == pytest.approx(np.std([run["ship_accuracy"] for run in runs], ddof=1))
    assert f"{row['val_accuracy']:.4f}±" in result.table() and "±" in result.front_table()


def test_bad_objective_arguments_are_one_line_and_write_nothing(tmp_path, capsys):
    out = str(tmp_path / "tune")
    cases = [(dict(objectives="accuracy,speed"), "Received: objectives='accuracy,speed'"),
             (dict(objectives="accuracy", export_front=True), "Received: objectives='accuracy'"),
             (dict(export_front=True), "Received: objectives=None"),
             (dict(objectives="accuracy,latency", latency_runs=0), "Received: latency_runs=0"),
             (dict(objectives="accuracy,kb", tuner="hyperband"), "Received: tuner='hyperband'"),
             (dict(ship="int4"), "Received: ship='int4'"),
             (dict(executions_per_trial=0), "Received: executions_per_trial=0")]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            search("digits", space=tiny, out=out, **arguments)
        assert "\n" not in str(error.value)
    no_training_images = types.SimpleNamespace(name="val-only", sizes={"train": 0, "val": 10, "test": 10})
    with pytest.raises(ValueError, match="calibrated on training images .* Received: ship='int8'"):
        shipping.check("int8", 50, no_training_images)
    shipping.check("float16", 50, no_training_images)  # needs no calibration
    assert cli.main(["tune", "--objectives", "accuracy", "--export-front", "--out", out]) == 2
    assert capsys.readouterr().err.startswith("keras-cnn: error: export_front exports the Pareto front")
    assert not os.path.exists(out)


# ---------------------------------------------------------------- the spaces of every family

def _proposals(space, count, seed=5):
    """`count` proposals of `space`, sampled as keras-tuner's random search samples them."""
    oracle = keras_tuner.oracles.RandomSearchOracle(objective=keras_tuner.Objective("val_accuracy", "max"),
                                                    max_trials=count, seed=seed)
    hp = keras_tuner.HyperParameters()
    space(hp)
    oracle.update_space(hp)
    samples = []
    for i in range(count):
        values = oracle.populate_space(str(i))["values"]
        sample = hp.copy()
        sample.values = dict(values)
        samples.append(sample)
    return samples


def _builds_or_is_rejected(space, input_shape, count):
    """{"built": n, "rejected": [reasons]} over `count` proposals: each builds (and is compiled) or is refused by
    the hypermodel with a reason before anything is trained."""
    hypermodel = ZooHyperModel(space, input_shape=input_shape, num_classes=10, steps_per_epoch=2, epochs=1)
    outcome, built = {"built": 0, "rejected": []}, {}
    for hp in _proposals(space, count):
        try:
            proposal = hypermodel.proposal(hp)
        except keras_tuner.errors.FailedTrialError as error:
            outcome["rejected"].append(str(error))
            continue
        key = json.dumps([proposal.model, proposal.overrides, proposal.unfreeze], sort_keys=True)
        if key not in built:
            keras.backend.clear_session()
            model = hypermodel.build(hp)
            assert model.output_shape == (None, 10) and model.optimizer is not None
            built[key] = model.count_params()
        outcome["built"] += 1
    return outcome


@pytest.mark.parametrize("name", ["cnn", "resnet", "fast"])
def test_every_proposal_of_a_family_space_builds_or_is_rejected_before_training(name):
    outcome = _builds_or_is_rejected(spaces.SPACES[name], (8, 8, 1), count=12)
    assert outcome["built"] >= 1 and outcome["built"] + len(outcome["rejected"]) == 12
    assert all(reason.startswith("collapsed: needs inputs of at least") for reason in outcome["rejected"])
    if name == "fast":  # three pooled stages after the 2x2 stem need 16x16 or more
        assert outcome["rejected"]


@pytest.mark.slow
def test_every_proposal_of_the_transfer_space_builds_or_is_rejected_before_training(monkeypatch):
    outcome = _builds_or_is_rejected(spaces.transfer, (32, 32, 3), count=10)
    assert all(reason.startswith("no weights: ") and "keras-cnn weights download" in reason
               for reason in outcome["rejected"])
    # Without ImageNet weights in the cache every proposal is refused for them: its architecture still builds.
    monkeypatch.setattr("keras_cnn.tuning.hypermodel._check_imagenet", lambda model, config: None)
    def without_weights(hp):
        return dataclasses.replace(spaces.transfer(hp), weights=None)

    outcome = _builds_or_is_rejected(without_weights, (32, 32, 3), count=10)
    assert outcome["built"] == 10


def test_the_spaces_resolve_by_name():
    for name in ("cnn", "resnet", "fast", "transfer"):
        assert spaces.resolve(name) == (name, spaces.SPACES[name])
    hp = keras_tuner.HyperParameters()
    proposal = spaces.transfer(hp)
    assert proposal.model.endswith("_transfer") and proposal.weights == "imagenet" and proposal.unfreeze == 0
    assert {"backbone", "width_mobilenetv2", "unfreeze", "head_lr", "fine_tune_lr"} <= {p.name for p in hp.space}


def test_the_tune_command_passes_the_new_flags_and_prints_the_front(monkeypatch, capsys):
    received = {}

    def fake_search(data, **arguments):
        received.update(arguments)
        return types.SimpleNamespace(table=lambda: "TABLE", objectives=("accuracy", "kb"), path="OUT",
                                     front_table=lambda: "FRONT", best_trial=None)

    monkeypatch.setattr("keras_cnn.tuning.search", fake_search)
    assert cli.main(["tune", "--objectives", "accuracy,kb", "--ship", "float16", "--export-front",
                     "--executions-per-trial", "3", "--latency-runs", "7", "--space", "fast"]) in (None, 0)
    assert {key: received[key] for key in ("objectives", "ship", "export_front", "executions_per_trial",
                                           "latency_runs", "space")} == {
        "objectives": ("accuracy", "kb"), "ship": "float16", "export_front": True, "executions_per_trial": 3,
        "latency_runs": 7, "space": "fast"}
    printed = capsys.readouterr().out
    assert "Pareto front of accuracy,kb (OUT/front.txt, front.png):\nFRONT" in printed
    with pytest.raises(SystemExit) as exit_status:  # argparse's choices, from keras_cnn.models.options
        cli.main(["tune", "--ship", "int4"])
    assert exit_status.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
