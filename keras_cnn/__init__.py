"""keras-cnn: the tutorials' convolutional networks as a Keras 3 model zoo.

`import keras_cnn` registers keras-cnn's layers, initialisers and optimizers with Keras, so that
`keras.saving.load_model` reads every file keras-cnn writes; the public functions below are
imported when first used. The `keras-cnn` command defers even the registration (and so Keras
itself) to the commands that load a model, so `keras-cnn list` and `--help` answer instantly.
"""
import importlib
import os
import sys

__version__ = "0.1.0"

# Public name -> "module:attribute", resolved on first access (PEP 562). Modules are
# named for what they hold (training, evaluation, ...) so that a submodule import never
# replaces the function of the same name on the package.
_LAZY = {
    "build": "keras_cnn.models.registry:build",
    "list_models": "keras_cnn.models.registry:list_models",
    "model_info": "keras_cnn.models.registry:model_info",
    "register_model": "keras_cnn.models.registry:register_model",
    "describe": "keras_cnn.analysis.architecture:describe",
    "load_data": "keras_cnn.data.loading:load_data",
    "load": "keras_cnn.artifacts.runs:load",
    "Run": "keras_cnn.artifacts.runs:Run",
    "load_model": "keras_cnn.utils.io:load_model",
    "train": "keras_cnn.training.trainer:train",
    "evaluate": "keras_cnn.evaluation.evaluate:evaluate",
    "explain": "keras_cnn.evaluation.explaining:explain",
    "export": "keras_cnn.exporting.pipeline:export",
    "predict": "keras_cnn.artifacts.prediction:predict",
    "tune": "keras_cnn.tuning:search",
    "reference": "keras_cnn.analysis.reference",
}

__all__ = sorted(_LAZY) + ["register_keras_objects"]

# The modules whose classes Keras finds by their registered names ("keras_cnn>Conv2D") in saved configs.
_KERAS_OBJECT_MODULES = ("keras_cnn.models.layers", "keras_cnn.models.augment", "keras_cnn.models.initializers",
                         "keras_cnn.training.optimizers")


def register_keras_objects():
    """Register keras-cnn's custom Keras objects (importing their modules registers them; Keras has no lazy
    lookup for a package outside its own family). Cheap after the first call."""
    for module_name in _KERAS_OBJECT_MODULES:
        importlib.import_module(module_name)


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'keras_cnn' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    value = importlib.import_module(module_name)
    if attribute:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


def _in_command_line():
    """Whether this process is the `keras-cnn` command (or `python -m keras_cnn....`, while Python locates it)."""
    program = sys.argv[0] if sys.argv else ""
    return program == "-m" or os.path.basename(program).startswith("keras-cnn")


if not _in_command_line():  # the command registers when a command loads a model, so --help stays instant
    register_keras_objects()
