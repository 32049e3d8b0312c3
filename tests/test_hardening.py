"""Never lose finished work: kill and resume (slow), atomic artifacts, safe loading, concurrent run folders.

The kill-and-resume tests run `keras-cnn` in subprocesses, SIGKILL them once the run folder shows a finished
epoch (or trial), resume with `--resume`, and check the finished folder. Every process a test starts is
killed by its own PID in a `finally` block.
"""
import contextlib
import functools
import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import keras
import pytest

import keras_cnn
from keras_cnn import cli
from keras_cnn.artifacts import runs
from keras_cnn.utils import io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def keras_cnn_command(*args):
    return [sys.executable, "-m", "keras_cnn.cli", *map(str, args)]


def temporaries(folder):
    """Every file under `folder` named like an `io.atomic_path` temporary."""
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if io.is_temporary(f)]


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    result = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                result[os.path.relpath(os.path.join(directory, name), folder)] = handle.read()
    return result


def read_json(path):
    """The JSON in `path`, or None while it is missing or half-written."""
    with contextlib.suppress(OSError, ValueError):
        with open(path) as handle:
            return json.load(handle)
    return None


@contextlib.contextmanager
def started(command, log, **kwargs):
    """Popen `command` with its output in the file `log`; SIGKILL it by PID on the way out."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, **kwargs)
        try:
            yield process
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


def kill_when(process, condition, log, timeout=600):
    """Poll `condition()` every 20 ms and SIGKILL `process` as soon as it holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"finished before it could be killed:\n{open(log).read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


# ---------------------------------------------------------------- kill and resume
TRAIN = ("train", "small", "--epochs", 8, "--batch-size", 16, "--precision", "float32", "--set", "width=0.5")


@pytest.mark.slow
def test_a_killed_training_run_resumes_losing_at_most_the_epoch_in_progress(tmp_path):
    out, planned = tmp_path / "run", 8
    backup = out / "backup" / "training_metadata.json"

    def epochs_done():
        return (read_json(backup) or {}).get("epoch", 0)

    with started(keras_cnn_command(*TRAIN, "--out", out), tmp_path / "first.log", cwd=tmp_path) as process:
        kill_when(process, lambda: epochs_done() >= 2, tmp_path / "first.log")
    done = epochs_done() or read_json(f"{backup}.bkp")["epoch"]  # Keras falls back to .bkp if the kill cut it
    assert 2 <= done < planned

    with started(keras_cnn_command(*TRAIN, "--out", out, "--resume"), tmp_path / "resumed.log",
                 cwd=tmp_path) as process:
        assert process.wait(timeout=900) == 0, open(tmp_path / "resumed.log").read()[-3000:]
    rerun = [int(epoch) for epoch in re.findall(rf"^Epoch (\d+)/{planned}$", open(tmp_path / "resumed.log").read(),
                                                 re.MULTILINE)]
    assert rerun == list(range(done + 1, planned + 1))  # only the epochs not finished before the kill
    history = runs.read_history(out / "history.csv")
    config = json.loads((out / "config.json").read_text())
    assert len(history["loss"]) == config["epochs_run"] == planned and 1 <= config["best_epoch"] <= planned
    assert not temporaries(out) and not (out / "backup").exists() and not (out / "best.json").exists()
    assert keras_cnn.load(out).model.name == "small"


TINY_SPACE = '''
from keras_cnn.tuning.spaces import Proposal


def tiny(hp):
    """One or two stages of a few channels: quick trials on digits."""
    stages = hp.Int("stages", 1, 2)
    width = hp.Choice("width", [4, 8])
    return Proposal("small", {"filters": [width * 2 ** i for i in range(stages)], "head": "gap", "dense": [],
                              "dropout": 0.0}, "adam", hp.Float("lr", 3e-3, 3e-2, sampling="log"))
'''


@pytest.mark.slow
def test_a_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
    (tmp_path / "hardening_space.py").write_text(textwrap.dedent(TINY_SPACE))
    out, planned = tmp_path / "tune", 5
    tune = keras_cnn_command("tune", "--data", "digits", "--space", "hardening_space:tiny", "--max-trials", planned,
                             "--epochs", 3, "--seed", 3, "--out", out, "--no-retrain", "--quiet")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO])}

    def finished_trials():
        trials = [read_json(path) or {} for path in glob.glob(str(out / "trials" / "trial_*" / "trial.json"))]
        return {trial["trial_id"] for trial in trials if trial.get("status") == "COMPLETED"}

    with started(tune, tmp_path / "first.log", cwd=tmp_path, env=environment) as process:
        kill_when(process, lambda: len(finished_trials()) >= 2, tmp_path / "first.log")
    before = finished_trials()
    records = {trial: (out / "trials" / f"trial_{trial}" / "trial.json").read_bytes() for trial in before}

    with started([*tune, "--resume"], tmp_path / "resumed.log", cwd=tmp_path, env=environment) as process:
        assert process.wait(timeout=900) == 0, open(tmp_path / "resumed.log").read()[-3000:]
    rows = json.loads((out / "results.json").read_text())["trials"]
    assert len(rows) == planned and len({row["trial"] for row in rows}) == planned
    assert all(row["status"] == "COMPLETED" for row in rows)
    for trial, record in records.items():  # finished before the kill: not trained again
        assert (out / "trials" / f"trial_{trial}" / "trial.json").read_bytes() == record
    assert not temporaries(out)


def tiny_search(tmp_path, monkeypatch):
    """`search(max_trials=N, resume=...)`: TINY_SPACE's search of digits in tmp_path/tune, in this process."""
    (tmp_path / "hardening_space.py").write_text(textwrap.dedent(TINY_SPACE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return functools.partial(keras_cnn.tune, "digits", space="hardening_space:tiny", epochs=1, seed=3,
                             out=str(tmp_path / "tune"), retrain=False, verbose=0)


def warnings_said(monkeypatch, caplog):
    """The keras_cnn log lines `caplog` will hold (the command line's set-up stops them reaching the root logger)."""
    logger = logging.getLogger("keras_cnn")
    monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    return lambda: [record.getMessage() for record in caplog.records]


def test_a_search_killed_while_keras_tuner_wrote_its_state_resumes(tmp_path, monkeypatch, caplog):
    """The window the kill test above hits by chance, on purpose: oracle.json cut short, tuner0.json empty and
    the temporary of an interrupted write left, as a kill while keras-tuner wrote them left them."""
    from keras_tuner.src import utils as keras_tuner_utils

    search, in_place = tiny_search(tmp_path, monkeypatch), []
    save_json = keras_tuner_utils.save_json
    monkeypatch.setattr(keras_tuner_utils, "save_json",
                        lambda path, data: in_place.append(path) or save_json(path, data))
    search(max_trials=2)
    assert not [path for path in in_place if os.path.basename(path) in ("oracle.json", "trial.json", "tuner0.json")]
    trials = tmp_path / "tune" / "trials"
    finished = {path: path.read_bytes() for path in trials.glob("trial_*/trial.json")}
    oracle = (trials / "oracle.json").read_bytes()
    (trials / "oracle.json").write_bytes(oracle[:len(oracle) // 2])
    (trials / "tuner0.json").write_bytes(b"")
    (trials / ".oracle.json.k1ll3d00.json").write_bytes(oracle[:10])
    said = warnings_said(monkeypatch, caplog)

    result = search(max_trials=3, resume=True)
    assert [(row["trial"], row["status"]) for row in result.trials] == [("0", "COMPLETED"), ("1", "COMPLETED"),
                                                                       ("2", "COMPLETED")]
    assert {path: path.read_bytes() for path in finished} == finished  # not trained again
    assert f"{trials / 'oracle.json'} was cut short (the search was stopped while keras-tuner wrote it): rebuilt " \
           "from the files of its 2 trials" in said()
    assert f"{trials / 'tuner0.json'} was empty (the search was stopped while keras-tuner wrote it): written again " \
           "(keras-tuner keeps no state in it)" in said()
    assert not temporaries(tmp_path / "tune")


def test_a_trial_whose_file_was_cut_short_stays_failed_and_the_search_goes_on(tmp_path, monkeypatch, caplog):
    search = tiny_search(tmp_path, monkeypatch)
    search(max_trials=2)
    trials = tmp_path / "tune" / "trials"
    first = (trials / "trial_0" / "trial.json").read_bytes()
    cut = trials / "trial_1" / "trial.json"
    cut.write_bytes(cut.read_bytes()[:40])
    said = warnings_said(monkeypatch, caplog)

    rows = {row["trial"]: row for row in search(max_trials=3, resume=True).trials}
    assert [rows[trial]["status"] for trial in "012"] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert rows["1"]["outcome"].startswith("lost: its trial.json was cut short") and not rows["1"]["hyperparameters"]
    assert (trials / "trial_0" / "trial.json").read_bytes() == first
    assert any(line.startswith(f"{cut} was cut short") and "its settings are lost" in line for line in said())


def test_hyperbands_brackets_are_rebuilt_from_its_trials_as_it_kept_them(tmp_path):
    """Hyperband's schedule, the one part of an oracle.json its trials' files do not hold as such, rebuilt after
    every trial of a whole search (rejected trials among them) equals what the oracle kept."""
    import keras_tuner
    import numpy as np
    from keras_cnn.tuning.tuners import HyperbandOracle

    oracle = HyperbandOracle(objective=keras_tuner.Objective("score", "max"), max_epochs=9, factor=3, seed=1,
                             max_consecutive_failed_trials=10**9)
    oracle._set_project_dir(str(tmp_path), "trials")
    space = keras_tuner.HyperParameters()
    space.Float("x", 0, 1)
    oracle.update_space(space)
    rng = np.random.default_rng(0)

    def incomplete(state):
        return [b for b in state["brackets"]
                if len(b["rounds"][-1]) != oracle._get_size(b["bracket_num"], len(b["rounds"]) - 1)]

    statuses = []
    while (trial := oracle.create_trial("tuner0")).status == "RUNNING":
        oracle.update_trial(trial.trial_id, {"score": float(rng.random())})
        trial.status = "FAILED" if rng.random() < 0.25 else "COMPLETED"
        statuses.append(trial.status)
        oracle.end_trial(trial)
        kept = oracle.get_state()
        rebuilt = oracle.rebuilt_brackets(sorted(oracle.trials.values(), key=lambda t: int(t.trial_id)))
        assert incomplete(rebuilt) == incomplete(kept), trial.trial_id
        assert (rebuilt["current_bracket"], rebuilt["current_iteration"]) == (kept["current_bracket"],
                                                                              kept["current_iteration"])
    assert len(statuses) > 20 and "FAILED" in statuses


# ---------------------------------------------------------------- atomic artifacts
def test_an_export_failing_while_installing_leaves_the_previous_export(tmp_path, monkeypatch):
    exporting = sys.modules[keras_cnn.export.__module__]
    arguments = dict(formats="tflite", quantize="float32", class_names=list("abcdefghij"), latency_runs=1,
                     verbose=False)
    keras_cnn.export(keras_cnn.build("small", input_shape=(8, 8, 1), width=0.25), tmp_path, **arguments)
    before = snapshot(tmp_path)
    writes = []

    def disk_full_at_the_report(path, data):  # after the sidecar
        writes.append(path)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        io.write_json(path, data)

    monkeypatch.setattr(exporting, "write_json", disk_full_at_the_report)
    retrained = keras_cnn.build("small", input_shape=(8, 8, 1), width=0.25)  # other weights: other files
    with pytest.raises(OSError, match="No space left"):
        keras_cnn.export(retrained, tmp_path, **arguments)
    assert snapshot(tmp_path) == before  # every file as it was, nothing new (no staging folder either)


def test_a_checkpoint_failing_half_way_leaves_the_previous_one(tmp_path, monkeypatch, digits):
    out, saved, save = tmp_path / "run", [], keras.Model.save

    def disk_full_at_the_second_checkpoint(model, filepath, *args, **kwargs):
        saved.append(snapshot(out))
        if len(saved) == 2:
            with open(filepath, "wb") as handle:
                handle.write(b"PK\x03\x04 half a zip")
            raise OSError(28, "No space left on device")
        return save(model, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", disk_full_at_the_second_checkpoint)
    with pytest.raises(OSError, match="No space left"):
        keras_cnn.train("small", digits, out=str(out), epochs=6, batch_size=64, precision="float32", verbose=0,
                        width=0.25)
    after = snapshot(out)
    for name in ("model.keras", "config.json", "labels.txt", "best.json"):
        assert after[name] == saved[1][name]  # as the previous checkpoint left them
    assert not temporaries(out)
    assert keras_cnn.load_model(out / "model.keras").name == "small"


def test_temporaries_are_recognised_and_only_they_are_removed(tmp_path):
    names = []
    for final in ("model.keras", "config.json", "labels.txt", "README"):
        with pytest.raises(KeyboardInterrupt), io.atomic_path(tmp_path / final) as temporary:
            names.append(os.path.basename(temporary))
            raise KeyboardInterrupt
    assert all(map(io.is_temporary, names))
    kept = ["model.keras", ".DS_Store", ".model.keras", ".model.keras.abc.keras", ".config.json.abcdefgh.keras"]
    for name in [*names, *kept]:
        (tmp_path / name).write_text("x")
    io.remove_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_an_epoch_logged_twice_counts_once_with_its_last_row(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,accuracy,loss\n0,0.5,1.0\n1,0.6,0.9\n1,0.7,0.8\n2,0.8,0.7\n")
    assert runs.read_history(tmp_path / "history.csv") == {"accuracy": [0.5, 0.7, 0.8], "loss": [1.0, 0.8, 0.7]}


# ---------------------------------------------------------------- safe loading
def lambda_model(path, marker):
    """A .keras file whose Lambda layer runs Python code (creating `marker`) whenever the model is rebuilt."""
    inputs = keras.Input((8, 8, 1))
    touched = keras.layers.Lambda(lambda x: (open(marker, "w").close(), x)[1])(inputs)  # noqa: SIM115
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(touched))
    keras.Model(inputs, outputs).save(path)
    os.remove(marker)


def test_a_model_carrying_code_is_refused_without_running_it(tmp_path, capsys):
    marker = str(tmp_path / "code_ran")
    lambda_model(tmp_path / "lambda.keras", marker)
    with pytest.raises(ValueError, match=r"refusing to load .*lambda.keras: it contains code \(a Lambda layer"):
        keras_cnn.load_model(tmp_path / "lambda.keras")
    run = runs.Run(tmp_path / "run", config={"model": "small", "data": "digits"})
    run.write_config()
    run.write_labels(map(str, range(10)))
    os.replace(tmp_path / "lambda.keras", tmp_path / "run" / "model.keras")
    for command in (["predict", tmp_path / "run" / "model.keras", "digit.png"], ["evaluate", tmp_path / "run"]):
        assert cli.main(list(map(str, command))) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("keras-cnn: error: refusing to load") and stderr.count("\n") == 1
    assert not os.path.exists(marker)  # the Lambda's code never ran


UNSAFE = re.compile(r"\b(import|from) (c?pickle|cloudpickle|dill|joblib|marshal|shelve)\b|pickle\.|allow_pickle|"
                    r"\bnp\.load\(|numpy\.load\(|torch\.load|yaml\.(unsafe_)?load|safe_mode\s*=\s*False|"
                    r"unsafe_deserialization|\beval\(|\bexec\(")


def test_nothing_in_the_product_unpickles_or_loads_code():
    sources = glob.glob(os.path.join(REPO, "keras_cnn", "**", "*.py"), recursive=True) + \
        glob.glob(os.path.join(REPO, "tuning", "*.py"))
    assert len(sources) > 20
    offending, loaders = [], []
    for path in sources:
        for number, line in enumerate(open(path), 1):
            if UNSAFE.search(line.split("#")[0]):
                offending.append(f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}")
            if re.search(r"keras\.(saving|models)\.load_model\(", line):
                loaders.append((os.path.relpath(path, REPO), line.strip()))
    assert offending == []
    assert loaders == [("keras_cnn/utils/io.py", "return keras.saving.load_model(path, safe_mode=True)")]


# ---------------------------------------------------------------- concurrent run folders
RESERVE = """
import sys, time
from keras_cnn.utils.io import reserve_folder
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every process starts at the same moment
print("\\n".join(reserve_folder(sys.argv[1]) for _ in range(25)))
"""


def test_processes_reserving_the_same_folder_name_at_once_never_share_one(tmp_path):
    base, start = str(tmp_path / "saved_models" / "small-digits-20260101-120000"), time.time() + 3
    processes = [subprocess.Popen([sys.executable, "-c", RESERVE, base, str(start)], stdout=subprocess.PIPE, text=True)
                 for _ in range(4)]
    try:
        outputs = [process.communicate(timeout=60)[0].split() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
    assert all(process.returncode == 0 for process in processes)
    folders = [folder for output in outputs for folder in output]
    assert len(folders) == len(set(folders)) == 100
    assert sorted(os.listdir(tmp_path / "saved_models")) == sorted(os.path.basename(f) for f in folders)


def test_training_runs_started_together_get_their_own_default_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    barrier, folders = threading.Barrier(8), []

    def start_a_run():
        barrier.wait()
        folders.extend(runs.create(None, "small", "digits", resume=False).path for _ in range(5))

    threads = [threading.Thread(target=start_a_run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(folders) == len(set(folders)) == 40
    assert all(folder.startswith(os.path.join("saved_models", "small-digits-")) for folder in folders)
    assert all(os.path.isdir(folder) and not os.listdir(folder) for folder in folders)
