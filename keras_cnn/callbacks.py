"""Keras callbacks of the training loop that Keras does not provide."""
import json
import math
import os

import keras
import numpy as np

from keras_cnn import io, runs


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
            io.save_model(self.model, self.path)
            self.best = {"epoch": epoch + 1, self.monitor: float(value)}
            io.write_json(self.state_path, self.best)
