"""Which Keras backend computes: chosen before Keras is imported, recorded with its version.

Keras reads `KERAS_BACKEND` once, when it is first imported, and keeps that backend for the life of the
process; so the command line sets it from `--backend` before anything imports Keras, and a process that
already runs on another backend is told so instead of silently keeping it.
"""
import importlib
import importlib.util
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")  # each runs on the package of its name
DEFAULT = "tensorflow"


def requested():
    """The backend this process will use: `KERAS_BACKEND`, else Keras's default, TensorFlow."""
    return os.environ.get("KERAS_BACKEND") or DEFAULT


def select(backend):
    """Make `backend` the Keras backend of this process (before Keras is imported); None keeps `requested()`."""
    if backend is None:
        return requested()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}. Received: backend={backend!r}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise ValueError(f"Keras already runs on {keras.backend.backend()} in this process: set "
                             f"KERAS_BACKEND={backend} before importing keras. Received: backend={backend!r}")
        return backend
    if importlib.util.find_spec(backend) is None:
        extra = "" if backend == "torch" else f' (pip install -e ".[{backend}]")'
        raise ValueError(f"the {backend} backend needs the {backend} package, which is not "
                         f"installed{extra}. Received: backend={backend!r}")
    os.environ["KERAS_BACKEND"] = backend
    return backend


def current():
    """The backend Keras computes on and its package's version: {"backend": "jax", "version": "0.10.2"}."""
    import keras

    backend = keras.backend.backend()
    return {"backend": backend, "version": importlib.import_module(backend).__version__}
