"""keras-tuner's state files, written atomically and read back on resume even where one was cut short.

keras-tuner writes its oracle's state (trials/oracle.json), each trial's (trials/trial_NN/trial.json) and each
tuner's (trials/tuner0.json) in place (`keras_tuner.src.utils.save_json`), so a search killed while it wrote one
left that file empty or cut short and `resume` stopped on it ("Expecting value: line 1 column 1 (char 0)").
keras_cnn's oracles (`AtomicOracle`) and tuners (`tuning.tuners.ZooTuner.save`) write them with
`keras_cnn.utils.io` instead: a kill leaves the previous complete file. A file damaged all the same (by an
earlier keras-cnn, a full disk) is rebuilt from the whole ones before keras-tuner reloads the search (`repair`),
with one log line each:

* tuner0.json: keras-tuner's tuners keep nothing in it ({}), so it is written again;
* a trial.json: that trial's settings are lost with it (it was running: keras-tuner writes a trial's file before
  the oracle's); the trial is kept as FAILED, saying so, so that trial numbers stay unique;
* oracle.json: rebuilt from the trials' files: which were tried, started and ended, the unfinished ones queued
  to run again, the random draws moved past those made, and Hyperband's brackets as the trials' values place
  them (`tuning.tuners.HyperbandOracle.rebuilt_brackets`). Finished trials are never run again.
"""
import glob
import json
import logging
import os

import keras_tuner
from keras_cnn.tuning.results import RECORD_FILE

from keras_cnn.utils import io

logger = logging.getLogger("keras_cnn")

ORACLE_FILE = "oracle.json"  # keras-tuner's names, in its project folder
TRIAL_FILE = "trial.json"
_LOST = "lost: its trial.json was cut short when the search was stopped, and its settings with it"


class AtomicOracle:
    """Mixed into an oracle class (first): its oracle.json and trial.json files written atomically."""

    def save(self):
        io.write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        io.write_json(os.path.join(self._get_trial_dir(trial.trial_id), TRIAL_FILE), trial.get_state())


def repair(oracle, hypermodel, folder, tuner_id, *, worker):
    """Make the state files in keras-tuner's project `folder` loadable before a tuner reloads them: delete the
    temporaries a kill left, and rebuild the files it cut short. `oracle` is the new, empty oracle of the search
    and `hypermodel` declares its space; a `worker` of a distributed search owns only its tuner file."""
    if not os.path.isdir(folder):
        return
    for trial_folder in [folder, *glob.glob(os.path.join(folder, "trial_*"))]:
        io.remove_temporaries(trial_folder)
    oracle_file, tuner_file = os.path.join(folder, ORACLE_FILE), os.path.join(folder, f"{tuner_id}.json")
    state = None if worker else _oracle_state(oracle, hypermodel, folder, oracle_file)
    if os.path.exists(tuner_file) and _read(tuner_file) is None:
        _say(tuner_file, "written again (keras-tuner keeps no state in it)")
    if (state is not None or os.path.exists(tuner_file)) and _read(tuner_file) is None:
        io.write_json(tuner_file, {})  # also where a kill came between the oracle's file and this one: reload


def _oracle_state(oracle, hypermodel, folder, oracle_file):
    """The oracle's state in `oracle_file`, rebuilt and written again if it was cut short or its trials' were;
    None for a search that has none yet."""
    trials, lost = _trials(folder)
    state = _read(oracle_file)
    if state is None and (trials or os.path.exists(oracle_file)):
        _say(oracle_file, f"rebuilt from the files of its {len(trials)} trials")
        state = rebuilt_state(oracle, hypermodel, trials)
    elif state is not None and lost:  # running when their files were cut short: ended now, as FAILED
        state["ongoing_trials"] = {key: id_ for key, id_ in state["ongoing_trials"].items() if id_ not in lost}
        state["end_order"] += [id_ for id_ in lost if id_ not in state["end_order"]]
    else:
        return state
    io.write_json(oracle_file, state)
    return state


def _trials(folder):
    """({trial id: keras-tuner Trial} of every trial folder, [ids of those whose trial.json was cut short]); each
    cut-short file is replaced by a FAILED trial saying so."""
    from keras_tuner.engine.trial import Trial

    trials, lost = {}, []
    for path in glob.glob(os.path.join(folder, "trial_*", TRIAL_FILE)):
        state = _read(path)
        if state is None:
            trial_id = os.path.basename(os.path.dirname(path))[len("trial_"):]
            trial = Trial(keras_tuner.HyperParameters(), trial_id=trial_id, status="FAILED", message=_LOST)
            _say(path, "the trial is kept as failed: its settings are lost")
            io.write_json(path, trial.get_state())
            record = os.path.join(os.path.dirname(path), RECORD_FILE)  # the results table's outcome: why it failed
            io.write_json(record, {**(_read(record) or {"trial": trial_id}), "reason": _LOST})
            lost.append(trial_id)
        else:
            trial = Trial.from_state(state)
        trials[trial.trial_id] = trial
    return trials, lost


def rebuilt_state(oracle, hypermodel, trials):
    """`oracle`'s state (its oracle.json) after `trials` ({id: Trial}), from its own settings and the trials."""
    state = oracle.get_state()  # a new oracle: the search's settings, and every key its class keeps
    ordered = sorted(trials.values(), key=lambda trial: int(trial.trial_id))
    space = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(space)
    for trial in ordered:
        space.merge(trial.hyperparameters, overwrite=False)  # the oracle's space also holds what trials added
    ended = [trial.trial_id for trial in ordered if trial.status != "RUNNING"]
    hashes = {trial.trial_id: oracle._compute_values_hash(trial.hyperparameters.values) for trial in ordered
              if trial.message != _LOST}
    state.update(
        hyperparameters=space.get_config(), start_order=[trial.trial_id for trial in ordered], end_order=ended,
        run_times={trial_id: 1 for trial_id in ended}, ongoing_trials={},
        retry_queue=[trial.trial_id for trial in reversed(ordered) if trial.status == "RUNNING"],  # popped last first
        # past the draws made (a draw repeating an earlier one is a duplicate keras-tuner draws again)
        seed_state=state["seed_state"] + sum(len(trial.hyperparameters.values) for trial in ordered),
        tried_so_far=sorted(set(hashes.values())), id_to_hash=hashes)
    if hasattr(oracle, "rebuilt_brackets"):
        state.update(oracle.rebuilt_brackets(ordered))
    return state


def _read(path):
    """The JSON object in `path`; None if it is missing, empty, cut short or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _say(path, what):
    size = os.path.getsize(path) if os.path.exists(path) else None
    damage = "is missing" if size is None else "was empty" if size == 0 else "was cut short"
    logger.warning("%s %s (the search was stopped while keras-tuner wrote it): %s", path, damage, what)
