"""keras-tuner's tuners and oracles as a keras_cnn search runs them (`make_tuner`).

`ZooTuner` registers the space without building a model, seeds and records every trial
(keras_cnn_trial.json: numbers, outcome, each execution's shipped-file measurements) and stops
after repeated crashes rather than repeated rejections. `HyperbandOracle` gives a rejected
configuration's place back; `ParEGOOracle` steers a Bayesian search with several objectives.

keras-tuner's private API is used here and in `tuning.recovery` only, each use pinned by a test in
tests/test_tuning.py ("private API"): `BaseTuner._populate_initial_space` and
`Tuner._build_and_fit_model` are overridden (`ZooTuner`), `Tuner.__init__` is called past the concrete
tuners' constructors, and `HyperbandOracle.end_trial` reads `_get_size`, `_get_num_brackets` and
`_brackets`; `ParEGOOracle` reads the oracle's `_random_state`. Every tuner and oracle writes its state files
atomically and repairs cut-short ones before reloading them (`tuning.recovery`): `BaseTuner.save`,
`Oracle.save` and `Oracle._save_trial` are overridden, and the repair reads `_compute_values_hash` and, for
Hyperband, `_get_epochs`, `_get_num_brackets`, `_current_bracket` and `_current_iteration`.
"""
import os
import sys
import time

import keras
import keras_tuner

from keras_cnn.tuning import pareto, recovery
from keras_cnn.tuning.results import RECORD_FILE, TRIALS_DIR
from keras_cnn.utils import compat, io

MAX_CONSECUTIVE_CRASHES = 3
# keras-tuner ends a search after `max_consecutive_failed_trials` FAILED trials in a row; rejected
# configurations are FAILED trials and a space may propose many in a row, so that limit is lifted.
_NO_LIMIT = sys.maxsize
_EXECUTION_SEED_STEP = 1_000_003  # seed offset of a trial's second, third, ... training
AVERAGED = ("val_accuracy", "ship_accuracy", "ship_kb", "ship_latency_ms", "ship_agreement_pct")


class ZooTuner(keras_tuner.Tuner):
    """keras-tuner's Tuner as keras_cnn runs it: the space registered without building a model, every trial
    seeded and recorded (numbers and outcome, in keras_cnn_trial.json), and the search stopped after
    repeated crashes rather than after repeated rejections."""

    def __init__(self, oracle, *, base_seed, **kwargs):
        self.base_seed = base_seed
        self.consecutive_crashes = 0
        self.executions = []  # the running trial's records, one per execution (`executions_per_trial`)
        recovery.repair(oracle, kwargs["hypermodel"], os.path.join(kwargs["directory"], kwargs["project_name"]),
                        os.environ.get("KERASTUNER_TUNER_ID", "tuner0"), worker=self._is_worker())
        # Straight to Tuner: the concrete tuners' (RandomSearch, Hyperband) constructors only make their oracle.
        keras_tuner.Tuner.__init__(self, oracle=oracle, **kwargs)

    def _populate_initial_space(self):
        # keras-tuner's own registers the space by building models, the default configuration among them,
        # which may collapse on this data; running the space function registers every hyperparameter.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def save(self):
        """keras-tuner's, with the files written atomically (`tuning.recovery`)."""
        if not self._is_worker():
            self.oracle.save()
        io.write_json(self._get_tuner_fname(), self.get_state())

    def run_trial(self, trial, *args, **kwargs):
        self.executions = []
        return super().run_trial(trial, *args, **kwargs)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        record = {"trial": trial.trial_id, "tuner_id": self.tuner_id, "status": "crashed"}
        started = time.perf_counter()
        # A trial repeats whoever runs it; its repeated trainings (executions_per_trial) differ.
        keras.utils.set_random_seed(self.base_seed + int(trial.trial_id) + _EXECUTION_SEED_STEP * len(self.executions))
        try:
            # Keras's train step traces a `tf.custom_gradient` (the optimizer's all-reduce of the gradients), which
            # would keep each trial's training graph alive past `clear_session()`: ~2.6 MB a trial on digits.
            with compat.custom_gradients_released():
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
            self.executions.append(record)
            io.write_json(os.path.join(self.get_trial_dir(trial.trial_id), RECORD_FILE),
                          trial_record(self.executions))


def trial_record(executions):
    """A trial's record from its executions' records: the last one's, with the measurements averaged over all
    of them and, when there are several, each one's measurements under "executions" (for the spread)."""
    record = dict(executions[-1])
    if len(executions) > 1:
        record["executions"] = [{key: execution.get(key) for key in AVERAGED} for execution in executions]
        record["seconds"] = round(sum(execution["seconds"] for execution in executions), 1)
        for key in AVERAGED:
            values = [execution.get(key) for execution in executions]
            if None not in values:
                record[key] = sum(values) / len(values)
    return record


class HyperbandTuner(ZooTuner, keras_tuner.Hyperband):
    """Hyperband's trials: each trains for its bracket's epochs, continuing from a promoted trial's weights."""


class HyperbandOracle(recovery.AtomicOracle, keras_tuner.oracles.HyperbandOracle):
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
        if self.trials[trial.trial_id].status == "FAILED" and failed <= self._first_round():
            for bracket in self._brackets:
                bracket["rounds"][0] = [entry for entry in bracket["rounds"][0] if entry["id"] != trial.trial_id]
            self.save()

    def _first_round(self):
        brackets = range(self._get_num_brackets())
        return self.hyperband_iterations * sum(self._get_size(bracket, 0) for bracket in brackets)

    def rebuilt_brackets(self, trials):
        """The brackets state after `trials` (in trial order), for an oracle.json rebuilt from the trials' files
        (`tuning.recovery`), as `populate_space` and `end_trial` built it: a first-round trial joins the first
        bracket its epochs name that has room, or opens the plan's next bracket (a rejected one then gives its
        place back); a promoted trial joins the round after that of the trial it continues."""
        brackets, where, failed = [], {}, 0
        current, iteration = self._current_bracket, self._current_iteration
        first_epochs = {self._get_epochs(bracket, 0): bracket for bracket in range(self._get_num_brackets())}
        for trial in trials:
            values = trial.hyperparameters.values
            failed += trial.status == "FAILED"
            if "tuner/round" not in values:  # a trial whose file was lost
                continue
            if values["tuner/round"]:
                index, past_round = where[values["tuner/trial_id"]]
                entry, round_num = {"past_id": values["tuner/trial_id"], "id": trial.trial_id}, past_round + 1
            else:
                number = first_epochs[values["tuner/epochs"]]
                entry, round_num = {"past_id": None, "id": trial.trial_id}, 0
                room = [i for i, b in enumerate(brackets) if b["bracket_num"] == number
                        and len(b["rounds"][0]) < self._get_size(number, 0)]
                if not room:
                    iteration += bool(brackets) and number >= current  # the plan starts again from its top bracket
                    current = number
                    brackets.append({"bracket_num": number, "rounds": [[] for _ in range(number + 1)]})
                index = room[0] if room else len(brackets) - 1
                if trial.status == "FAILED" and failed <= self._first_round():
                    continue
            brackets[index]["rounds"][round_num].append(entry)
            where[trial.trial_id] = (index, round_num)
        return {"brackets": brackets or self._brackets, "current_bracket": current, "current_iteration": iteration}


class ParEGOOracle(recovery.AtomicOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    """Bayesian optimisation of several objectives the ParEGO way (Knowles 2006): before each proposal, a new
    random weight vector (uniform on the simplex) turns every completed trial's objectives into one number
    (`pareto.tchebycheff`), and keras-tuner's Gaussian process is fitted to that and maximises its upper
    confidence bound as usual. Each trial keeps its own score (the first objective) once the proposal is made.
    """

    def __init__(self, *, objectives, **kwargs):
        super().__init__(**kwargs)
        self.objectives = tuple(objectives)

    def populate_space(self, trial_id):
        completed = [trial for trial in self.trials.values() if trial.status == "COMPLETED"]
        vectors = [pareto.vector(_last_values(trial), self.objectives) for trial in completed]
        if not completed or None in vectors:
            return super().populate_space(trial_id)
        weights = self._random_state.dirichlet([1.0] * len(self.objectives))
        scores = {trial.trial_id: trial.score for trial in completed}
        sign = -1 if self.objective.direction == "max" else 1  # keras-tuner's GP maximises "max" scores
        for trial, value in zip(completed, pareto.tchebycheff(vectors, pareto.directions(self.objectives), weights)):
            trial.score = sign * value
        try:
            return super().populate_space(trial_id)
        finally:
            for trial in completed:
                trial.score = scores[trial.trial_id]


class RandomSearchOracle(recovery.AtomicOracle, keras_tuner.oracles.RandomSearchOracle):
    """keras-tuner's, with its files written atomically."""


class BayesianOptimizationOracle(recovery.AtomicOracle, keras_tuner.oracles.BayesianOptimizationOracle):
    """keras-tuner's, with its files written atomically."""


def _last_values(trial):
    return {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}


def make_tuner(folder, settings, hypermodel):
    """The keras-tuner tuner of `settings` over `hypermodel`, reloading the state already in `folder`."""
    oracle_settings = dict(objective=keras_tuner.Objective(**settings["objective"]),
                           seed=settings["seed"] + 1,  # keras-tuner draws a random seed for seed=0
                           max_consecutive_failed_trials=_NO_LIMIT)
    objectives = settings.get("objectives")
    if settings["tuner"] == "hyperband":
        oracle = HyperbandOracle(max_epochs=settings["max_epochs"], factor=settings["factor"], **oracle_settings)
    elif settings["tuner"] == "bayesian" and objectives and len(objectives) > 1:
        # keras-tuner starts with 3 random trials per hyperparameter, more than a whole search of a large space
        oracle = ParEGOOracle(objectives=objectives, max_trials=settings["max_trials"],
                              num_initial_points=max(3, settings["max_trials"] // 4), **oracle_settings)
    else:
        oracle_class = RandomSearchOracle if settings["tuner"] == "random" else BayesianOptimizationOracle
        oracle = oracle_class(max_trials=settings["max_trials"], **oracle_settings)
    tuner_class = HyperbandTuner if settings["tuner"] == "hyperband" else ZooTuner
    return tuner_class(oracle, hypermodel=hypermodel, directory=folder, project_name=TRIALS_DIR, overwrite=False,
                       base_seed=settings["seed"], executions_per_trial=settings.get("executions_per_trial", 1))


def _rss_mb():
    """This process's resident memory in MB (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            return round(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        return None
