"""`search(...)`: find the best zoo CNN for a data set under a budget, with keras-tuner.

A search folder holds everything a search needs to be continued, compared and used:

    search.json                 the settings (`tuning.config.SearchConfig.settings`), and the fingerprint of
                                the space and data that `resume` checks
    trials/trial_NN/            keras-tuner's trial.json and checkpoint, and keras_cnn_trial.json: the trial's
                                parameters, MACs, its shipped TFLite file's accuracy, size and latency, time
                                and outcome (and each execution's numbers, with executions_per_trial > 1)
    tensorboard/                one TensorBoard run per trial, with its hyperparameters (HParams dashboard)
    results.txt, results.json   the results table: every trial, including the rejected ones
    best_hyperparameters.json   the best trial's hyperparameters and the zoo model and recipe they mean
    best_trial.keras            the best trial's own checkpoint: trained on the train split, best epoch
    retrained-trial_NN/         the best settings retrained on train + val by `keras_cnn.train`: a normal
                                run folder (`keras_cnn.load`, `keras-cnn export`), evaluated on test
    front.txt, front.png        with objectives: the Pareto front, sorted by accuracy, and its picture
    front/trial_NN/             with export_front: each front model's verified export (`keras_cnn.export`)
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

keras-tuner's tuners and oracles, and the private API they use, are in `tuning.tuners` and `tuning.recovery`.
"""
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
from keras_cnn.tuning import results, shipping, spaces
from keras_cnn.tuning.config import DEFAULT_OBJECTIVE, SearchConfig
from keras_cnn.tuning.hypermodel import ZooHyperModel
from keras_cnn.tuning.tuners import make_tuner
from keras_cnn.utils import io

SETTINGS_FILE = "search.json"
TENSORBOARD_DIR = "tensorboard"
LOGS_DIR = "logs"
_CHIEF_EXIT_SECONDS = 60  # after its last worker, keras-tuner's chief notices within 20 s that it is done
_STOP_SECONDS = 10
_FINGERPRINTED = ("tuner", "objective", "epochs", "max_epochs", "factor", "seed", "batch_size", "budgets",
                  "objectives", "ship", "executions_per_trial")  # the settings `resume` refuses to change


def search(data="digits", *, space="cnn", tuner="random", max_trials=10, epochs=5, max_epochs=9, factor=3,
           objective=DEFAULT_OBJECTIVE, seed=0, out=None, resume=False, batch_size=128, data_options=None,
           max_params=None, max_macs=None, max_tflite_kb=None, max_latency_ms=None, objectives=None, ship="int8",
           latency_runs=shipping.LATENCY_RUNS, executions_per_trial=1, export_front=False, distributed=False,
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
        max_params, max_macs, max_tflite_kb, max_latency_ms: budgets. A model over the params or MACs budget
            is never trained; the size and latency budgets apply to the shipped file (before training too when
            it ships float32, whose untrained flatbuffer bounds its size from below).
        objectives: trade-offs to search, e.g. "accuracy,kb,latency" (any of accuracy, kb, latency, macs,
            params: accuracy, size and latency of the shipped file); the results then report the Pareto front,
            and "best" means the first objective's best. None: the single `objective`.
        ship: the TFLite variant every trained trial is converted to and measured as: "int8" (calibrated on
            training images), "float32", "float16" or "dynamic".
        latency_runs: batch-1 LiteRT calls whose median is a shipped file's latency (0: not timed).
        executions_per_trial: trainings of each configuration (keras-tuner's); their numbers are averaged and
            the table shows the spread.
        export_front: export and verify every model on the front (`keras_cnn.export`) into OUT/front/.
        distributed, workers: run keras-tuner's chief and `workers` worker processes on this machine.
        retrain: retrain the best settings on train + val with `keras_cnn.train` (a run folder).
        verbose: keras-tuner's per-trial report and one line per epoch.

    Returns:
        A `SearchResult`; its `table()` lists every trial.
    """
    _refuse_inside_a_distributed_search()
    config = SearchConfig(data, space=space, tuner=tuner, max_trials=max_trials, epochs=epochs, max_epochs=max_epochs,
                          factor=factor, objective=objective, seed=seed, out=out, resume=resume, batch_size=batch_size,
                          data_options=data_options, max_params=max_params, max_macs=max_macs,
                          max_tflite_kb=max_tflite_kb, max_latency_ms=max_latency_ms, objectives=objectives, ship=ship,
                          latency_runs=latency_runs, executions_per_trial=executions_per_trial,
                          export_front=export_front, distributed=distributed, workers=workers, retrain=retrain,
                          verbose=verbose)
    image_data = _load_data(config)
    settings = config.settings()
    folder = _open_folder(config, image_data.name, settings, _fingerprint(settings, config.space_function, image_data))
    image_data.report_skipped(folder)
    if config.distributed:
        _launch(folder, config.workers)
    else:
        _run_tuner(folder, settings, image_data, config.space_function, config.verbose)
    hypermodel = _hypermodel(settings, image_data, config.space_function, measure=False)
    return results.finish(folder, settings, hypermodel, config.data, image_data, retrain=config.retrain,
                          export_front=config.export_front, verbose=config.verbose)


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


def _refuse_inside_a_distributed_search():
    if "KERASTUNER_TUNER_ID" in os.environ:
        raise ValueError("KERASTUNER_TUNER_ID is set, which would make this process one tuner of a distributed "
                         "search; start the search with distributed=True (--distributed) and extra workers with "
                         "`python -m keras_cnn.tuning FOLDER`. "
                         f"Received: KERASTUNER_TUNER_ID={os.environ['KERASTUNER_TUNER_ID']}")


def _load_data(config):
    """The search's data, after the checks that need it: a val split to score trials on, training images for
    int8's calibration, and a test split to evaluate the retrained model on."""
    image_data = keras_cnn.load_data(config.data, seed=config.seed, **config.data_options)
    if not image_data.sizes["val"]:
        raise ValueError(f"a search needs a validation split to score trials on; {image_data.name} has none. "
                         f"Received: data_options={config.data_options}")
    shipping.check(config.ship, config.latency_runs, image_data)
    if config.retrain and not image_data.sizes["test"]:
        raise ValueError(f"the retrained model is evaluated on a test split; {image_data.name} has none: keep a "
                         f"test_fraction or pass retrain=False. Received: data_options={config.data_options}")
    return image_data


def _fingerprint(settings, space_function, image_data):
    """What `resume` compares: the space's hyperparameters, the data, and the settings that change the trials."""
    return {"space": _space_fingerprint(settings["space"], space_function), "data": _data_fingerprint(image_data),
            **{key: settings[key] for key in _FINGERPRINTED}}


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


def _open_folder(config, data_name, settings, fingerprint):
    """Create the search folder, or reopen it to resume after checking it searched the same space and data."""
    out = config.out
    if config.resume:
        if out is None or not os.path.isfile(os.path.join(out, SETTINGS_FILE)):
            raise ValueError(f"resume needs the folder of an earlier search (with {SETTINGS_FILE}). "
                             f"Received: out={out!r}")
        previous = _read(out)
        for key, value in io.jsonable(fingerprint).items():
            if previous["fingerprint"].get(key) != value:
                raise ValueError(f"cannot resume {out} with a different {key}: it searched "
                                 f"{_describe(key, previous['fingerprint'].get(key))}. Received: "
                                 f"{key}={_describe(key, value)}")
        if previous["settings"]["distributed"] != config.distributed:
            raise ValueError(f"resume {out} the way it was started (keras-tuner keeps a distributed search's state "
                             f"under its chief). Received: distributed={config.distributed}")
    elif out is None:
        from keras_cnn.artifacts import runs

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


def _hypermodel(settings, data, space_function, measure=True):
    """The search's hypermodel; `measure`: with the shipped-file measurement trials need (not to read results)."""
    ships = shipping.prepare(data, settings["ship"], settings["latency_runs"]) if measure else None
    return ZooHyperModel(space_function, input_shape=data.image_shape, num_classes=data.num_classes,
                         steps_per_epoch=-(-data.sizes["train"] // settings["batch_size"]),
                         epochs=settings["epochs"] or settings["max_epochs"], batch_size=settings["batch_size"],
                         budgets=settings["budgets"], shipping=ships, metrics=bool(settings["objectives"]))


def _run_tuner(folder, settings, data, space_function, verbose):
    """Run (or continue) the search in this process: every trial, or this process's role in a distributed one."""
    tuner = make_tuner(folder, settings, _hypermodel(settings, data, space_function))
    batch_size, seed = settings["batch_size"], settings["seed"]
    tensorboard = keras.callbacks.TensorBoard(os.path.join(folder, TENSORBOARD_DIR), write_graph=False)
    tuner.search(data.pipeline("train", batch_size=batch_size, training=True, seed=seed),
                 validation_data=data.pipeline("val", batch_size=batch_size),
                 epochs=settings["epochs"] or settings["max_epochs"], callbacks=[tensorboard], verbose=verbose)


def _launch(folder, workers):
    """Run keras-tuner's chief and `workers` workers as processes of this machine until the search is done.

    Each process is `python -m keras_cnn.tuning FOLDER` with its KERASTUNER_TUNER_ID; its output goes to
    FOLDER/logs/<id>.log. The chief listens on KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT, by default
    127.0.0.1 and a free port. Every process is stopped by its PID when this returns or fails.
    """
    ip = os.environ.get("KERASTUNER_ORACLE_IP", "127.0.0.1")
    port = os.environ.get("KERASTUNER_ORACLE_PORT") or str(_free_port(ip))
    root = os.path.dirname(os.path.dirname(os.path.abspath(keras_cnn.__file__)))  # the processes run this keras_cnn
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
