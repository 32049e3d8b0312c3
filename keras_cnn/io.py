"""Loading and saving of models and weights with clear errors and atomic writes."""
import os
import tempfile


def load_weights(model, path):
    """Load a `.weights.h5` file into `model`, explaining an architecture mismatch in one line."""
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot load weights from {path} into {model.name}: the file does not match this architecture "
            f"({first_line}). Received: weights={str(path)!r}"
        ) from None


def atomic_path(final_path):
    """A temporary path in the same folder as `final_path`; `os.replace` it into place when complete."""
    folder, base = os.path.split(os.path.abspath(final_path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=os.path.splitext(base)[1] or ".tmp", dir=folder)
    os.close(handle)
    return temporary
