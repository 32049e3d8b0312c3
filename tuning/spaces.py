"""Search spaces: what a search may change, named and defined in one readable place.

A space is a function `space(hp) -> Proposal`. It declares hyperparameters on `hp`
(keras-tuner's `HyperParameters`) and says which zoo model to build with which
`keras_cnn.build` overrides, and how to train it. Nothing here builds a model, so
a space is cheap to call and easy to read.

Declare every hyperparameter on every call, wrapping those that only apply
sometimes in `hp.conditional_scope` (`filters_3` only when `stages >= 3`): the
tuner then knows the whole space before the first trial, the results table shows
only the values a trial actually used, and two trials that differ only in an
unused value count as the same configuration.

Pass your own function to `search(space=...)`, or its import path
("package.module:function") where it must be found again by name (the CLI,
`distributed=True`).
"""
import dataclasses
import importlib

from keras_cnn.options import ACTIVATIONS, AUGMENT_PRESETS, DOWNSAMPLES
from keras_cnn.recipes import RECIPES


@dataclasses.dataclass(frozen=True)
class Proposal:
    """One configuration: `keras_cnn.build(model, **overrides)`, trained with `recipe` at `learning_rate`."""

    model: str
    overrides: dict
    recipe: str = "adam"
    learning_rate: float = None  # None: the recipe's default


MAX_STAGES = 4  # 32x32 inputs keep 2x2 after four pooled stages; 8x8 digits collapse at four


def cnn(hp):
    """The plain family (`small` and its variants): depth and width, kernel, downsampling, BatchNorm,
    dropout, head, activation, augmentation, and the optimizer recipe with its learning rate."""
    stages = hp.Int("stages", 1, MAX_STAGES, default=2)
    filters = []
    for stage in range(1, MAX_STAGES + 1):
        with hp.conditional_scope("stages", list(range(stage, MAX_STAGES + 1))):
            width = hp.Int(f"filters_{stage}", 8, 128, step=2, sampling="log", default=16 * 2 ** (stage - 1))
        if stage <= stages:
            filters.append(width)
    overrides = {
        "filters": filters,
        "kernel_size": hp.Choice("kernel_size", [3, 5, 7]),
        "downsample": hp.Choice("downsample", list(DOWNSAMPLES)),
        "batchnorm": hp.Boolean("batchnorm", default=True),
        "dropout": round(hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2), 2),  # 0.30000000000000004 -> 0.3
        "head": hp.Choice("head", ["flatten", "gap"]),
        "activation": hp.Choice("activation", list(ACTIVATIONS)),
        "augment": hp.Choice("augment", list(AUGMENT_PRESETS)),
    }
    augmented = [preset for preset in AUGMENT_PRESETS if preset != "none"]
    with hp.conditional_scope("augment", augmented):
        flip = hp.Boolean("flip", default=True)  # mirroring changes the meaning of digits and text
    if overrides["augment"] != "none":
        overrides["flip"] = flip
    return Proposal("small", overrides, *_recipe(hp))


def _recipe(hp):
    """(recipe, learning rate): each recipe searches its own range around its default (adam 1e-3, sgd 0.1)."""
    recipe = hp.Choice("recipe", list(RECIPES), default="adam")
    with hp.conditional_scope("recipe", ["adam"]):
        adam = hp.Float("adam_lr", 1e-4, 1e-2, sampling="log", default=1e-3)
    with hp.conditional_scope("recipe", ["sgd"]):
        sgd = hp.Float("sgd_lr", 1e-2, 0.3, sampling="log", default=0.1)
    return recipe, adam if recipe == "adam" else sgd


SPACES = {"cnn": cnn}


def resolve(space):
    """(name, function) of `space`: a name in SPACES, "package.module:function", or a function."""
    if callable(space):
        return f"{space.__module__}:{space.__qualname__}", space
    if isinstance(space, str) and space in SPACES:
        return space, SPACES[space]
    module, sep, attribute = space.partition(":") if isinstance(space, str) else ("", "", "")
    if not (sep and module and attribute):
        raise ValueError(f"`space` must be one of {', '.join(map(repr, SPACES))}, 'package.module:function' or a "
                         f"function taking hp. Received: space={space!r}")
    try:
        function = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import the space {space!r}: {error}. Received: space={space!r}") from None
    return space, function
