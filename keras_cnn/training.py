"""Training: a zoo model (or any Keras model) on a data set, leaving a complete run folder behind.

The run folder (default `saved_models/<model>-<data>-<timestamp>/`) holds
`model.keras` (the best epoch's weights, which `metrics.json` describes),
`config.json` (everything needed to rerun it), `labels.txt`, `history.csv`,
`metrics.json`, `curves.png`, `confusion_matrix.png` and a `README.md` model
card. Every file is written atomically; `backup/` holds Keras's
`BackupAndRestore` state while a run is in progress, so a killed run resumes
from its last finished epoch with `resume=True`. An epoch counts as finished
once its history row, its checkpoint and then its backup are written; an
epoch cut short is trained again and its row replaced. The folder is created
only once the model is built, so a bad model, option or shape leaves nothing.

Transfer models (`*_transfer`) can train in two phases: `epochs` with the
backbone frozen, then `fine_tune_epochs` with its top `unfreeze` blocks
trainable, recompiled at 1/100 of the learning rate. Epoch numbers, history.csv,
the best checkpoint and `--resume` run on across both phases.
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
FINE_TUNE_LR_FACTOR = 0.01  # phase-2 learning rate / phase-1 peak (the Keras guide's 1e-3 -> 1e-5)

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
          input_shape=None, num_classes=None, weights=None, fine_tune_epochs=0, unfreeze=None, callbacks=(),
          verbose="auto", **overrides):
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
        weights: initial weights of a model built by name (`keras_cnn.build`'s `weights`; for transfer
            models the backbone's: "imagenet", a weights file, a .keras model or a run folder).
        fine_tune_epochs: transfer models: after `epochs` with the backbone frozen, this many epochs with its
            top `unfreeze` blocks trainable (BatchNorm stays frozen), recompiled at 1/100 of the learning rate.
        unfreeze: backbone blocks to fine-tune, counted from the top (`keras_cnn.models.transfer.unfreeze`);
            None = the whole backbone.
        callbacks: extra Keras callbacks (e.g. to time epochs). Cheap models run several steps per call
            (`recipes.steps_per_execution`), so batch-level hooks then fire once per call.
        verbose: Keras's fit verbosity; "auto" is a progress bar on a terminal, one line per epoch otherwise.
        **overrides: variant options for a model built by name (`augment="basic"`, `dropout=0.3`, ...).
    """
    arguments = {key: value for key, value in locals().items() if key not in ("model", "data", "callbacks")}
    from keras_cnn import evaluation
    from keras_cnn import viz
    from keras_cnn.data import ImageData, load_data

    _check_arguments(epochs, batch_size, mixup, cutmix, strategy, early_stopping, fine_tune_epochs, unfreeze,
                     num_classes)
    name = model if isinstance(model, str) else model.name
    if not isinstance(model, str) and (overrides or input_shape is not None or strategy or weights is not None):
        raise ValueError("overrides, input_shape, weights and strategy apply to models built by name; build the "
                         f"model with them instead. Received: model=<keras.Model {model.name}>")
    keras.utils.set_random_seed(seed)
    if not isinstance(data, ImageData):
        data = load_data(data, seed=seed, **(data_options or {}))
    started = time.perf_counter()

    policy = recipes.resolve_precision(precision) if isinstance(model, str) else recipes.model_precision(model)
    with _distribution(strategy).scope():
        if isinstance(model, str):
            shape = tuple(input_shape) if input_shape is not None else fit_input_shape(model, data, overrides)
            model = _build(model, policy, input_shape=shape, num_classes=num_classes or data.num_classes,
                           weights=weights, **overrides)
        evaluation.check_compatible(model, data)
        if fine_tune_epochs:
            from keras_cnn.models import transfer

            transfer.backbone_of(model)  # only transfer models have a backbone to fine-tune
        image_shape = tuple(model.input_shape[1:])
        train_set = _training_batches(data, batch_size, image_shape, seed, mixup, cutmix, model)
        val_set = (_labels_for(model, data.pipeline("val", batch_size=batch_size, image_shape=image_shape))
                   if data.sizes["val"] else None)
        steps = math.ceil(data.sizes["train"] / batch_size)
        loss, metrics = recipes.loss_and_metrics(model.output_shape[-1], label_smoothing)
        # Keras's multi-step loop fails on a distributed iterator ("You must feed a value for placeholder
        # tensor", keras-team/keras#19246), so a strategy runs one step per call.
        per_call = 1 if strategy else recipes.steps_per_execution(model, batch_size)
        model.compile(optimizer=recipes.optimizer(recipe, total_steps=epochs * steps, learning_rate=learning_rate),
                      loss=loss, metrics=metrics, jit_compile=False, steps_per_execution=per_call)

    folder = run_folder(out, name, data.name, resume)
    config = {
        "model": name, "data": data.spec or data.name, "data_options": {**(data_options or {}), "seed": seed},
        "input_shape": list(image_shape), "num_classes": model.output_shape[-1], "class_names": data.class_names,
        "precision": policy, "arguments": _jsonable_arguments(arguments), "versions": _versions(),
        "machine": {"cpu": recipes._cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
    }
    previous = _check_resume(folder, config, resume)
    if "fine_tune" in previous:  # the run had reached phase 2
        if not fine_tune_epochs:
            raise ValueError(f"{folder} was fine-tuning when it stopped: resume it with the same fine_tune_epochs. "
                             f"Received: fine_tune_epochs={fine_tune_epochs!r}")
        config["fine_tune"] = previous["fine_tune"]
    io.write_json(os.path.join(folder, "config.json"), config)
    io.write_text(os.path.join(folder, "labels.txt"), "\n".join(data.class_names) + "\n")

    monitor = "val_accuracy" if val_set is not None else "accuracy"
    best = BestCheckpoint(folder, monitor)

    def fit(first_epoch, last_epoch, last_phase, append):
        fit_callbacks = [  # in this order at each epoch's end: the backup marks the epoch finished, so it is last
            keras.callbacks.CSVLogger(os.path.join(folder, "history.csv"), append=append),
            best,
            keras.callbacks.TerminateOnNaN(),
            *([keras.callbacks.EarlyStopping(monitor, patience=early_stopping, mode="max")] if early_stopping else []),
            *([keras.callbacks.TensorBoard(os.path.join(folder, "logs"))] if tensorboard else []),
            keras.callbacks.BackupAndRestore(os.path.join(folder, "backup"), double_checkpoint=True,
                                             delete_checkpoint=last_phase),  # phase 2 resumes from phase 1's end
            *callbacks,
        ]
        return model.fit(train_set, validation_data=val_set, initial_epoch=first_epoch, epochs=last_epoch,
                         callbacks=fit_callbacks, shuffle=False,
                         class_weight=data.class_weights() if class_weights else None,
                         verbose=(1 if sys.stdout.isatty() else 2) if verbose == "auto" else verbose)

    losses = []
    if "fine_tune" not in config:  # else a resumed run that had finished phase 1
        phase = fit(0, epochs, not fine_tune_epochs, resume)
        losses += phase.history.get("loss", [])
        config["fine_tune"] = {"from_epoch": phase.epoch[-1] + 1 if phase.epoch else epochs}
    if fine_tune_epochs and all(np.isfinite(losses)):
        losses += _fine_tune(model, fit, config, folder, recipe=recipe, learning_rate=learning_rate, steps=steps,
                             label_smoothing=label_smoothing, strategy=strategy, fine_tune_epochs=fine_tune_epochs,
                             unfreeze=unfreeze)
    else:
        config.pop("fine_tune")
    if any(not np.isfinite(v) for v in losses):
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


def _fine_tune(model, fit, config, folder, *, recipe, learning_rate, steps, label_smoothing, strategy,
               fine_tune_epochs, unfreeze):
    """Phase 2: unfreeze the top blocks of the backbone, recompile at 1/100 of the rate, train on; its losses."""
    import warnings

    from keras_cnn.models import transfer

    first = config["fine_tune"]["from_epoch"]
    blocks = transfer.unfreeze(model, unfreeze)
    rate = (recipes.DEFAULT_LR[recipe] if learning_rate is None else learning_rate) * FINE_TUNE_LR_FACTOR
    config["fine_tune"] = {"from_epoch": first, "epochs": fine_tune_epochs, "learning_rate": rate, "blocks": blocks}
    io.write_json(os.path.join(folder, "config.json"), config)  # marks phase 2 for --resume
    logger.info("%s: fine-tuning %d backbone block(s) (%s ... %s) for %d epochs at learning rate %g", model.name,
                len(blocks), blocks[0], blocks[-1], fine_tune_epochs, rate)
    with _distribution(strategy).scope():
        loss, metrics = recipes.loss_and_metrics(model.output_shape[-1], label_smoothing)
        model.compile(optimizer=recipes.optimizer(recipe, total_steps=fine_tune_epochs * steps, learning_rate=rate),
                      loss=loss, metrics=metrics, jit_compile=False, steps_per_execution=model.steps_per_execution)
    with warnings.catch_warnings():  # restoring phase 1's backup skips its (head-only) optimizer state, as it should
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        history = fit(first, first + fine_tune_epochs, True, True)
    return history.history.get("loss", [])


def _check_arguments(epochs, batch_size, mixup, cutmix, strategy, early_stopping, fine_tune_epochs=0, unfreeze=None,
                     num_classes=None):
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
    options.positive_int("fine_tune_epochs", fine_tune_epochs, minimum=0)
    if num_classes is not None:
        options.num_classes(num_classes)
    if unfreeze is not None:
        if not fine_tune_epochs:
            raise ValueError(f"`unfreeze` has no effect without fine-tuning epochs (`fine_tune_epochs`). "
                             f"Received: unfreeze={unfreeze!r}")
        options.positive_int("unfreeze", unfreeze)


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
    """The data's shape if the model can take it, else resized up to the model's smallest input.

    A family with a `preferred_input(config, data_shape)` hook chooses itself (transfer models: the
    backbone's channels and a per-backbone size for small images).
    """
    from keras_cnn.registry import _family, model_info, resolve

    family = _family(name)
    if hasattr(family, "preferred_input"):
        shape = tuple(family.preferred_input(resolve(name, overrides), tuple(data.image_shape)))
        if shape != tuple(data.image_shape):
            logger.info("%s takes %s images: adapting %s from %s", name, "x".join(map(str, shape)), data.name,
                        "x".join(map(str, data.image_shape)))
        return shape
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
        io.remove_temporaries(out)  # what a killed write left behind
        return out
    if out is not None:
        if os.path.isdir(out) and os.listdir(out):
            raise ValueError(f"{out} already exists and is not empty: pass --resume to continue that run or "
                             f"choose another --out. Received: out={out!r}")
        return io.make_folder(out, "out")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return io.reserve_folder(os.path.join(DEFAULT_OUT, f"{model_name}-{_slug(data_name)}-{stamp}"))


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "data"


def _check_resume(folder, config, resume):
    """Resuming with another model or data would mix two runs: refuse it. Returns the previous config ({})."""
    if not resume:
        return {}
    with open(os.path.join(folder, "config.json")) as handle:
        previous = json.load(handle)
    for key in ("model", "data", "input_shape", "num_classes"):
        if previous.get(key) != json.loads(json.dumps(config[key])):
            raise ValueError(f"cannot resume {folder} with a different {key}: it was trained with "
                             f"{previous.get(key)!r}. Received: {key}={config[key]!r}")
    return previous


def _jsonable_arguments(arguments):
    return json.loads(json.dumps(arguments, default=lambda value: repr(value)))


def _versions():
    import tensorflow as tf

    import keras_cnn

    return {"keras_cnn": keras_cnn.__version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def read_history(path):
    """history.csv (appended across resumes) as {column: [values per epoch]}; an epoch logged twice (cut short
    by a kill after its row was written, then trained again) counts once, with its last row."""
    import csv

    with open(path) as handle:
        rows = list({row["epoch"]: row for row in csv.DictReader(handle)}.values())
    return {key: [float(row[key]) for row in rows if row.get(key) not in (None, "", "NA")]  # NA: no val split
            for key in (rows[0] if rows else {}) if key != "epoch"}


def _fine_tune_line(config):
    tune = config.get("fine_tune")
    if not tune:
        return []
    first, last = tune["from_epoch"] + 1, tune["from_epoch"] + tune["epochs"]
    return [f"- Fine-tuning: epochs {first}-{last} with the top {len(tune['blocks'])} backbone block(s) trainable "
            f"({tune['blocks'][0]} ... {tune['blocks'][-1]}; BatchNorm frozen), learning rate {tune['learning_rate']:g}; "
            f"epochs 1-{tune['from_epoch']} trained the head on the frozen backbone"]


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
        *_fine_tune_line(config),
        f"- Best epoch: {config['best_epoch']} (by {config['monitor']}); training took {config['train_seconds']} s",
        "",
        "## Test metrics",
        "",
        "```",
        str(metrics),
        "```",
        "",
        "![curves](curves.png) ![confusion matrix](confusion_matrix.png)" +
        (" ![reliability diagram](reliability.png)" if getattr(metrics, "calibration", None) else "") +
        (" ![accuracy under corruptions](corruptions.png)" if getattr(metrics, "corruptions", None) else ""),
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
