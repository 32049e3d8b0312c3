"""The files keras-cnn writes and reads back: their names, atomic writes, new folders, safe model loading.

A run folder (`keras_cnn.artifacts.runs.Run`) and an export folder (`keras_cnn.exporting`) share the model and
label files; any layer may need to find them (a run folder passed as `weights=`, the labels beside an exported
file), so they are named here, below every package, once, with the one reader and writer of `LABELS_FILE`.

Every file this project writes goes to a temporary name in the same folder
first and is moved into place with `os.replace`, so an interrupted run never
leaves a half-written `model.keras` or JSON file under its final name. A
process killed mid-write leaves only a temporary (`is_temporary`), which
`remove_temporaries` deletes when the run is resumed.
"""
import contextlib
import functools
import json
import os
import re
import tempfile
import zipfile

MODEL_FILE = "model.keras"  # a run folder's trained model
LABELS_FILE = "labels.txt"  # one class name a line, in the model's output order
CONFIG_FILE = "config.json"  # how a run folder was made
SKIPPED_IMAGES_FILE = "skipped_images.txt"  # the images `load_data(skip_bad_images=True)` left out, one a line

# What `atomic_path` names its temporaries: ".<final name>.<8 random characters><extension or .tmp>".
_TEMPORARY = re.compile(r"\.(?P<base>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)")


@contextlib.contextmanager
def atomic_path(final_path):
    """Yield a temporary path next to `final_path`; on success move it into place, else delete it."""
    folder, base = os.path.split(os.path.abspath(final_path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=os.path.splitext(base)[1] or ".tmp", dir=folder)
    os.close(handle)
    try:
        yield temporary
        if os.path.isfile(temporary):  # mkstemp made it 0600; a finished file gets the usual 0666 & ~umask
            os.chmod(temporary, 0o666 & ~umask())
        os.replace(temporary, final_path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def umask():
    """The process's file-mode creation mask, read without changing it where the system shows it (Linux's
    /proc/self/status); elsewhere Python can only set it and put it back, done once, as a private 077 mask."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):  # no /proc (macOS, Windows), or a kernel before 4.7
        pass
    return _swapped_umask()


@functools.cache
def _swapped_umask():
    mask = os.umask(0o077)  # a file another thread creates meanwhile is private rather than open to everyone
    os.umask(mask)
    return mask


def is_temporary(name):
    """Whether file `name` is a temporary that `atomic_path` creates (left behind only by a killed process)."""
    match = _TEMPORARY.fullmatch(name)
    return bool(match) and match["suffix"] == (os.path.splitext(match["base"])[1] or ".tmp")


def remove_temporaries(folder):
    """Delete the temporaries a killed process left in `folder`; their final files are untouched."""
    for name in os.listdir(folder):
        if is_temporary(name):
            os.remove(os.path.join(folder, name))


def make_folder(path, argument):
    """`os.makedirs(path, exist_ok=True)`, or one line naming `argument` when the folder cannot be made or written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"cannot use {path} as a folder: it is a file; choose another place. "
                              f"Received: {argument}={str(path)!r}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise type(error)(f"cannot create the folder {path}: {error.strerror or error}; choose another place. "
                          f"Received: {argument}={str(path)!r}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into the folder {path}: permission denied; choose another place. "
                              f"Received: {argument}={str(path)!r}")
    return path


def reserve_folder(base):
    """Create and return a new folder named `base`, else `base-2`, `base-3`, ...: exactly one caller gets each.

    `os.mkdir` is atomic, so processes started at the same moment with the same `base` never share a folder.
    """
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    for attempt in range(1, 1000):
        folder = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new folder next to {base}: 999 exist. Received: base={base!r}")


def write_text(path, text):
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")


def read_labels(path):
    """The class names of a labels file (`LABELS_FILE`), one a line in the model's output order; blank lines are
    skipped."""
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def write_labels(path, class_names):
    """Write `class_names` as a labels file (`LABELS_FILE`) at `path`, atomically."""
    write_text(path, labels_text(class_names))


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


def jsonable(value, *, other=None):
    """`value` as JSON reads it back: NumPy scalars and arrays as numbers and lists, tuples and sets as lists;
    any other object through `other(object)` (e.g. `repr`), or a TypeError without it."""
    return json.loads(json.dumps(value, default=lambda item: _plain(item, other)))


def _plain(value, other=None):
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if other is not None:
        return other(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save_model(model, path):
    """`model.save` to a temporary `.keras` file, then move it into place."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def load_model(path):
    """Load a `.keras` file with `safe_mode=True` (no arbitrary code), explaining failures in one line."""
    import keras

    import keras_cnn

    keras_cnn.register_keras_objects()  # the custom layers, initialisers and optimizers that saved configs name
    path = str(path)
    received = f"Received: path={path!r}"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}. {received}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise ValueError(f"cannot load {path}: the file is damaged or cut short (a .keras file is a zip archive); "
                         f"train or download it again. {received}")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except ValueError as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise ValueError(f"refusing to load {path}: it contains code (a Lambda layer or a pickled function), "
                             "which could run anything; only load it with Keras yourself if you trust its source. "
                             f"{received}") from error
        raise ValueError(f"cannot load {path}: {first_line(error)}. {received}") from error
    except (OSError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:  # zip/h5 corruption
        raise ValueError(f"cannot load {path}: the file is damaged or not a Keras model ({first_line(error)}). "
                         f"{received}") from error


def load_weights(model, path):
    """Load a `.weights.h5` file into `model`, explaining an architecture mismatch in one line."""
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        raise ValueError(
            f"cannot load weights from {path} into {model.name}: the file does not match this architecture "
            f"({first_line(error)}). Received: weights={str(path)!r}"
        ) from error


def first_line(error):
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
