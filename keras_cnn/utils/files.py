"""The names of the files keras-cnn writes and reads back, for every folder it owns.

A run folder (`keras_cnn.artifacts.runs.Run`) and an export folder (`keras_cnn.exporting`) share the
model and label files; any layer may need to find them (a run folder passed as `weights=`, the labels
beside an exported file), so they are named here, below every package, once.
"""
import os

MODEL_FILE = "model.keras"  # a run folder's trained model
LABELS_FILE = "labels.txt"  # one class name a line, in the model's output order
CONFIG_FILE = "config.json"  # how a run folder was made
SKIPPED_IMAGES_FILE = "skipped_images.txt"  # the images `load_data(skip_bad_images=True)` left out, one a line


def read_labels(path):
    """The class names of a labels file (`LABELS_FILE`), one a line in the model's output order; blank lines are
    skipped."""
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def labels_text(class_names):
    """The text of a labels file (`LABELS_FILE`) holding `class_names`, one a line."""
    return "".join(f"{name}\n" for name in class_names)


def keras_home():
    """Keras's own folder, where its cache lives: $KERAS_HOME, by default ~/.keras (/tmp/.keras when that is
    read-only, Keras's own fallback)."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    if os.path.isdir(home) and not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return home
