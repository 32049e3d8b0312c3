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

from keras_cnn.models.options import ACTIVATIONS, AUGMENT_PRESETS, DOWNSAMPLES
from keras_cnn.training.recipes import RECIPES


@dataclasses.dataclass(frozen=True)
class Proposal:
    """One configuration: `keras_cnn.build(model, weights=weights, **overrides)`, trained with `recipe` at
    `learning_rate`; a transfer model with its top `unfreeze` backbone blocks trainable (0: frozen), at inputs
    of `input_size` x `input_size` (None: the data's size), to which the search resizes the images."""

    model: str
    overrides: dict
    recipe: str = "adam"
    learning_rate: float = None  # None: the recipe's default
    weights: str = None  # `keras_cnn.build`'s: "imagenet" or a file for a transfer model's backbone
    unfreeze: int = 0
    input_size: int = None

    def input_shape(self, data_shape):
        """The model's input for images of `data_shape`: theirs, or `input_size` square with their channels."""
        size = self.input_size
        return tuple(data_shape) if size is None else (size, size, data_shape[-1])


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
        "dropout": _dropout(hp, default=0.2),
        "head": hp.Choice("head", ["flatten", "gap"]),
        "activation": hp.Choice("activation", list(ACTIVATIONS)),
        **_augment(hp),
    }
    return Proposal("small", overrides, *_recipe(hp))


RESNET_FILTERS = (64, 128, 256, 512)  # resnet18's stages, scaled by `width`


def resnet(hp):
    """The ResNet family (`resnet18` and its variants): 2-4 stages of 1-3 basic blocks each, channel width
    (a fraction of 64-128-256-512), kernel, how stages downsample, augmentation, recipe and learning rate."""
    stages = hp.Int("stages", 2, len(RESNET_FILTERS), default=4)
    blocks = []
    for stage in range(1, len(RESNET_FILTERS) + 1):
        with hp.conditional_scope("stages", list(range(stage, len(RESNET_FILTERS) + 1))):
            count = hp.Int(f"blocks_{stage}", 1, 3, default=2)
        if stage <= stages:
            blocks.append(count)
    overrides = {
        "stages": stages,
        "blocks": blocks,
        "width": hp.Choice("width", [0.125, 0.25, 0.5, 1.0], default=0.25),
        "kernel_size": hp.Choice("kernel_size", [3, 5]),
        "downsample": hp.Choice("downsample", list(DOWNSAMPLES), default="stride"),
        **_augment(hp),
    }
    return Proposal("resnet18", overrides, *_recipe(hp))


FAST_STAGES = 3  # airbench's three pooled stages


def fast(hp):
    """The airbench family: the stem's and each stage's channels (2 or 3 stages), dropout, augmentation,
    recipe and learning rate."""
    stages = hp.Int("stages", 2, FAST_STAGES, default=FAST_STAGES)
    filters = []
    for stage, default in zip(range(1, FAST_STAGES + 1), (64, 256, 256)):
        with hp.conditional_scope("stages", list(range(stage, FAST_STAGES + 1))):
            width = hp.Choice(f"filters_{stage}", [16, 32, 64, 128, 256], default=default)
        if stage <= stages:
            filters.append(width)
    overrides = {
        "stem": hp.Choice("stem", [8, 16, 24, 32], default=24),
        "filters": filters,
        "dropout": _dropout(hp, default=0.0),
        **_augment(hp),
    }
    return Proposal("airbench", overrides, *_recipe(hp))


TRANSFER_BACKBONES = ("mobilenetv3small", "mobilenetv2", "efficientnetb0", "resnet50v2", "resnet50")
TRANSFER_INPUT_SIZES = (96, 128, 160, 224)  # the sides keras.applications ships MobileNet weights for


def transfer(hp):
    """The transfer family with ImageNet weights: the backbone (of the `*_transfer` models with ImageNet weights),
    its width (alpha) where it has some, the input size the images are resized to, how many of its top blocks
    train (0: frozen), the head's dense layer and dropout, and Adam's learning rate (lower when blocks are
    unfrozen, as fine-tuning wants)."""
    from keras_cnn.models.backbones import BACKBONES

    backbone = hp.Choice("backbone", list(TRANSFER_BACKBONES))
    overrides = {}
    for name in TRANSFER_BACKBONES:
        with hp.conditional_scope("backbone", [name]):
            if BACKBONES[name].widths:
                width = hp.Choice(f"width_{name}", list(BACKBONES[name].widths), default=1.0)
                if name == backbone:
                    overrides["width"] = width
    input_size = hp.Choice("input_size", list(TRANSFER_INPUT_SIZES), default=TRANSFER_INPUT_SIZES[0])
    unfreeze = hp.Choice("unfreeze", [0, 1, 2, 4])
    dense = hp.Choice("dense", [0, 128])
    overrides.update(dense=[dense] if dense else [], dropout=_dropout(hp, default=0.2), **_augment(hp))
    with hp.conditional_scope("unfreeze", [0]):
        frozen_lr = hp.Float("head_lr", 1e-4, 1e-2, sampling="log", default=1e-3)
    with hp.conditional_scope("unfreeze", [1, 2, 4]):
        tuned_lr = hp.Float("fine_tune_lr", 1e-5, 1e-3, sampling="log", default=1e-4)
    return Proposal(f"{backbone}_transfer", overrides, "adam", tuned_lr if unfreeze else frozen_lr,
                    weights="imagenet", unfreeze=unfreeze, input_size=input_size)


def _dropout(hp, default):
    return round(hp.Float("dropout", 0.0, 0.5, step=0.1, default=default), 2)  # 0.30000000000000004 -> 0.3


def _augment(hp):
    """The augmentation preset, and whether it flips (mirroring changes the meaning of digits and text)."""
    overrides = {"augment": hp.Choice("augment", list(AUGMENT_PRESETS))}
    augmented = [preset for preset in AUGMENT_PRESETS if preset != "none"]
    with hp.conditional_scope("augment", augmented):
        flip = hp.Boolean("flip", default=True)
    if overrides["augment"] != "none":
        overrides["flip"] = flip
    return overrides


def _recipe(hp):
    """(recipe, learning rate): each recipe searches its own range around its default (adam 1e-3, sgd 0.1)."""
    recipe = hp.Choice("recipe", list(RECIPES), default="adam")
    with hp.conditional_scope("recipe", ["adam"]):
        adam = hp.Float("adam_lr", 1e-4, 1e-2, sampling="log", default=1e-3)
    with hp.conditional_scope("recipe", ["sgd"]):
        sgd = hp.Float("sgd_lr", 1e-2, 0.3, sampling="log", default=0.1)
    return recipe, adam if recipe == "adam" else sgd


SPACES = {"cnn": cnn, "resnet": resnet, "fast": fast, "transfer": transfer}


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
        raise ValueError(f"cannot import the space {space!r}: {error}. Received: space={space!r}") from error
    return space, function
