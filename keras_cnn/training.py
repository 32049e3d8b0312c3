"""Training: a zoo model (or any Keras model) on a data set, leaving a complete run folder behind.

The run folder (default `saved_models/<model>-<data>-<timestamp>/`) holds
`model.keras` (the best epoch's weights, which `metrics.json` describes),
`config.json` (everything needed to rerun it), `labels.txt`, `history.csv`,
`metrics.json`, `curves.png`, `confusion_matrix.png` and a `README.md` model
card. Every file is written atomically; `backup/` holds Keras's
`BackupAndRestore` state while a run is in progress, so a killed run resumes
from its last finished epoch with `resume=True`.
"""
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import sys
import time

import keras
import numpy as np

from keras_cnn import io, options, recipes

logger = logging.getLogger("keras_cnn")

DEFAULT_OUT = "saved_models"
STRATEGIES = (None, "mirrored")

TROUBLESHOOTING = (
    "training diverged (the loss became NaN or infinite). What usually helps (seed 003's list): "
    "a lower learning rate (--lr), BatchNorm (--set batchnorm=true), the adam recipe, "
    "checking that labels and images line up, float32 instead of mixed precision (--precision float32)"
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says what to try."""


@dataclasses.dataclass
class RunResult:
    """What `train` returns: the trained model (best epoch), its history, test metrics and files."""

    path: str
    model: object
    history: dict
    metrics: object  # keras_cnn.evaluation.Report on the test split
    config: dict
    class_names: list


class BestCheckpoint(keras.callbacks.Callback):
    """Save the model whenever `monitor` improves, atomically, remembering the epoch across resumes.

    Keras's ModelCheckpoint writes straight to its final path, so a run killed
    mid-save would leave a truncated `model.keras`; this writes a temporary
    file and renames it, and keeps the best value in `best.json` for `--resume`.
    """

    def __init__(self, folder, monitor):
        super().__init__()
        self.path = os.path.join(folder, "model.keras")
        self.state_path = os.path.join(folder, "best.json")
        self.monitor = monitor
        self.best = {"epoch": None, monitor: -math.inf}
        if os.path.isfile(self.state_path):
            with open(self.state_path) as handle:
                self.best = json.load(handle)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and np.isfinite(value) and value >= self.best[self.monitor]:  # ties: the later, better-annealed epoch
            io.save_model(self.model, self.path)
            self.best = {"epoch": epoch + 1, self.monitor: float(value)}
            io.write_json(self.state_path, self.best)


def train(model, data="digits", *, epochs=30, batch_size=128, recipe="sgd", learning_rate=None,
          label_smoothing=0.0, precision="auto", mixup=0.0, cutmix=0.0, seed=0, out=None, resume=False,
          early_stopping=None, tensorboard=False, strategy=None, class_weights=False, data_options=None,
          input_shape=None, num_classes=None, callbacks=(), verbose="auto", **overrides):
    """Train `model` (a registered name or a `keras.Model`) on `data` and write a run folder.

    Args:
        model: a name from `keras_cnn.list_models()`, or a `keras.Model` taking raw pixels [0, 255].
        data: a data spec ("digits", "tfds:mnist", "folder:PATH", (x, y)) or an `ImageData`.
        epochs, batch_size: the training length and batch size.
        recipe: "sgd" (seed 003: momentum 0.9, lr 0.1 cosine, coupled L2 5e-4) or "adam" (1e-3).
        learning_rate: overrides the recipe's (peak) learning rate.
        label_smoothing: for the cross-entropy loss.
        precision: "auto" (measured per machine), "float32", "mixed_bfloat16" or "mixed_float16";
            applies when the model is built by name.
        mixup, cutmix: probability-free strengths (alpha) of batch MixUp / CutMix on one-hot labels; 0 = off.
        seed: seeds weights, data order and augmentation: the same seed repeats a run on the same machine.
        out: the run folder (default `saved_models/<model>-<data>-<timestamp>`).
        resume: continue the interrupted run in `out` from its last finished epoch.
        early_stopping: patience in epochs on the monitored metric, or None.
        tensorboard: also write TensorBoard logs to `out/logs`.
        strategy: None, or "mirrored" for data-parallel training over all local GPUs (or CPU devices).
        class_weights: weight classes inversely to their frequency (imbalanced folders).
        data_options: keyword arguments for `load_data` (val_fraction, image_size, data_dir, ...).
        input_shape: the model's input shape (by default the data's, resized up if the model needs more).
        num_classes: 1 for a single sigmoid unit on two-class data; default: the data's class count.
        callbacks: extra Keras callbacks (e.g. to time epochs).
        verbose: Keras's fit verbosity; "auto" is a progress bar on a terminal, one line per epoch otherwise.
        **overrides: variant options for a model built by name (`augment="basic"`, `dropout=0.3`, ...).
    """
    arguments = {key: value for key, value in locals().items() if key not in ("model", "data", "callbacks")}
    from keras_cnn import evaluation
    from keras_cnn import viz
    from keras_cnn.data import ImageData, load_data

    _check_arguments(epochs, batch_size, mixup, cutmix, strategy, early_stopping)
    name = model if isinstance(model, str) else model.name
    if not isinstance(model, str) and (overrides or input_shape is not None or strategy):
        raise ValueError("overrides, input_shape and strategy apply to models built by name; build the model "
                         f"with them instead. Received: model=<keras.Model {model.name}>")
    keras.utils.set_random_seed(seed)
    if not isinstance(data, ImageData):
        data = load_data(data, seed=seed, **(data_options or {}))
    folder = run_folder(out, name, data.name, resume)
    started = time.perf_counter()

    policy = recipes.resolve_precision(precision) if isinstance(model, str) else model.dtype_policy.name
    with _distribution(strategy).scope():
        if isinstance(model, str):
            shape = tuple(input_shape) if input_shape is not None else fit_input_shape(model, data, overrides)
            model = _build(model, policy, input_shape=shape, num_classes=num_classes or data.num_classes,
                           **overrides)
        evaluation.check_compatible(model, data)
        image_shape = tuple(model.input_shape[1:])
        train_set = _training_batches(data, batch_size, image_shape, seed, mixup, cutmix, model)
        val_set = (_labels_for(model, data.pipeline("val", batch_size=batch_size, image_shape=image_shape))
                   if data.sizes["val"] else None)
        steps = math.ceil(data.sizes["train"] / batch_size)
        loss, metrics = recipes.loss_and_metrics(model.output_shape[-1], label_smoothing)
        model.compile(optimizer=recipes.optimizer(recipe, total_steps=epochs * steps, learning_rate=learning_rate),
                      loss=loss, metrics=metrics, jit_compile=False)

    config = {
        "model": name, "data": data.spec or data.name, "data_options": {**(data_options or {}), "seed": seed},
        "input_shape": list(image_shape), "num_classes": model.output_shape[-1], "class_names": data.class_names,
        "precision": policy, "arguments": _jsonable_arguments(arguments), "versions": _versions(),
        "machine": {"cpu": recipes._cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
    }
    _check_resume(folder, config, resume)
    io.write_json(os.path.join(folder, "config.json"), config)
    io.write_text(os.path.join(folder, "labels.txt"), "\n".join(data.class_names) + "\n")

    monitor = "val_accuracy" if val_set is not None else "accuracy"
    best = BestCheckpoint(folder, monitor)
    fit_callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(folder, "backup"), double_checkpoint=True),
        keras.callbacks.CSVLogger(os.path.join(folder, "history.csv"), append=resume),
        best,
        keras.callbacks.TerminateOnNaN(),
        *([keras.callbacks.EarlyStopping(monitor, patience=early_stopping, mode="max")] if early_stopping else []),
        *([keras.callbacks.TensorBoard(os.path.join(folder, "logs"))] if tensorboard else []),
        *callbacks,
    ]
    history = model.fit(train_set, validation_data=val_set, epochs=epochs, callbacks=fit_callbacks, shuffle=False,
                        class_weight=data.class_weights() if class_weights else None,
                        verbose=(1 if sys.stdout.isatty() else 2) if verbose == "auto" else verbose).history
    if any(not np.isfinite(v) for v in history.get("loss", [])):
        raise TrainingDiverged(f"{TROUBLESHOOTING}. The run folder is {folder}")
    train_seconds = time.perf_counter() - started

    model = io.load_model(best.path)
    history = read_history(os.path.join(folder, "history.csv"))
    test_split = "test" if data.sizes["test"] else "val"
    metrics = evaluation.evaluate(model, data, split=test_split, batch_size=max(batch_size, 256), out=folder)
    viz.save(viz.curves(history), os.path.join(folder, "curves.png"))
    config.update(best_epoch=best.best["epoch"], monitor=monitor, train_seconds=round(train_seconds, 1),
                  test_accuracy=metrics.accuracy, epochs_run=len(history.get("loss", [])))
    io.write_json(os.path.join(folder, "config.json"), config)
    io.write_text(os.path.join(folder, "README.md"), model_card(config, metrics, data))
    os.remove(best.state_path)
    logger.info("%s: test accuracy %.2f%% (best epoch %s), run folder %s", name, 100 * metrics.accuracy,
                best.best["epoch"], folder)
    return RunResult(folder, model, history, metrics, config, data.class_names)


def _check_arguments(epochs, batch_size, mixup, cutmix, strategy, early_stopping):
    options.positive_int("epochs", epochs)
    options.positive_int("batch_size", batch_size)
    options.fraction("mixup", mixup)
    options.fraction("cutmix", cutmix)
    if mixup and cutmix:
        raise ValueError(f"use MixUp or CutMix, not both. Received: mixup={mixup}, cutmix={cutmix}")
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be None or 'mirrored'. Received: strategy={strategy!r}")
    if early_stopping is not None:
        options.positive_int("early_stopping", early_stopping)


def _build(name, policy, **kwargs):
    """Build under `policy` without leaving it as the process-wide default."""
    from keras_cnn.registry import build

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return build(name, **kwargs)
    finally:
        keras.config.set_dtype_policy(previous)


def fit_input_shape(name, data, overrides):
    """The data's shape if the model can take it, else resized up to the model's smallest input."""
    from keras_cnn.registry import model_info

    height, width, channels = data.image_shape
    side = model_info(name, **overrides)["smallest_input"][0]
    if height >= side and width >= side:
        return data.image_shape
    shape = (max(height, side), max(width, side), channels)
    logger.info("%s needs at least %dx%d pixels: resizing %s images from %dx%d to %dx%d", name, side, side,
                data.name, height, width, shape[0], shape[1])
    return shape


def _distribution(strategy):
    import tensorflow as tf

    if strategy is None:
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def _labels_for(model, dataset):
    """One sigmoid unit trains on P(class 1): keep the second one-hot column."""
    if model.output_shape[-1] == 1:
        return dataset.map(lambda x, y: (x, y[:, 1:]))
    return dataset


def _training_batches(data, batch_size, image_shape, seed, mixup, cutmix, model):
    """Shuffled training batches, with MixUp or CutMix applied to (images, one-hot labels) batches."""
    import tensorflow as tf

    dataset = data.pipeline("train", batch_size=batch_size, image_shape=image_shape, training=True, seed=seed)
    if mixup or cutmix:
        layer = keras.layers.MixUp(alpha=mixup, seed=seed) if mixup else keras.layers.CutMix(factor=cutmix,
                                                                                             seed=seed)

        def mix(images, labels):
            mixed = layer({"images": images, "labels": labels})
            return mixed["images"], mixed["labels"]

        dataset = dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return _labels_for(model, dataset)


def run_folder(out, model_name, data_name, resume):
    """Create (or, resuming, reopen) the run folder; two runs started together never share one."""
    if resume:
        if out is None or not os.path.isfile(os.path.join(out, "config.json")):
            raise ValueError(f"--resume needs the folder of an interrupted run (with config.json). Received: out={out!r}")
        return out
    if out is not None:
        if os.path.exists(out) and os.listdir(out):
            raise ValueError(f"{out} already exists and is not empty: pass --resume to continue that run or "
                             f"choose another --out. Received: out={out!r}")
        os.makedirs(out, exist_ok=True)
        return out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(DEFAULT_OUT, f"{model_name}-{_slug(data_name)}-{stamp}")
    for attempt in range(1, 1000):
        folder = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.makedirs(folder)  # atomic: exactly one process creates a given name
            return folder
        except FileExistsError:
            continue
    raise ValueError(f"could not create a run folder next to {base}")


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "data"


def _check_resume(folder, config, resume):
    """Resuming with another model or data would mix two runs: refuse it."""
    if not resume:
        return
    with open(os.path.join(folder, "config.json")) as handle:
        previous = json.load(handle)
    for key in ("model", "data", "input_shape", "num_classes"):
        if previous.get(key) != json.loads(json.dumps(config[key])):
            raise ValueError(f"cannot resume {folder} with a different {key}: it was trained with "
                             f"{previous.get(key)!r}. Received: {key}={config[key]!r}")


def _jsonable_arguments(arguments):
    return json.loads(json.dumps(arguments, default=lambda value: repr(value)))


def _versions():
    import tensorflow as tf

    import keras_cnn

    return {"keras_cnn": keras_cnn.__version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def read_history(path):
    """history.csv (appended across resumes) as {column: [values per epoch]}."""
    import csv

    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows if row.get(key) not in (None, "", "NA")]  # NA: no val split
            for key in (rows[0] if rows else {}) if key != "epoch"}


def model_card(config, metrics, data):
    """The run folder's README.md: what the model is, its data, recipe and test metrics, how to load it."""
    arguments = config["arguments"]
    overrides = arguments.get("overrides") or {}
    lines = [
        f"# {config['model']} trained on {config['data']}",
        "",
        f"- Model: `{config['model']}`" + (f" with {overrides}" if overrides else "") +
        f", input {'x'.join(map(str, config['input_shape']))} raw pixels [0, 255], {config['num_classes']} outputs",
        f"- Data: `{config['data']}`, {data.sizes['train']} train / {data.sizes['val']} validation / "
        f"{data.sizes['test']} test images, classes: {', '.join(config['class_names'])}",
        f"- Recipe: `{arguments['recipe']}`, {arguments['epochs']} epochs (ran {config['epochs_run']}), "
        f"batch {arguments['batch_size']}, precision {config['precision']}, seed {arguments['seed']}",
        f"- Best epoch: {config['best_epoch']} (by {config['monitor']}); training took {config['train_seconds']} s",
        "",
        "## Test metrics",
        "",
        "```",
        str(metrics),
        "```",
        "",
        "![curves](curves.png) ![confusion matrix](confusion_matrix.png)",
        "",
        "## Use it",
        "",
        "```python",
        "import keras_cnn",
        "run = keras_cnn.load('.')          # model, class names and this config",
        "```",
        "or `keras-cnn evaluate <this folder>`, `keras-cnn export <this folder>`. Versions: " +
        ", ".join(f"{k} {v}" for k, v in config["versions"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
