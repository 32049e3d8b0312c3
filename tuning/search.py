"""`search(...)`: find the best zoo CNN for a data set under a budget, with keras-tuner.

A search folder holds everything a search needs to be continued, compared and used:

    search.json                 the settings, and the fingerprint of the space and data that `resume` checks
    trials/trial_NN/            keras-tuner's trial.json and best-epoch checkpoint, and keras_cnn_trial.json:
                                the trial's parameters, MACs, TFLite size and latency, time and outcome
    tensorboard/                one TensorBoard run per trial, with its hyperparameters (HParams dashboard)
    results.txt, results.json   the results table: every trial, including the rejected ones
    best_hyperparameters.json   the best trial's hyperparameters and the zoo model and recipe they mean
    best_trial.keras            the best trial's own checkpoint: trained on the train split, best epoch
    retrained-trial_NN/         the best settings retrained on train + val by `keras_cnn.train`: a normal
                                run folder (`keras_cnn.load`, `keras-cnn export`), evaluated on test
    logs/                       the chief's and workers' output, with distributed=True

Configurations that cannot work are rejected, not fatal: a feature map that would
collapse on this data, or a model over a budget, ends its trial as FAILED before
any training (keras-tuner's `FailedTrialError`) and is listed in the table with its
reason and numbers. keras-tuner would stop a search after 3 FAILED trials in a row,
so its limit is lifted and only crashes (unexpected errors) are counted: 3 in a row
stop the search.

Distributed mode is keras-tuner's: a chief process runs the oracle behind gRPC and
workers ask it for trials, configured by KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP
and KERASTUNER_ORACLE_PORT. `distributed=True` starts the chief (listening on
127.0.0.1 unless KERASTUNER_ORACLE_IP says otherwise) and `workers` workers on this
machine; more machines join with `python -m keras_cnn.tuning FOLDER` (see docs/tuning.md).

keras-tuner's private API is used in this module only, each use pinned by a test in tests/test_tuning.py
("private API") that fails when a keras-tuner release changes it (written for keras-tuner 1.4):
`BaseTuner._populate_initial_space` and `Tuner._build_and_fit_model` are overridden (`ZooTuner`),
`Tuner.__init__` is called past the concrete tuners' constructors, and `HyperbandOracle.end_trial` reads
`_get_size`, `_get_num_brackets` and `_brackets`. (`keras_cnn.tuning.results` reads trials with the public
`keras_tuner.engine.trial.Trial.load`.)
"""
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import keras
import keras_tuner

import keras_cnn
from keras_cnn import io
from keras_cnn.tuning import budgets as budget_checks
from keras_cnn.tuning import results, spaces
from keras_cnn.tuning.hypermodel import ZooHyperModel
from keras_cnn.tuning.results import RECORD_FILE, TRIALS_DIR

SETTINGS_FILE = "search.json"
TENSORBOARD_DIR = "tensorboard"
LOGS_DIR = "logs"
TUNERS = ("random", "bayesian", "hyperband")
DEFAULT_OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")
MAX_CONSECUTIVE_CRASHES = 3
# keras-tuner ends a search after `max_consecutive_failed_trials` FAILED trials in a row; rejected
# configurations are FAILED trials and a space may propose many in a row, so that limit is lifted.
_NO_LIMIT = sys.maxsize
_CHIEF_EXIT_SECONDS = 60  # after its last worker, keras-tuner's chief notices within 20 s that it is done
_STOP_SECONDS = 10


def search(data="digits", *, space="cnn", tuner="random", max_trials=10, epochs=5, max_epochs=9, factor=3,
           objective=DEFAULT_OBJECTIVE, seed=0, out=None, resume=False, batch_size=128, data_options=None,
           max_params=None, max_macs=None, max_tflite_kb=None, max_latency_ms=None, distributed=False,
           workers=2, retrain=True, verbose=1):
    """Search `space` for the best model on `data`, then retrain the winner on train + val.

    Args:
        data: anything `keras_cnn.load_data` takes ("digits", "folder:PATH", "tfds:NAME", (x, y)).
        space: a name in `tuning.spaces.SPACES`, "package.module:function", or a function
            `space(hp) -> tuning.spaces.Proposal`.
        tuner: "random", "bayesian" (both run `max_trials` trials of `epochs` epochs) or
            "hyperband" (successive halving up to `max_epochs` epochs per model, `factor`; no trial count).
        objective: a `keras_tuner.Objective`, or a metric name (minimized if it ends in "loss", else
            maximized); default val_accuracy, maximized.
        seed: seeds the tuner's proposals, each trial's weights (seed + trial number) and the data split.
        out: the search folder (default saved_models/tune-<data>-<time>).
        resume: continue the interrupted search in `out` (refused if its space or data differ).
        batch_size, data_options: as for `keras_cnn.train` (data_options go to `load_data`).
        max_params, max_macs, max_tflite_kb, max_latency_ms: budgets; a model over one is never trained.
        distributed, workers: run keras-tuner's chief and `workers` worker processes on this machine.
        retrain: retrain the best settings on train + val with `keras_cnn.train` (a run folder).
        verbose: keras-tuner's per-trial report and one line per epoch.

    Returns:
        A `SearchResult`; its `table()` lists every trial.
    """
    if "KERASTUNER_TUNER_ID" in os.environ:
        raise ValueError("KERASTUNER_TUNER_ID is set, which would make this process one tuner of a distributed "
                         "search; start the search with distributed=True (--distributed) and extra workers with "
                         "`python -m keras_cnn.tuning FOLDER`. "
                         f"Received: KERASTUNER_TUNER_ID={os.environ['KERASTUNER_TUNER_ID']}")
    space_name, space_function = spaces.resolve(space)
    budgets = budget_checks.check(dict(max_params=max_params, max_macs=max_macs, max_tflite_kb=max_tflite_kb,
                                       max_latency_ms=max_latency_ms))
    _check_arguments(tuner, max_trials, epochs, max_epochs, factor, batch_size, distributed, workers, data,
                     space_name)
    if isinstance(objective, str):
        objective = keras_tuner.Objective(objective, "min" if objective.endswith("loss") else "max")
    data_options = dict(data_options or {})
    image_data = keras_cnn.load_data(data, seed=seed, **data_options)
    if not image_data.sizes["val"]:
        raise ValueError(f"a search needs a validation split to score trials on; {image_data.name} has none. "
                         f"Received: data_options={data_options}")
    if retrain and not image_data.sizes["test"]:
        raise ValueError(f"the retrained model is evaluated on a test split; {image_data.name} has none: keep a "
                         f"test_fraction or pass retrain=False. Received: data_options={data_options}")
    hyperband = tuner == "hyperband"
    settings = {
        "data": data if isinstance(data, str) else None, "data_options": data_options, "space": space_name,
        "tuner": tuner, "objective": {"name": objective.name, "direction": objective.direction},
        "max_trials": None if hyperband else max_trials, "epochs": None if hyperband else epochs,
        "max_epochs": max_epochs if hyperband else None, "factor": factor if hyperband else None,
        "seed": seed, "batch_size": batch_size, "budgets": budgets, "distributed": bool(distributed),
    }
    fingerprint = {"space": _space_fingerprint(space_name, space_function), "data": _data_fingerprint(image_data),
                   **{key: settings[key] for key in ("tuner", "objective", "epochs", "max_epochs", "factor",
                                                     "seed", "batch_size", "budgets")}}
    folder = _open_folder(out, image_data.name, resume, settings, fingerprint)
    if distributed:
        _launch(folder, workers)
    else:
        _run_tuner(folder, settings, image_data, space_function, verbose)
    hypermodel = _hypermodel(settings, image_data, space_function)
    return results.finish(folder, settings, hypermodel, data, image_data, retrain=retrain, verbose=verbose)


def join(folder):
    """Run this process's part of the distributed search in `folder`: the chief's oracle, or a worker's trials.

    The role comes from KERASTUNER_TUNER_ID ("chief" or a worker's id); settings come from the folder's
    search.json, so every process searches the same space on the same data.
    """
    if not os.environ.get("KERASTUNER_TUNER_ID") or not os.environ.get("KERASTUNER_ORACLE_IP"):
        raise ValueError("joining a distributed search needs KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and "
                         f"KERASTUNER_ORACLE_PORT in the environment. Received: folder={folder!r}")
    settings = _read(folder)["settings"]
    image_data = keras_cnn.load_data(settings["data"], seed=settings["seed"], **settings["data_options"])
    _run_tuner(folder, settings, image_data, spaces.resolve(settings["space"])[1], verbose=1)


def _check_arguments(tuner, max_trials, epochs, max_epochs, factor, batch_size, distributed, workers, data,
                     space_name):
    if tuner not in TUNERS:
        raise ValueError(f"`tuner` must be one of {', '.join(TUNERS)}. Received: tuner={tuner!r}")
    numbers = (("epochs", epochs, 1), ("max_trials", max_trials, 1)) if tuner != "hyperband" else \
        (("max_epochs", max_epochs, 1), ("factor", factor, 2))
    for name, value, minimum in (*numbers, ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    if distributed:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"`workers` must be an integer >= 0. Received: workers={workers!r}")
        if not isinstance(data, str):
            raise ValueError("a distributed search loads the data in every process: pass a data spec "
                             f"('digits', 'folder:PATH', ...). Received: data=<{type(data).__name__}>")
        if "<" in space_name:  # a lambda or a function defined inside another one
            raise ValueError("a distributed search imports the space in every process: pass a name or a "
                             f"module-level function. Received: space={space_name!r}")


def _space_fingerprint(name, function):
    """The space's name and every hyperparameter it declares (names, types, ranges, conditions)."""
    hp = keras_tuner.HyperParameters()
    function(hp)
    return io.jsonable({"name": name, "hyperparameters": hp.get_config()["space"]})


def _data_fingerprint(data):
    """Where the data comes from, its classes, shape and split sizes, and a hash of a sample of val images."""
    x, y = data.arrays("val", limit=64)
    return io.jsonable({"spec": data.spec or data.name, "class_names": data.class_names,
                      "image_shape": data.image_shape, "sizes": data.sizes,
                      "val_sample_sha256": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()})


def _open_folder(out, data_name, resume, settings, fingerprint):
    """Create the search folder, or reopen it to resume after checking it searched the same space and data."""
    if resume:
        if out is None or not os.path.isfile(os.path.join(out, SETTINGS_FILE)):
            raise ValueError(f"resume needs the folder of an earlier search (with {SETTINGS_FILE}). "
                             f"Received: out={out!r}")
        previous = _read(out)
        for key, value in io.jsonable(fingerprint).items():
            if previous["fingerprint"].get(key) != value:
                raise ValueError(f"cannot resume {out} with a different {key}: it searched "
                                 f"{_describe(key, previous['fingerprint'].get(key))}. Received: "
                                 f"{key}={_describe(key, value)}")
        if previous["settings"]["distributed"] != settings["distributed"]:
            raise ValueError(f"resume {out} the way it was started (keras-tuner keeps a distributed search's state "
                             f"under its chief). Received: distributed={settings['distributed']}")
    elif out is None:
        from keras_cnn import runs

        out = runs.create(None, "tune", data_name, resume=False).path
    elif os.path.exists(out) and os.listdir(out):
        raise ValueError(f"{out} already exists and is not empty: pass resume=True (--resume) to continue that "
                         f"search or choose another out. Received: out={out!r}")
    io.write_json(os.path.join(out, SETTINGS_FILE), {"settings": settings, "fingerprint": fingerprint})
    return out


def _describe(key, value):
    """A one-line summary of a fingerprint entry for error messages."""
    if key == "space" and value:
        return f"the space {value['name']!r} ({len(value['hyperparameters'])} hyperparameters, digest " \
               f"{hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]})"
    if key == "data" and value:
        return f"{value['spec']} {value['sizes']} (val sample {value['val_sample_sha256'][:8]})"
    return repr(value)


def _read(folder):
    with open(os.path.join(folder, SETTINGS_FILE)) as handle:
        return json.load(handle)


def _hypermodel(settings, data, space_function):
    return ZooHyperModel(space_function, input_shape=data.image_shape, num_classes=data.num_classes,
                         steps_per_epoch=-(-data.sizes["train"] // settings["batch_size"]),
                         epochs=settings["epochs"] or settings["max_epochs"], batch_size=settings["batch_size"],
                         budgets=settings["budgets"])


class ZooTuner(keras_tuner.Tuner):
    """keras-tuner's Tuner as keras_cnn runs it: the space registered without building a model, every trial
    seeded and recorded (numbers and outcome, in keras_cnn_trial.json), and the search stopped after
    repeated crashes rather than after repeated rejections."""

    def __init__(self, oracle, *, base_seed, **kwargs):
        self.base_seed = base_seed
        self.consecutive_crashes = 0
        # Straight to Tuner: the concrete tuners' (RandomSearch, Hyperband) constructors only make their oracle.
        keras_tuner.Tuner.__init__(self, oracle=oracle, **kwargs)

    def _populate_initial_space(self):
        # keras-tuner's own registers the space by building models, the default configuration among them,
        # which may collapse on this data; running the space function registers every hyperparameter.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        record = {"trial": trial.trial_id, "tuner_id": self.tuner_id, "status": "crashed"}
        started = time.perf_counter()
        keras.utils.set_random_seed(self.base_seed + int(trial.trial_id))  # a trial repeats whoever runs it
        try:
            with _custom_gradients_released():
                outcome = super()._build_and_fit_model(trial, *args, record=record, **kwargs)
            record["status"] = "trained"
            self.consecutive_crashes = 0
            return outcome
        except keras_tuner.errors.FailedTrialError as error:
            record.update(status="rejected", reason=str(error))
            raise
        except Exception as error:
            record["reason"] = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            self.consecutive_crashes += 1
            if self.consecutive_crashes >= MAX_CONSECUTIVE_CRASHES:
                raise keras_tuner.errors.FatalRuntimeError(
                    f"{self.consecutive_crashes} trials in a row crashed; the last with {record['reason']}") from error
            raise
        finally:
            record.update(seconds=round(time.perf_counter() - started, 1), rss_mb=_rss_mb())
            io.write_json(os.path.join(self.get_trial_dir(trial.trial_id), RECORD_FILE), record)


@contextlib.contextmanager
def _custom_gradients_released():
    """Unregister the gradient functions that `tf.custom_gradient` registers inside the block.

    Traced in a graph, `tf.custom_gradient` registers its gradient function in TensorFlow's global
    gradient registry under a new name and never removes it; the function holds tensors of the traced
    graph. Keras's train step calls one (the optimizer's all-reduce of the gradients), so each trained
    model's training graph would outlive `clear_session()`: ~2.6 MB a trial on digits (tensorflow#97697,
    #80895). The names are the trial's own, for graphs no one differentiates again once it has trained.
    """
    from tensorflow.python.framework import ops  # the registry has no public way to unregister

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", {})  # {}: nothing to release
    before = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - before:
            if name.startswith("CustomGradient-"):
                del registry[name]


class HyperbandTuner(ZooTuner, keras_tuner.Hyperband):
    """Hyperband's trials: each trains for its bracket's epochs, continuing from a promoted trial's weights."""


class HyperbandOracle(keras_tuner.oracles.HyperbandOracle):
    """Hyperband in which a rejected configuration gives its place in a bracket's first round to a new one.

    keras-tuner's continues a bracket's next round only when more of the previous round's trials
    COMPLETED than the round discards, so a few FAILED (collapsed or over-budget) trials among the first
    round's would stop that bracket's successive halving: its best models would never train longer.
    At most as many places are given back as the plan has first-round trials, so an infeasible space ends.
    """

    @keras_tuner.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        failed = sum(other.status == "FAILED" for other in self.trials.values())
        first_round = self.hyperband_iterations * sum(self._get_size(bracket, 0)
                                                      for bracket in range(self._get_num_brackets()))
        if self.trials[trial.trial_id].status == "FAILED" and failed <= first_round:
            for bracket in self._brackets:
                bracket["rounds"][0] = [entry for entry in bracket["rounds"][0] if entry["id"] != trial.trial_id]
            self.save()


def make_tuner(folder, settings, hypermodel):
    """The keras-tuner tuner of `settings` over `hypermodel`, reloading the state already in `folder`."""
    oracle_settings = dict(objective=keras_tuner.Objective(**settings["objective"]),
                           seed=settings["seed"] + 1,  # keras-tuner draws a random seed for seed=0
                           max_consecutive_failed_trials=_NO_LIMIT)
    if settings["tuner"] == "hyperband":
        oracle = HyperbandOracle(max_epochs=settings["max_epochs"], factor=settings["factor"], **oracle_settings)
    else:
        oracle_class = keras_tuner.oracles.RandomSearchOracle if settings["tuner"] == "random" else \
            keras_tuner.oracles.BayesianOptimizationOracle
        oracle = oracle_class(max_trials=settings["max_trials"], **oracle_settings)
    tuner_class = HyperbandTuner if settings["tuner"] == "hyperband" else ZooTuner
    return tuner_class(oracle, hypermodel=hypermodel, directory=folder, project_name=TRIALS_DIR, overwrite=False,
                       base_seed=settings["seed"])


def _run_tuner(folder, settings, data, space_function, verbose):
    """Run (or continue) the search in this process: every trial, or this process's role in a distributed one."""
    tuner = make_tuner(folder, settings, _hypermodel(settings, data, space_function))
    batch_size, seed = settings["batch_size"], settings["seed"]
    tensorboard = keras.callbacks.TensorBoard(os.path.join(folder, TENSORBOARD_DIR), write_graph=False)
    tuner.search(data.pipeline("train", batch_size=batch_size, training=True, seed=seed),
                 validation_data=data.pipeline("val", batch_size=batch_size),
                 epochs=settings["epochs"] or settings["max_epochs"], callbacks=[tensorboard], verbose=verbose)


def _rss_mb():
    """This process's resident memory in MB (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            return round(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        return None


def _launch(folder, workers):
    """Run keras-tuner's chief and `workers` workers as processes of this machine until the search is done.

    Each process is `python -m keras_cnn.tuning FOLDER` with its KERASTUNER_TUNER_ID; its output goes to
    FOLDER/logs/<id>.log. The chief listens on KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT, by default
    127.0.0.1 and a free port. Every process is stopped by its PID when this returns or fails.
    """
    ip = os.environ.get("KERASTUNER_ORACLE_IP", "127.0.0.1")
    port = os.environ.get("KERASTUNER_ORACLE_PORT") or str(_free_port(ip))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # so the processes run this code
    env = {**os.environ, "KERASTUNER_ORACLE_IP": ip, "KERASTUNER_ORACLE_PORT": port,
           "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    os.makedirs(os.path.join(folder, LOGS_DIR), exist_ok=True)
    processes = {}
    try:
        for tuner_id in ["chief", *(f"tuner{i}" for i in range(1, workers + 1))]:
            with open(os.path.join(folder, LOGS_DIR, f"{tuner_id}.log"), "ab") as log:
                processes[tuner_id] = subprocess.Popen(
                    [sys.executable, "-m", "keras_cnn.tuning", folder], env={**env, "KERASTUNER_TUNER_ID": tuner_id},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        chief = processes["chief"]
        while any(process.poll() is None for tuner_id, process in processes.items() if tuner_id != "chief") \
                or (not workers and chief.poll() is None):
            _check_exits(processes, folder)
            time.sleep(1)
        _check_exits(processes, folder)
        chief.wait(timeout=_CHIEF_EXIT_SECONDS)  # it saved the oracle after the last trial; waiting is a courtesy
    except subprocess.TimeoutExpired:
        pass  # stopped below
    finally:
        for process in processes.values():
            _stop(process)


def _check_exits(processes, folder):
    failed = [tuner_id for tuner_id, process in processes.items() if process.poll() not in (None, 0)]
    if failed:
        raise RuntimeError(f"the distributed search stopped: {', '.join(failed)} failed; see "
                           f"{os.path.join(folder, LOGS_DIR, failed[0] + '.log')}")


def _free_port(ip):
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as probe:
        probe.bind((ip, 0))
        return probe.getsockname()[1]


def _stop(process):
    """Terminate `process` (by its PID) and wait for it; kill it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
