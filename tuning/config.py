"""`SearchConfig`: the settings of one `tuning.search`, checked once, and what its folder's search.json records.

Every check that needs no data runs when a config is made, so a bad argument fails before anything is loaded,
with one line naming it; the checks that need the data are `tuning.search`'s.
"""
import dataclasses

import keras_tuner

from keras_cnn.models.options import positive_int
from keras_cnn.tuning import budgets as budget_checks
from keras_cnn.tuning import pareto, shipping, spaces

TUNERS = ("random", "bayesian", "hyperband")
DEFAULT_OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")


def _unsaved(default=None, **options):
    """A field search.json leaves out: how this call runs the search, or a budget (saved in `budgets`)."""
    return dataclasses.field(default=default, metadata={"saved": False}, **options)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """`search`'s arguments (see its docstring), checked once when the config is made and normalised:
    `space` is its name (its function is `space_function`), `objective` a `keras_tuner.Objective`, `objectives`
    a tuple or None, `budgets` {argument: limit} of the budgets set, `data_options` a dict, and the numbers
    the tuner does not use are None (max_trials and epochs for hyperband, max_epochs and factor otherwise).
    `settings()` is what the search folder records."""

    data: object = "digits"  # a spec, (x, y) or an ImageData: kept as given, never copied
    space: object = "cnn"  # a name, "package.module:function" or a function; made its name
    tuner: str = "random"
    max_trials: int = 10
    epochs: int = 5
    max_epochs: int = 9
    factor: int = 3
    objective: object = dataclasses.field(default_factory=lambda: DEFAULT_OBJECTIVE)
    seed: int = 0
    out: str = _unsaved()
    resume: bool = _unsaved(False)
    batch_size: int = 128
    data_options: dict = None
    max_params: int = _unsaved()
    max_macs: int = _unsaved()
    max_tflite_kb: float = _unsaved()
    max_latency_ms: float = _unsaved()
    objectives: tuple = None
    ship: str = "int8"
    latency_runs: int = shipping.LATENCY_RUNS
    executions_per_trial: int = 1
    export_front: bool = _unsaved(False)
    distributed: bool = False
    workers: int = _unsaved(2)
    retrain: bool = _unsaved(True)
    verbose: int = _unsaved(1)
    budgets: dict = dataclasses.field(init=False)  # {argument: limit} of the max_* set: what search.json keeps
    space_function: object = _unsaved(init=False, repr=False)

    def __post_init__(self):
        space_name, space_function = spaces.resolve(self.space)
        self._set(space=space_name, space_function=space_function,
                  budgets=budget_checks.check({name: getattr(self, name) for name in budget_checks.BUDGETS}))
        self._check_numbers()
        self._check_distributed()
        self._set(objectives=self._checked_objectives())
        shipping.check(self.ship, self.latency_runs)
        self._set(executions_per_trial=positive_int("executions_per_trial", self.executions_per_trial),
                  objective=self._objective(), data_options=dict(self.data_options or {}))

    def settings(self):
        """What the folder's search.json records, and `resume` and `join` read: the saved fields as JSON values
        (data as its spec, None for arrays or an ImageData; the objective as its name and direction)."""
        saved = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                 if field.metadata.get("saved", True)}
        return {**saved, "data": self.data if isinstance(self.data, str) else None,
                "objective": {"name": self.objective.name, "direction": self.objective.direction}}

    def _set(self, **values):
        """Normalise fields of this frozen config (only while it is made)."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _check_numbers(self):
        if self.tuner not in TUNERS:
            raise ValueError(f"`tuner` must be one of {', '.join(TUNERS)}. Received: tuner={self.tuner!r}")
        hyperband = self.tuner == "hyperband"
        minimums = {"max_epochs": 1, "factor": 2} if hyperband else {"epochs": 1, "max_trials": 1}
        for name, minimum in {**minimums, "batch_size": 1}.items():
            self._set(**{name: positive_int(name, getattr(self, name), minimum)})
        self._set(**dict.fromkeys(("max_trials", "epochs") if hyperband else ("max_epochs", "factor")))

    def _check_distributed(self):
        self._set(distributed=bool(self.distributed))
        if not self.distributed:
            return
        self._set(workers=positive_int("workers", self.workers, minimum=0))
        if not isinstance(self.data, str):
            raise ValueError("a distributed search loads the data in every process: pass a data spec "
                             f"('digits', 'folder:PATH', ...). Received: data=<{type(self.data).__name__}>")
        if "<" in self.space:  # a lambda or a function defined inside another one
            raise ValueError("a distributed search imports the space in every process: pass a name or a "
                             f"module-level function. Received: space={self.space!r}")

    def _checked_objectives(self):
        """The objectives as a tuple (None for a single-objective search), after the checks that need no data."""
        objectives = pareto.parse(self.objectives) if self.objectives is not None else None
        if self.export_front and len(objectives or ()) < 2:
            raise ValueError("export_front exports the Pareto front of two or more objectives; name them in "
                             f"objectives. Received: objectives={','.join(objectives) if objectives else None!r}")
        if objectives and self.tuner == "hyperband":
            raise ValueError("hyperband promotes trials by one score; search objectives with the random or "
                             "bayesian tuner. Received: tuner='hyperband'")
        if self.latency_runs == 0 and ("latency" in (objectives or ()) or self.max_latency_ms is not None):
            raise ValueError("a latency objective or budget needs timed runs of the shipped file. "
                             "Received: latency_runs=0")
        return objectives

    def _objective(self):
        """The Objective: the first objective's with `objectives`, else `objective` (a name: minimized if it ends
        in "loss")."""
        if self.objectives:
            return keras_tuner.Objective(*pareto.METRICS[self.objectives[0]])
        if isinstance(self.objective, str):
            return keras_tuner.Objective(self.objective, "min" if self.objective.endswith("loss") else "max")
        return self.objective
