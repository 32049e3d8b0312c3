"""A finished search folder's results: one row per trial, the table, the best model, and its retraining.

Rows merge what keras-tuner's oracle recorded (status, hyperparameters, score)
with what the trial recorded itself (`keras_cnn_trial.json`: parameters, MACs,
TFLite size, latency, time, why it was rejected), so rejected and over-budget
trials are listed with their numbers. The best trial is the best score among
COMPLETED trials only: rejected trials are FAILED and can never be chosen.

Two models come out of a search, and they are kept apart:

- `best_trial.keras`: the best trial's own checkpoint, trained on the train split
  only, at its best validation epoch (what the search measured);
- `retrained-trial_NN/`: the same settings trained again by `keras_cnn.train` on
  train + val (loaded with val_fraction=0, for the best trial's number of epochs,
  the last-best training-accuracy epoch kept as there is no validation split left)
  and evaluated on test: a normal run folder, the model to use.

With val_fraction=0 the test split is the same one where the data brings its own
(a test/ folder, a tfds test split); where test is carved from the images by
fraction (digits, arrays, a folder without test/), carving without val gives a
different test split, which holds the search's val images. The best-trial
checkpoint is evaluated on that same split, so the two test accuracies compare.
"""
import dataclasses
import glob
import json
import os

from keras_cnn.tuning.front import cell
from keras_cnn.utils import io

TRIALS_DIR = "trials"  # keras-tuner's project folder inside the search folder
RECORD_FILE = "keras_cnn_trial.json"  # written by each trial next to keras-tuner's trial.json
TABLE_FILE = "results.txt"
RESULTS_FILE = "results.json"
BEST_FILE = "best_hyperparameters.json"
BEST_TRIAL_MODEL = "best_trial.keras"
CHECKPOINT = "checkpoint.weights.h5"  # keras-tuner's name for a trial's best-epoch weights


@dataclasses.dataclass
class SearchResult:
    """What `search` returns. `best_model` is the retrained one; `best_trial_model` the search's own checkpoint."""

    path: str  # the search folder
    objective: dict  # {"name": ..., "direction": "max" or "min"}
    trials: list  # one dict per trial, as in results.json
    best_trial: dict  # the best trial's row; None when no trial completed (all rejected or over budget)
    best_hyperparameters: dict  # its active hyperparameter values
    proposal: object  # tuning.spaces.Proposal: what they build (zoo model, overrides) and how they train
    best_trial_model: object  # the best trial's checkpoint: train split only, best epoch (best_trial.keras)
    best_trial_test_accuracy: float  # on the same test split as the retrained model
    run_dir: str  # the retrained model's run folder (None with retrain=False)
    best_model: object  # the retrained model (the best trial's checkpoint with retrain=False)
    test_accuracy: float  # best_model's test accuracy
    objectives: tuple = None  # a search with several objectives: their names
    front: list = None  # its Pareto front's rows, the most accurate first (with their "export" entry if exported)
    ship: str = "int8"  # the TFLite variant every trial was measured as

    def table(self):
        """Every trial: validation and shipped accuracy, parameters, MACs, shipped KB, latency, time, outcome,
        hyperparameters."""
        return table(self.trials, self.objective)

    def front_table(self):
        """The Pareto front of `objectives` (None for a single-objective search)."""
        from keras_cnn.tuning import front

        return front.table(self.front, self.objectives, self.ship) if self.objectives else None


def finish(folder, settings, hypermodel, data, image_data, *, retrain, export_front=False, verbose=0):
    """Write the results of the search in `folder` (with its Pareto front if it has several objectives, each
    front model exported with `export_front`) and, if `retrain`, retrain its best settings on train + val."""
    import keras_cnn
    from keras_cnn.tuning.hypermodel import rebuild

    objective, objectives = settings["objective"], settings.get("objectives")
    rows = trial_rows(folder)
    best = best_row(rows, objective)
    summary = {"objective": objective, "objectives": objectives, "ship": settings.get("ship"),
               "best_trial": best and best["trial"], "trials": rows}
    front = _front(folder, summary, hypermodel, image_data, settings, export_front) if objectives else None
    _write(folder, summary, rows)  # before retraining: a failure there still leaves the table
    extra = dict(objectives=objectives and tuple(objectives), front=front, ship=settings.get("ship"))
    if best is None:
        return SearchResult(folder, objective, rows, None, {}, None, None, None, None, None, None, **extra)

    trial = load_trial(folder, best["trial"])
    proposal = hypermodel.proposal(trial.hyperparameters)
    best_trial_model = rebuild(hypermodel, trial.hyperparameters,
                               os.path.join(folder, TRIALS_DIR, f"trial_{best['trial']}", CHECKPOINT))
    io.save_model(best_trial_model, os.path.join(folder, BEST_TRIAL_MODEL))
    epochs = best["epochs"] or settings["epochs"]
    io.write_json(os.path.join(folder, BEST_FILE), {
        "trial": best["trial"], "objective": {**objective, "value": best["score"]},
        "hyperparameters": best["hyperparameters"], "model": proposal.model, "overrides": proposal.overrides,
        "recipe": proposal.recipe, "learning_rate": proposal.learning_rate, "epochs": epochs,
        "batch_size": settings["batch_size"], "input_shape": hypermodel.input_shape,
    })
    run_dir = model = test_accuracy = None
    test_data = image_data
    if retrain and proposal.unfreeze:  # `keras_cnn.train` unfreezes only in a second phase, which trials do not run
        retrain = False
        summary["retrain_skipped"] = "the best trial trained with unfrozen backbone blocks from the start"
    if retrain:
        options = {**settings["data_options"], "val_fraction": 0.0}
        test_data = keras_cnn.load_data(data, seed=settings["seed"], **options)
        run_dir = os.path.join(folder, f"retrained-trial_{best['trial']}")
        model, test_accuracy = _retrain(run_dir, proposal, test_data, options, epochs, settings, verbose)
    best_trial_test_accuracy = keras_cnn.evaluate(best_trial_model, test_data, split="test").accuracy \
        if test_data.sizes["test"] else None
    summary.update(best_trial_model=BEST_TRIAL_MODEL, best_trial_test_accuracy=best_trial_test_accuracy,
                   retrained=run_dir and os.path.basename(run_dir), retrained_test_accuracy=test_accuracy)
    _write(folder, summary, rows)
    return SearchResult(folder, objective, rows, best, best["hyperparameters"], proposal, best_trial_model,
                        best_trial_test_accuracy, run_dir, model if retrain else best_trial_model,
                        test_accuracy if retrain else best_trial_test_accuracy, **extra)


def _front(folder, summary, hypermodel, image_data, settings, export):
    """The front's rows (exported with `export`), its table and picture written, its trial ids in `summary`."""
    from keras_cnn.tuning import front as pareto_front

    objectives = summary["objectives"]
    front = pareto_front.front_rows(summary["trials"], objectives)
    if export:
        def trial_model(trial_id):
            from keras_cnn.tuning.hypermodel import rebuild

            return rebuild(hypermodel, load_trial(folder, trial_id).hyperparameters,
                           os.path.join(folder, TRIALS_DIR, f"trial_{trial_id}", CHECKPOINT))

        pareto_front.export(folder, front, trial_model, image_data, settings)
    summary["front"] = [row["trial"] for row in front]
    summary["front_exports"] = {row["trial"]: row["export"] for row in front if row.get("export")}
    io.write_text(os.path.join(folder, pareto_front.FRONT_TABLE),
                  pareto_front.table(front, objectives, settings["ship"]) + "\n")
    pareto_front.picture(summary["trials"], front, os.path.join(folder, pareto_front.FRONT_PICTURE), settings["ship"])
    return front


def _retrain(run_dir, proposal, data, data_options, epochs, settings, verbose):
    """(model, test accuracy) of `keras_cnn.train` with the best settings: a finished run folder is reused,
    an interrupted one resumed."""
    import keras_cnn
    from keras_cnn.artifacts import runs

    config = runs.open_run(run_dir).config if runs.Run(run_dir).has_config() else {}
    if config.get("test_accuracy") is not None:
        return keras_cnn.load(run_dir).model, config["test_accuracy"]
    run = keras_cnn.train(proposal.model, data, epochs=epochs, batch_size=settings["batch_size"],
                          recipe=proposal.recipe, learning_rate=proposal.learning_rate, precision="float32",
                          weights=proposal.weights,
                          seed=settings["seed"], out=run_dir, resume=bool(config), data_options=data_options,
                          input_shape=proposal.input_shape(data.image_shape), verbose=2 if verbose else 0,
                          **proposal.overrides)
    return run.model, run.metrics.accuracy



def trial_rows(folder):
    """One dict per trial of the search in `folder`, in trial order."""
    rows = []
    for path in glob.glob(os.path.join(folder, TRIALS_DIR, "trial_*", "trial.json")):
        trial = _trial_class().load(path)
        record = _json(os.path.join(os.path.dirname(path), RECORD_FILE))
        hp = trial.hyperparameters
        rows.append({
            "trial": trial.trial_id, "status": trial.status, "outcome": _outcome(trial, record),
            "score": trial.score, "val_accuracy": record.get("val_accuracy"),
            **{key: record.get(key) for key in ("params", "macs", "tflite_kb", "latency_ms", "ship", "ship_accuracy",
                                                "ship_kb", "ship_latency_ms", "ship_agreement_pct", "latency_threads",
                                                "cpus", "executions", "epochs", "seconds", "tuner_id", "rss_mb")},
            "hyperparameters": {name: value for name, value in hp.values.items()
                                if not name.startswith("tuner/") and hp.is_active(name)},
        })
    return sorted(rows, key=lambda row: int(row["trial"]))


def _outcome(trial, record):
    if trial.status == "COMPLETED":
        return "ok"
    if trial.status == "RUNNING":
        return "unfinished"
    if record.get("reason"):
        return record["reason"]
    if record.get("status") == "trained":
        return "the objective was not a number (diverged)"
    return (trial.message or trial.status).strip().splitlines()[-1]


def best_row(rows, objective):
    """The completed trial with the best score (the first of equals), or None."""
    completed = [row for row in rows if row["status"] == "COMPLETED"]
    sign = -1 if objective["direction"] == "max" else 1
    return min(completed, key=lambda row: (sign * row["score"], int(row["trial"])), default=None)


def table(rows, objective):
    """The trials as aligned text, the best one marked with *; `objective` is {"name": ..., "direction": ...}."""
    from keras_cnn.utils.tables import format_table

    best = best_row(rows, objective)
    score = objective["name"] not in ("val_accuracy", "ship_accuracy", "ship_kb", "ship_latency_ms", "macs", "params")
    ship = next((row["ship"] for row in rows if row.get("ship")), "shipped")
    header = ["trial", *([objective["name"]] if score else []), "val acc", f"{ship} acc", "params", "MACs",
              f"{ship} KB", "ms b=1", "epochs", "s", "outcome", "hyperparameters"]
    lines = []
    for row in rows:
        lines.append([
            row["trial"] + ("*" if best and row["trial"] == best["trial"] else ""),
            *([_number(row["score"], "{:.4f}")] if score else []),
            cell(row, "val_accuracy", "{:.4f}"), cell(row, "ship_accuracy", "{:.4f}"),
            _number(row["params"], "{:,}"), _number(row["macs"], "{:,}"),
            cell(row, "ship_kb", "{:.1f}"), cell(row, "ship_latency_ms", "{:.3f}"),
            _number(row["epochs"], "{}"), _number(row["seconds"], "{:.0f}"), row["outcome"],
            " ".join(f"{key}={_number(value, '{:.3g}') if isinstance(value, float) else value}"
                     for key, value in row["hyperparameters"].items()),
        ])
    return format_table(header, lines, right=range(1, len(header) - 2))


def _number(value, template):
    if value is None:
        return "-"
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        return template.format(value)
    return str(value)


def _write(folder, summary, rows):
    io.write_json(os.path.join(folder, RESULTS_FILE), summary)
    io.write_text(os.path.join(folder, TABLE_FILE), table(rows, summary["objective"]) + "\n")


def load_trial(folder, trial_id):
    return _trial_class().load(os.path.join(folder, TRIALS_DIR, f"trial_{trial_id}", "trial.json"))


def _trial_class():
    from keras_tuner.engine.trial import Trial

    return Trial


def _json(path):
    """The JSON object in `path`, or {} if there is no such file."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}
