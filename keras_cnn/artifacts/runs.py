"""The run folder, the project's central artifact, and `Run`, the one type that reads and writes it.

`keras_cnn.train` writes a run folder and returns its `Run`; `keras_cnn.load`, `evaluate`, `export`,
`predict` and the CLI take a `Run` or the folder's path. Only this module opens `config.json`; the
file names are `keras_cnn.utils.io`'s and this module's:

    model.keras      the best epoch's model          labels.txt    one class name a line
    config.json      what `train` was called with, the data it used (spec, options, seed), the machine,
                     and once finished the best epoch and test accuracy
    history.csv      one row per epoch               metrics.json  the test metrics (`evaluate`)
    best.json        the best epoch so far, while training runs
    backup/          Keras's BackupAndRestore state, while training runs (for `resume`)
    skipped_images.txt  the images `load_data(skip_bad_images=True)` could not decode and left out, one a line
"""
import dataclasses
import datetime
import json
import os

from keras_cnn.models import checkpoints
from keras_cnn.utils import io
from keras_cnn.utils.io import CONFIG_FILE, LABELS_FILE, MODEL_FILE, keras_home

HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
BEST_FILE = "best.json"
CARD_FILE = "README.md"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, LABELS_FILE)
DEFAULT_OUT = "saved_models"
# `train` arguments a rerun (`keras-cnn train --config`) does not repeat: it gets a new folder and its own output,
# and runs in one process unless told otherwise (`--distributed`).
NOT_RERUN = ("out", "resume", "verbose", "distribution")


@dataclasses.dataclass(eq=False)
class Run:
    """A run folder and what is known of it: its config, class names and, once loaded or trained, its model.

    `train` also fills `history` ({metric: [value per epoch]}) and `metrics` (the test split's
    `keras_cnn.evaluation.evaluate.Report`).
    """

    path: str
    config: dict = dataclasses.field(default_factory=dict)
    class_names: list = dataclasses.field(default_factory=list)
    model: object = dataclasses.field(default=None, repr=False)
    history: dict = dataclasses.field(default=None, repr=False)
    metrics: object = None

    def __post_init__(self):
        self.path = str(self.path)

    def file(self, name):
        """The path of `name` (one of this module's *_FILE / *_DIR names) inside the folder."""
        return os.path.join(self.path, name)

    @property
    def model_path(self):
        return self.file(MODEL_FILE)

    @property
    def out_folder(self):
        """Where commands write what they make of this run (exports, pictures, metrics): the run folder itself,
        or for a shipped checkpoint saved_models/<model>-<dataset>/ rather than Keras's cache."""
        spec = self.config.get("checkpoint", {}).get("spec")
        return os.path.join(DEFAULT_OUT, spec.replace(":", "-")) if spec else self.path

    def has_config(self):
        return os.path.isfile(self.file(CONFIG_FILE))

    def read_config(self):
        """config.json as a dict (also kept in `self.config`)."""
        received = f"Received: run_dir={self.path!r}"
        with open(self.file(CONFIG_FILE)) as handle:
            try:
                self.config = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}/{CONFIG_FILE} is not valid JSON ({error}). {received}") from error
        return self.config

    def write_config(self):
        io.write_json(self.file(CONFIG_FILE), self.config)

    def read_labels(self):
        self.class_names = io.read_labels(self.file(LABELS_FILE))
        return self.class_names

    def write_labels(self, class_names):
        self.class_names = list(class_names)
        io.write_labels(self.file(LABELS_FILE), self.class_names)

    def write_data_files(self, data):
        """labels.txt of `data` (an `ImageData`) and, when it left undecodable images out, skipped_images.txt
        with one line on screen saying so."""
        self.write_labels(data.class_names)
        data.report_skipped(self.path)

    def read_history(self):
        return read_history(self.file(HISTORY_FILE))

    def load_model(self):
        """model.keras, loaded safely (`keras_cnn.utils.io.load_model`), also kept in `self.model`."""
        self.model = io.load_model(self.model_path)
        return self.model

    @property
    def data_spec(self):
        """The data spec the run trained on ("digits", "folder:PATH", ...), None if it was not a spec."""
        return self.config.get("data")

    def load_data(self, spec=None, **options):
        """The run's data split as in training (its seed and data options), or `spec` with those options;
        `options` override them (another `val_fraction`, `image_size`, ...)."""
        from keras_cnn.data.loading import load_data

        if spec is None and self.data_spec is None:
            raise ValueError(f"{self.path} does not say which data it was trained on: pass data. Received: data=None")
        seed = (self.config.get("arguments") or {}).get("seed", 0)
        return load_data(spec or self.data_spec, **{"seed": seed, **self.config.get("data_options", {}), **options})

    def rerun_arguments(self):
        """`keras_cnn.train` keyword arguments (model and data included) that train this run again."""
        arguments = {key: value for key, value in self.config["arguments"].items() if key not in NOT_RERUN}
        overrides = arguments.pop("overrides", None) or {}
        return {**overrides, **arguments, "model": self.config["model"], "data": self.config["data"]}


def open_run(path):
    """The `Run` of the folder `path` (or of its config.json, or of a shipped checkpoint "model:dataset") with its
    config and class names, without the model."""
    return _opened(path, required=(CONFIG_FILE,))


def load(run_dir):
    """Load a run folder written by `keras_cnn.train` (or a shipped checkpoint, "model:dataset"): a `Run` with its
    model, class names and config."""
    run = _opened(run_dir, required=REQUIRED_FILES)
    run.load_model()
    return run


def _opened(path, required):
    """The `Run` of `path` (as `open_run` takes it) with its config and class names read, once its folder holds
    the `required` files."""
    path = checkpoint_folder(path) if checkpoints.is_checkpoint_spec(path) else str(path)
    if os.path.basename(path) == CONFIG_FILE and os.path.isfile(path):
        path = os.path.dirname(path) or "."
    received = f"Received: run_dir={path!r}"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run folder not found: {path}. {received}")
    missing = [name for name in required if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise ValueError(f"{path} is not a keras-cnn run folder: it has no {', '.join(missing)}. {received}")
    run = Run(path)
    run.read_config()
    if os.path.isfile(run.file(LABELS_FILE)):
        run.read_labels()
    return run


def as_run(source):
    """A `Run` with its model: `source` itself if it is one (loading its model if needed), else `load(source)`."""
    if isinstance(source, Run):
        if source.model is None:
            source.load_model()
        return source
    return load(source)


def checkpoint_folder(spec):
    """The run folder of shipped checkpoint `spec` ("airbench:cifar10"), made once in Keras's cache
    ($KERAS_HOME/keras_cnn/airbench-cifar10/) from the package's weights, so that every command that takes a
    run folder takes a checkpoint too. A folder made from other weights (another release) is made again."""
    import keras

    from keras_cnn.models.registry import build

    checkpoint = checkpoints.from_spec(spec)
    run = Run(os.path.join(keras_home(), "keras_cnn", f"{checkpoint.model}-{checkpoint.dataset}"))
    if run.has_config() and run.read_config().get("checkpoint", {}).get("sha256") == checkpoint.sha256:
        return run.path
    os.makedirs(run.path, exist_ok=True)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        io.save_model(build(checkpoint.model, weights=checkpoint.dataset), run.model_path)
    finally:
        keras.config.set_dtype_policy(previous)
    run.write_labels(checkpoint.class_names)
    run.config = _checkpoint_config(checkpoint)
    run.write_config()  # last: a folder with this config is complete
    return run.path


def _checkpoint_config(checkpoint):
    """config.json of a checkpoint's run folder: what `train` would have written, and where it came from."""
    return {"model": checkpoint.model, "data": checkpoint.data or None, "input_shape": list(checkpoint.input_shape),
            "num_classes": len(checkpoint.class_names), "class_names": list(checkpoint.class_names),
            "precision": "float32", "arguments": {"seed": 0, "recipe": checkpoint.recipe},
            "checkpoint": {"spec": checkpoint.spec, "sha256": checkpoint.sha256, "command": checkpoint.command},
            "test_accuracy": checkpoint.accuracy}


def is_run(source):
    """Whether `source` names a run: a `Run`, or a path (str or os.PathLike) to load one from."""
    return isinstance(source, (Run, str, os.PathLike))


def create(out, model_name, data_name, resume):
    """The `Run` of a new folder (default saved_models/<model>-<data>-<time>), or of the interrupted run in `out`
    when resuming. Two runs started together never share a folder."""
    if resume:
        if out is None or not Run(out).has_config():
            raise ValueError(f"--resume needs the folder of an interrupted run (with {CONFIG_FILE}). "
                             f"Received: out={out!r}")
        io.remove_temporaries(out)  # what a killed write left behind
        return open_run(out)
    if out is not None:
        if os.path.isdir(out) and os.listdir(out):
            raise ValueError(f"{out} already exists and is not empty: pass --resume to continue that run or "
                             f"choose another --out. Received: out={out!r}")
        return Run(io.make_folder(out, "out"))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Run(io.reserve_folder(os.path.join(DEFAULT_OUT, f"{model_name}-{_slug(data_name)}-{stamp}")))


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "data"


def read_history(path):
    """history.csv (appended across resumes) as {column: [values per epoch]}; an epoch logged twice (cut short
    by a kill after its row was written, then trained again) counts once, with its last row."""
    import csv

    with open(path) as handle:
        rows = list({row["epoch"]: row for row in csv.DictReader(handle)}.values())
    return {key: [float(row[key]) for row in rows if row.get(key) not in (None, "", "NA")]  # NA: no val split
            for key in (rows[0] if rows else {}) if key != "epoch"}
