"""keras-cnn: the tutorials' convolutional networks as a Keras 3 model zoo.

`import keras_cnn` is cheap: TensorFlow is imported only when a function that
needs it is first used, so `keras-cnn list` and `--help` answer instantly.
"""
import importlib

from keras_cnn import _checkout

_checkout.install()  # keras_cnn.tuning from this checkout's tuning/ folder when run from PYTHONPATH
__version__ = "0.1.0"

# Public name -> "module:attribute", resolved on first access (PEP 562). Modules are
# named for what they hold (training, evaluation, ...) so that a submodule import never
# replaces the function of the same name on the package.
_LAZY = {
    "build": "keras_cnn.registry:build",
    "list_models": "keras_cnn.registry:list_models",
    "model_info": "keras_cnn.registry:model_info",
    "register_model": "keras_cnn.registry:register_model",
    "describe": "keras_cnn.analysis:describe",
    "load_data": "keras_cnn.data:load_data",
    "load": "keras_cnn.runs:load",
    "Run": "keras_cnn.runs:Run",
    "load_model": "keras_cnn.io:load_model",
    "train": "keras_cnn.training:train",
    "evaluate": "keras_cnn.evaluation:evaluate",
    "explain": "keras_cnn.explaining:explain",
    "export": "keras_cnn.exporting:export",
    "predict": "keras_cnn.prediction:predict",
    "tune": "keras_cnn.tuning:search",
    "reference": "keras_cnn.reference",
}

__all__ = sorted(_LAZY)


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
