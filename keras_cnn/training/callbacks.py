"""Keras callbacks of the training loop that Keras does not provide, and the swap of the weights' moving average.

With an optimizer keeping a moving average of the weights (Keras's `use_ema`), validation runs on the average
(Keras's `SwapEMAWeights`) and `BestCheckpoint` saves it, so the checkpoint, the test metrics and the export all
use the averaged weights, while training goes on from the raw ones. The backup for `--resume` holds both: the
raw weights in the model, the average in the optimizer's variables.
"""
import contextlib
import json
import math
import os

import keras
import numpy as np

from keras_cnn.artifacts import runs
from keras_cnn.utils import compat, io


class BestCheckpoint(keras.callbacks.Callback):
    """Save the model whenever `monitor` improves, atomically, remembering the epoch across resumes.

    Keras's ModelCheckpoint writes straight to its final path, so a run killed
    mid-save would leave a truncated `model.keras`; this writes a temporary
    file and renames it, and keeps the best value in `best.json` for `--resume`.
    """

    def __init__(self, run, monitor):
        super().__init__()
        self.path = run.model_path
        self.state_path = run.file(runs.BEST_FILE)
        self.monitor = monitor
        self.best = {"epoch": None, monitor: -math.inf}
        if os.path.isfile(self.state_path):
            with open(self.state_path) as handle:
                self.best = json.load(handle)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and np.isfinite(value) and value >= self.best[self.monitor]:  # ties: the later, better-annealed epoch
            with averaged_weights(self.model):
                io.save_model(self.model, self.path)
            self.best = {"epoch": epoch + 1, self.monitor: float(value)}
            io.write_json(self.state_path, self.best)


class StopAtStep(keras.callbacks.Callback):
    """Stop training once the optimizer has taken `steps` steps: fractional epochs (airbench trains 9.9). With
    several steps per Keras call it stops at the end of the call that reaches `steps`."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.steps:
            self.model.stop_training = True


def uses_ema(model):
    """Whether `model`'s optimizer keeps a moving average of the weights (Keras's `use_ema`)."""
    return bool(getattr(getattr(model, "optimizer", None), "use_ema", False))


@contextlib.contextmanager
def averaged_weights(model):
    """Inside the block, `model` holds its optimizer's moving average of the weights (if it keeps one); the raw
    weights come back afterwards."""
    if not uses_ema(model) or not getattr(model.optimizer, "built", False):
        yield model
        return
    optimizer = model.optimizer
    pairs = compat.ema_pairs(optimizer)
    _swap(pairs)
    try:
        yield model
    finally:
        _swap(pairs)


def _swap(pairs):
    for variable, average in pairs:
        raw = variable.numpy()
        variable.assign(average)
        average.assign(raw)


class AugmentationEpoch(keras.callbacks.Callback):
    """Tell the augmentation layers that follow the epoch (`keras_cnn.models.augment.AlternatingFlip`) which one begins."""

    def on_epoch_begin(self, epoch, logs=None):
        for layer in compat.nested_layers(self.model):
            if hasattr(layer, "epoch") and isinstance(layer.epoch, keras.Variable):
                layer.epoch.assign(epoch)
