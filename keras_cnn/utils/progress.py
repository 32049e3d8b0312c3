"""Progress of long work outside `fit` (corruption passes, export verification): Keras's `Progbar` on a terminal,
as `fit` shows its own, and one log line per step otherwise (a log file or CI gets lines, not bar redraws)."""
import logging
import sys

logger = logging.getLogger("keras_cnn")


class Progress:
    """`total` steps of `title`; call `step(label)` after each."""

    def __init__(self, total, title):
        self.total, self.title, self.done = total, title, 0
        self.bar = None
        if sys.stdout.isatty():
            import keras

            print(title, flush=True)
            self.bar = keras.utils.Progbar(total, unit_name="step")

    def step(self, label):
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.done)
        else:
            logger.info("%s: %d/%d %s", self.title, self.done, self.total, label)
