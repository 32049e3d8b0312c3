"""Every private name of Keras, TensorFlow and MediaPipe that keras_cnn uses, each named here once.

A private attribute may change in any release. Each use goes through one function below, which says what it
is for and the release it was checked against, and `tests/test_compat.py` has one canary test per function
that fails when a release renames or changes what it reads. pyproject.toml keeps `keras`, `tensorflow-cpu`
and `mediapipe` below their next minor releases for the same reason: raise a bound after those tests pass.

Not here: keras-tuner's private API, which `tuning/tuners.py` and `tuning/recovery.py` override and read, each
use pinned by a test in tests/test_tuning.py ("private API"). `keras_cnn.training.optimizers.TorchSGD` keeps
its own `_ema_momentum` behind the public `ema_momentum`, which Keras reads at every step; that is no private
name, but tests/test_compat.py checks it too.
"""
import contextlib
import importlib.util
import sys
import types

# ------------------------------------------------------------------------------------------ Keras (3.15.1)


def ema_pairs(optimizer):
    """[(trainable variable, its moving average)] of a built optimizer with `use_ema=True`, so that the two can
    be swapped (validation and checkpoints on the average). Keras keeps the averages in
    `_model_variables_moving_average`, in the order of `_trainable_variables` (the variables `build` was given),
    and has no public accessor for either."""
    return list(zip(optimizer._trainable_variables, optimizer._model_variables_moving_average))


def variable_index(optimizer, variable):
    """The position of `variable` among those `optimizer` was built with, which an optimizer's `update_step`
    finds its slot variables by (Keras's own optimizers call `_get_variable_index` too)."""
    return optimizer._get_variable_index(variable)


def nested_layers(model):
    """Every layer inside `model`, those of nested models and layers included, `model` itself not
    (`Layer._flatten_layers(include_self=False)`; `model.layers` lists only the top level)."""
    return list(model._flatten_layers(include_self=False))


def producer(tensor):
    """The layer (or operation) whose call made the symbolic `tensor` (an `InputLayer` for a `keras.Input`),
    None for a tensor Keras did not make (`KerasTensor._keras_history.operation`)."""
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def first_call(layer):
    """(input tensors, output tensors) of `layer`'s first call in the functional graph that uses it: for a
    nested model, whose `input` and `output` are its own (Functional overrides them), the tensors of the outer
    model around it (`Operation._inbound_nodes[0]`, `Node.input_tensors` and `Node.output_tensors`)."""
    node = layer._inbound_nodes[0]
    return node.input_tensors, node.output_tensors


# ------------------------------------------------------------------------------------- TensorFlow (2.21.0)


@contextlib.contextmanager
def custom_gradients_released():
    """Unregister the gradient functions that `tf.custom_gradient` registers inside the block.

    Traced in a graph, `tf.custom_gradient` registers its gradient function in TensorFlow's global
    gradient registry (`ops._gradient_registry._registry`, a dict) under a new "CustomGradient-N" name and
    never removes it; the function holds tensors of the traced graph, which then outlive `clear_session()`
    (tensorflow#97697, #80895). Only for graphs that no one differentiates again. The registry has no public
    way to unregister; without it (a renamed attribute) nothing is released.
    """
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", {})
    before = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - before:
            if name.startswith("CustomGradient-"):
                del registry[name]


# -------------------------------------------------------------------------------------- MediaPipe (1.2.3)
# The native module that MediaPipe's metadata writer (`mediapipe.tasks.python.metadata.metadata`) imports to
# stamp a buffer's `min_parser_version`; its wheels from 0.10.30 on lack it (`keras_cnn.artifacts.metadata`).
MEDIAPIPE_VERSION_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


def mediapipe_version_module_missing():
    """Whether the installed MediaPipe lacks its native metadata-version module."""
    installed = sys.modules.get(MEDIAPIPE_VERSION_MODULE)
    if installed is not None:
        return installed.__spec__ is None  # the module `install_mediapipe_version_module` makes has none
    parts = MEDIAPIPE_VERSION_MODULE.split(".")
    # Package by package: find_spec of a module whose parent is missing raises, and the traceback it leaves
    # keeps MediaPipe's writers (whose __del__ needs `os`) alive until the interpreter shuts down.
    return any(importlib.util.find_spec(".".join(parts[:end])) is None for end in range(3, len(parts) + 1))


def install_mediapipe_version_module(minimum_parser_version):
    """Supply MediaPipe's missing metadata-version module, whose one function `GetMinimumMetadataParserVersion`
    is `minimum_parser_version(buffer) -> "1.x.y"`; nothing when MediaPipe has the module or it is installed."""
    if MEDIAPIPE_VERSION_MODULE in sys.modules or not mediapipe_version_module_missing():
        return
    module = types.ModuleType(MEDIAPIPE_VERSION_MODULE)
    module.GetMinimumMetadataParserVersion = minimum_parser_version
    parent, name = MEDIAPIPE_VERSION_MODULE.rsplit(".", 1)
    for package in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", parent):
        sys.modules.setdefault(package, types.ModuleType(package))
    sys.modules[MEDIAPIPE_VERSION_MODULE] = module
    setattr(sys.modules[parent], name, module)
