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

`train` is a sequence of named steps: prepare (arguments, seed, data,
precision), build, compile (`recipes.compile_model`), open the run folder,
fit, finish (evaluate, plots, model card). A family may add a second training
phase: the transfer family's `fine_tune` unfreezes the top `unfreeze` backbone
blocks for `fine_tune_epochs` more epochs, recompiled at the rate it chooses.
Epoch numbers, history.csv, the best checkpoint and `--resume` run on across
both phases.
"""
import functools
import logging
import math
import os
import platform
import sys
import time

from keras_cnn.artifacts import card, runs
from keras_cnn.training import batches as training_batches
from keras_cnn.training import distributed, recipes
from keras_cnn.training.config import TrainConfig
from keras_cnn.training.precision import cpu_model, model_precision, resolve_precision
from keras_cnn.utils import backends, io

logger = logging.getLogger("keras_cnn")


TROUBLESHOOTING = (
    "training diverged (the loss became NaN or infinite). What usually helps (seed 003's list): "
    "a lower learning rate (--lr), BatchNorm (--set batchnorm=true), the adam recipe, "
    "checking that labels and images line up, float32 instead of mixed precision (--precision float32)"
)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message says what to try (a ValueError: the settings are the cause)."""


def train(model, data="digits", *, epochs=None, batch_size=None, recipe="sgd", learning_rate=None,
          label_smoothing=None, ema=None, tta=None, precision="auto", mixup=0.0, cutmix=0.0, seed=0, out=None,
          resume=False, early_stopping=None, tensorboard=False, strategy=None, distribution=None, class_weights=False,
          data_options=None, input_shape=None, num_classes=None, weights=None, fine_tune_epochs=0, unfreeze=None,
          callbacks=(), verbose="auto", **overrides):
    """Train `model` (a registered name or a `keras.Model`) on `data` and write a run folder.

    Args:
        model: a name from `keras_cnn.list_models()`, or a `keras.Model` taking raw pixels [0, 255].
        data: a data spec ("digits", "tfds:mnist", "folder:PATH", (x, y)) or an `ImageData`.
        epochs, batch_size: the training length (a fraction, e.g. 9.9, ends the last epoch early) and batch
            size; None: the recipe's (airbench: 9.9 and 1024, airbench_muon 10 and 2000), else 30 and 128.
        recipe: "sgd" (seed 003: momentum 0.9, lr 0.1 cosine, coupled L2 5e-4), "adam" (1e-3), "airbench"
            (airbench94's Nesterov SGD, label smoothing, lookahead; its network options where the model has
            them: `keras_cnn.training.recipes`) or "airbench_muon" (airbench94_muon's Muon,
            `keras_cnn.training.optimizers.Muon`).
        learning_rate: overrides the recipe's (peak) learning rate (airbench: per 1,024 examples; airbench_muon:
            the convolutions', the other weights' scale with it).
        label_smoothing: for the cross-entropy loss (None: the recipe's, airbench 0.2, else 0).
        ema: momentum of a moving average of the weights (e.g. 0.99; Keras's `use_ema`), which validation,
            the checkpoint, the test metrics and export then use; None: the recipe's (airbench: lookahead).
        tta: test-time augmentation of the final evaluation: None, "flip" or "flip+translate" (metrics.json
            keeps the figure of every level up to it); None: the recipe's (airbench: "flip+translate").
        precision: "auto" (measured per machine), "float32", "mixed_bfloat16" or "mixed_float16";
            applies when the model is built by name.
        mixup, cutmix: probability-free strengths (alpha) of batch MixUp / CutMix on one-hot labels; 0 = off.
        seed: seeds weights, data order and augmentation: the same seed repeats a run on the same machine.
        out: the run folder (default `saved_models/<model>-<data>-<timestamp>`).
        resume: continue the interrupted run in `out` from its last finished epoch.
        early_stopping: patience in epochs on the monitored metric, or None.
        tensorboard: also write TensorBoard logs to `out/logs`.
        strategy: None, or "mirrored" for data-parallel training over all local GPUs (or CPU devices).
        distribution: data-parallel over processes, JAX backend (`keras_cnn.training.distributed`; True, a config).
        class_weights: weight classes inversely to their frequency (imbalanced folders).
        data_options: keyword arguments for `load_data` (val_fraction, image_size, data_dir, ...).
        input_shape: the model's input shape (by default the data's, resized up if the model needs more).
        num_classes: 1 for a single sigmoid unit on two-class data; default: the data's class count.
        weights: initial weights of a model built by name (`keras_cnn.build`'s `weights`; for transfer
            models the backbone's: "imagenet", a weights file, a .keras model or a run folder).
        fine_tune_epochs: a second phase, for families that have one (`fine_tune`; transfer models): after
            `epochs` with the backbone frozen, this many epochs with its top `unfreeze` blocks trainable
            (BatchNorm stays frozen), recompiled at the rate the family sets (transfer: 1/100).
        unfreeze: backbone blocks to fine-tune, counted from the top (`keras_cnn.models.transfer.unfreeze`);
            None = the whole backbone.
        callbacks: extra Keras callbacks (e.g. to time epochs). Cheap models run several steps per call
            (`recipes.steps_per_execution`), so batch-level hooks then fire once per call.
        verbose: Keras's fit verbosity; "auto" is a progress bar on a terminal, one line per epoch otherwise.
        **overrides: variant options for a model built by name (`augment="basic"`, `dropout=0.3`, ...).
    """
    call = TrainConfig(**locals())  # the arguments, checked: its fields are this signature's (a test compares them)
    processes, call = distributed.join(call)  # processes: None on one process, else joined through JAX's runtime
    data, policy = _prepare(call)
    run, best, seconds = _train(call, processes, data, policy)
    if not distributed.is_chief(processes):
        return runs.Run(call.out)  # process 0 evaluates, writes the run folder and has the metrics
    return _finish(call, run, data, best, train_seconds=seconds)


def _train(call, processes, data, policy):
    """Build, compile, open the run folder and fit (under the processes' keras.distribution): run, best, seconds."""
    started = time.perf_counter()
    with distributed.scope(processes):  # keras.distribution's DataParallel over every process's devices
        with _distribution(call.strategy).scope():
            model = _build_model(call, data, policy)
            batches = distributed.shard(processes, call, training_batches.batches(call, model, data), data)
            _compile(call, model, batches)
        run = distributed.open_run(processes, call, lambda config: _open_run(config, model, data, policy))
        best = _fit(call, run, model, data, batches)
        distributed.check_weights(processes, model)
    return run, best, time.perf_counter() - started


def _prepare(call):
    """Seed everything, load the data; (data, the dtype policy to build under)."""
    import keras

    from keras_cnn.data.loading import ImageData, load_data

    keras.utils.set_random_seed(call.seed)
    data = call.data
    if not isinstance(data, ImageData):
        data = load_data(data, seed=call.seed, **call.data_options)
    policy = resolve_precision(call.precision) if call.by_name else model_precision(call.model)
    return data, policy


def _build_model(call, data, policy):
    """The model built by name at the data's (or the given) input shape, or the model given; checked against the
    data, and against fine-tuning when asked for."""
    model = call.model
    if isinstance(model, str):
        shape = tuple(call.input_shape) if call.input_shape is not None else fit_input_shape(model, data,
                                                                                             call.overrides)
        model = _build(model, policy, input_shape=shape, num_classes=call.num_classes or data.num_classes,
                       weights=call.weights, **call.overrides)
        if call.weights is None:  # trained weights are not initialised again
            _initialize_from_data(model, data)
    data.check_fits(model)
    if call.fine_tune_epochs:
        _fine_tuning(model)
    return model


def _compile(call, model, batches):
    # Keras's multi-step loop fails on a distributed iterator ("You must feed a value for placeholder
    # tensor", keras-team/keras#19246), so a strategy runs one step per call.
    per_call = 1 if call.strategy else recipes.steps_per_execution(model, call.batch_size)
    last = batches.total % batches.steps  # steps of a fractional last epoch: calls end exactly there
    if last:
        per_call = max(d for d in range(1, per_call + 1) if last % d == 0)
    recipes.compile_model(model, call.recipe, total_steps=batches.total, learning_rate=call.learning_rate,
                          label_smoothing=call.label_smoothing, batch_size=call.batch_size, steps_per_call=per_call,
                          ema=call.ema)


def _open_run(call, model, data, policy):
    """The run folder with config.json and labels.txt written: new, or the interrupted run being resumed."""
    name = call.model_name
    image_shape, num_classes = list(model.input_shape[1:]), model.output_shape[-1]
    run = runs.create(call.out, name, data.name, call.resume)
    previous = _check_resume(run, name, data, image_shape, num_classes)
    run.config = {
        "model": name, "data": data.spec or data.name, "data_options": {**(call.data_options or {}), "seed": call.seed},
        "input_shape": image_shape, "num_classes": num_classes, "class_names": data.class_names,
        "precision": policy, "backend": backends.current(), "arguments": io.jsonable(call.settings(), other=repr),
        "versions": _versions(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
    }
    if "fine_tune" in previous:  # the run had reached phase 2
        if not call.fine_tune_epochs:
            raise ValueError(f"{run.path} was fine-tuning when it stopped: resume it with the same fine_tune_epochs. "
                             f"Received: fine_tune_epochs={call.fine_tune_epochs!r}")
        run.config["fine_tune"] = previous["fine_tune"]
    run.write_config()
    run.write_data_files(data)
    return run


def _fit(call, run, model, data, batches):
    """Train phase 1 (and a family's fine-tuning phase 2); the BestCheckpoint. TrainingDiverged on a NaN loss."""
    monitor = "val_accuracy" if batches.val is not None else "accuracy"
    from keras_cnn.training.callbacks import BestCheckpoint

    best = BestCheckpoint(run, monitor)
    fit = functools.partial(_fit_epochs, call, run, model, data, batches, best)
    losses = []
    if "fine_tune" not in run.config:  # else a resumed run that had finished phase 1
        phase = fit(0, math.ceil(call.epochs), last_phase=not call.fine_tune_epochs, append=call.resume,
                    stop_at_step=batches.total)
        losses += phase.history.get("loss", [])
        run.config["fine_tune"] = {"from_epoch": phase.epoch[-1] + 1 if phase.epoch else math.ceil(call.epochs)}
    if call.fine_tune_epochs and all(math.isfinite(loss) for loss in losses):
        losses += _fine_tune(call, run, model, fit, batches.steps)
    else:
        run.config.pop("fine_tune")
    if any(not math.isfinite(loss) for loss in losses):
        raise TrainingDiverged(f"{TROUBLESHOOTING}. The run folder is {run.path}")
    return best


def _fit_epochs(call, run, model, data, batches, best, first_epoch, last_epoch, *, last_phase, append,
                stop_at_step=None):
    """`model.fit` from `first_epoch` to `last_epoch` with the run's callbacks: history.csv, the best checkpoint,
    the backup that makes the run resumable, the moving average's swap for validation, a stop at the optimizer's
    step `stop_at_step` (fractional epochs), and the caller's."""
    import keras

    from keras_cnn.training.callbacks import AugmentationEpoch, StopAtStep, uses_ema

    fit_callbacks = [  # in this order at each epoch's end: the backup marks the epoch finished, so it is last
        AugmentationEpoch(),
        *([keras.callbacks.SwapEMAWeights()] if uses_ema(model) else []),  # validation on the averaged weights
        *([StopAtStep(stop_at_step)] if stop_at_step else []),
        keras.callbacks.CSVLogger(run.file(runs.HISTORY_FILE), append=append),
        best,
        keras.callbacks.TerminateOnNaN(),
        *([keras.callbacks.EarlyStopping(best.monitor, patience=call.early_stopping, mode="max")]
          if call.early_stopping else []),
        *([keras.callbacks.TensorBoard(run.file(runs.LOGS_DIR))] if call.tensorboard else []),
        keras.callbacks.BackupAndRestore(run.file(runs.BACKUP_DIR), double_checkpoint=True,
                                         delete_checkpoint=last_phase),  # phase 2 resumes from phase 1's end
        *call.callbacks,
    ]
    return model.fit(batches.train, validation_data=batches.val, initial_epoch=first_epoch, epochs=last_epoch,
                     callbacks=fit_callbacks, shuffle=False,
                     class_weight=data.class_weights() if call.class_weights else None,
                     verbose=(1 if sys.stdout.isatty() else 2) if call.verbose == "auto" else call.verbose)


def _fine_tuning(model):
    """The fine-tuning phase of the family `model` was built from (`Family.fine_tune`), or ValueError."""
    zoo = getattr(model, "zoo_config", None)  # None for a keras.Model that keras_cnn.build did not make
    hook = zoo.family.fine_tune if zoo else None
    if hook is None:
        raise ValueError(f"{model.name} is not a transfer model: only a family with a fine-tuning phase (see "
                         f"keras_cnn.list_models('*_transfer')) trains one. Received: model={model.name!r}")
    return hook


def _fine_tune(call, run, model, fit, steps):
    """Phase 2, as the model's family prepares it (which layers train, at what rate): recompile, train on; its
    losses."""
    import warnings

    first = run.config["fine_tune"]["from_epoch"]
    base_rate = recipes.DEFAULT_LR[call.recipe] if call.learning_rate is None else call.learning_rate
    phase = _fine_tuning(model)(model, blocks=call.unfreeze, learning_rate=base_rate)
    run.config["fine_tune"] = {"from_epoch": first, "epochs": call.fine_tune_epochs, **phase}
    run.write_config()  # marks phase 2 for --resume
    with _distribution(call.strategy).scope():
        recipes.compile_model(model, call.recipe, total_steps=call.fine_tune_epochs * steps,
                              learning_rate=phase["learning_rate"], label_smoothing=call.label_smoothing,
                              steps_per_call=model.steps_per_execution, ema=call.ema)
    with warnings.catch_warnings():  # restoring phase 1's backup skips its (head-only) optimizer state, as it should
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        history = fit(first, first + call.fine_tune_epochs, last_phase=True, append=True)
    return history.history.get("loss", [])


def _finish(call, run, data, best, *, train_seconds):
    """Reload the best epoch, evaluate it on test, draw the curves, complete config.json and the model card."""
    from keras_cnn.analysis import viz
    from keras_cnn.evaluation import evaluate as evaluation

    model = run.load_model()
    history = run.read_history()
    test_split = "test" if data.sizes["test"] else "val"
    metrics = evaluation.evaluate(model, data, split=test_split, batch_size=max(call.batch_size, 256), out=run.path,
                                  tta=call.tta)
    viz.save(viz.curves(history), run.file(runs.CURVES_FILE))
    run.config.update(best_epoch=best.best["epoch"], monitor=best.monitor, train_seconds=round(train_seconds, 1),
                      test_accuracy=metrics.accuracy, epochs_run=len(history.get("loss", [])))
    run.write_config()
    io.write_text(run.file(runs.CARD_FILE), card.model_card(run.config, metrics, data))
    os.remove(best.state_path)
    logger.info("%s: test accuracy %.2f%% (best epoch %s), run folder %s", run.config["model"],
                100 * metrics.accuracy, best.best["epoch"], run.path)
    run.history, run.metrics = history, metrics
    return run


def _initialize_from_data(model, data):
    """The family's data-dependent initialisation (`Family.initialize_from_data`; airbench's whitening stem) of
    a model built by name, from this run's own training images; resumed runs then restore their saved weights."""
    family, config = model.zoo_config.family, dict(model.zoo_config.config)
    if family.initialize_from_data is not None:
        family.initialize_from_data(model, config, data)


def _build(name, policy, *, weights, **kwargs):
    """Build under `policy`, not left as the default; from a checkpoint (`weights="cifar10"`), new head if needed."""
    import keras

    from keras_cnn.models import checkpoints, registry

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        if checkpoints.is_dataset_name(weights) and checkpoints.available(name):
            return registry.build_from_checkpoint(name, checkpoints.find(name, weights), new_head=True, **kwargs)
        return registry.build(name, weights=weights, **kwargs)
    finally:
        keras.config.set_dtype_policy(previous)


def fit_input_shape(name, data, overrides):
    """The data's shape if the model can take it, else resized up to the model's smallest input.

    A family with a `preferred_input(config, data_shape)` hook chooses itself (transfer models: the
    backbone's channels and a per-backbone size for small images).
    """
    from keras_cnn.models.registry import family_of, model_info, resolve

    family = family_of(name)
    if family.preferred_input is not None:
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


def _check_resume(run, name, data, image_shape, num_classes):
    """Resuming with another model or data would mix two runs: refuse it. Returns the previous config ({})."""
    previous = run.config
    received = {"model": name, "data": data.spec or data.name, "input_shape": list(image_shape),
                "num_classes": num_classes}
    for key, value in received.items():
        if previous and previous.get(key) != value:
            raise ValueError(f"cannot resume {run.path} with a different {key}: it was trained with "
                             f"{previous.get(key)!r}. Received: {key}={value!r}")
    # The weights move between backends, but an interrupted run's optimizer state, random-number state and
    # measured precision do not, so a run resumes on the backend it started on.
    backend, started_on = backends.current()["backend"], previous.get("backend", {}).get("backend", "tensorflow")
    if previous and backend != started_on:
        raise ValueError(f"cannot resume {run.path} on {backend}: it was trained on {started_on}; resume it with "
                         f"--backend {started_on} (its model.keras loads on any backend). "
                         f"Received: backend={backend!r}")
    return previous


def _versions():
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_cnn

    backend = backends.current()
    return {"keras_cnn": keras_cnn.__version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            backend["backend"]: backend["version"], "numpy": np.__version__, "python": platform.python_version()}
