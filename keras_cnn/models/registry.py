"""The model registry: names -> builders, in the style of timm (pure Python at import).

A registered model is a function returning a `Spec`: its family (a `family.Family`, declared by a
module under `keras_cnn.models`) and a dict of defaults. `build(name, **overrides)` validates the
overrides against the family's options, merges them over the defaults, checks the feature-map
arithmetic and only then imports Keras and builds the network, which carries what it was built
from as `model.zoo_config` (a `family.ModelConfig`).
"""
import dataclasses
import difflib
import fnmatch
import importlib
from types import MappingProxyType
from typing import Callable, NamedTuple

from keras_cnn.models import checkpoints, options, shapes
from keras_cnn.models.family import Family, ModelConfig

_MODELS = {}
_CATALOGUE_LOADED = False
_CATALOGUE = ("keras_cnn.models.plain", "keras_cnn.models.resnet", "keras_cnn.models.fast", "keras_cnn.models.transfer")


class Spec(NamedTuple):
    family: Family
    defaults: dict


class Entry(NamedTuple):
    name: str
    make_spec: Callable[[], Spec]
    summary: str


def register_model(fn):
    """Decorator: register `fn` (returning a Spec) under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered. Received: name={name!r}")
    summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    _MODELS[name] = Entry(name, fn, summary)
    return fn


def _load_catalogue():
    global _CATALOGUE_LOADED
    if not _CATALOGUE_LOADED:
        _CATALOGUE_LOADED = True
        for module in _CATALOGUE:
            importlib.import_module(module)


def list_models(pattern="*", pretrained=False):
    """Sorted names of the registered models matching a shell-style wildcard; with `pretrained`, only those the
    zoo ships trained weights for (timm's `list_models(pretrained=True)`)."""
    _load_catalogue()
    return sorted(name for name in _MODELS if fnmatch.fnmatchcase(name, pattern)
                  and (not pretrained or checkpoints.available(name)))


def _entry(name):
    _load_catalogue()
    if name in _MODELS:
        return _MODELS[name]
    close = difflib.get_close_matches(str(name), _MODELS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown model {name!r}.{hint} `keras_cnn.list_models()` or `keras-cnn list` shows them all. "
        f"Received: name={name!r}"
    )


def _family(name):
    return _entry(name).make_spec().family


def family_of(name):
    """The `Family` of registered model `name`, or None for a name the registry does not know."""
    _load_catalogue()
    return _family(name) if name in _MODELS else None


def valid_options(name):
    """The overrides model `name` accepts, with their validators."""
    defaults = _entry(name).make_spec().defaults
    checks = {**options.COMMON, **_family(name).options}
    return {key: check for key, check in checks.items() if key in defaults}


def resolve(name, overrides=None):
    """The validated, merged configuration of model `name` with `overrides`."""
    config = dict(_entry(name).make_spec().defaults)
    valid = valid_options(name)
    for key, value in (overrides or {}).items():
        if key not in valid:
            raise ValueError(
                f"{name} does not take the option {key!r}; it takes: {', '.join(sorted(valid))}. "
                f"Received: {key}={value!r}"
            )
        config[key] = valid[key](key, value)
    explicit = set(overrides or ())
    options.require(name, explicit, config, "flip", config["augment"] != "none", "without augmentation (`augment`)")
    return _family(name).resolve(config, explicit=explicit, name=name)


def model_info(name, **overrides):
    """What a model is, without building it: family, defaults, options, the smallest input and its trained
    weights ({dataset: accuracy, class names, input shape, file, sha256, command, preprocessing})."""
    config = resolve(name, overrides)
    side = shapes.smallest_side(_family(name).spatial_ops(config))
    return {
        "name": name,
        "summary": _entry(name).summary,
        "family": _family(name).name,
        "input_shape": config["input_shape"],
        "smallest_input": (side, side),
        "options": sorted(valid_options(name)),
        "config": config,
        "weights": {dataset: {"accuracy": c.accuracy, "accuracy_tta": c.accuracy_tta,
                              "class_names": list(c.class_names), "input_shape": c.input_shape, "file": c.path,
                              "sha256": c.sha256, "command": c.command, "preprocessing": c.preprocessing}
                    for dataset, c in checkpoints.available(name).items()},
    }


def markdown_table(names=None):
    """The catalogue as Markdown: one row per model, then each family's options (the README shows this)."""
    lines = ["| model | family | default input | smallest input | what it is |", "|---|---|---|---|---|"]
    families = {}
    for name in names or list_models():
        info = model_info(name)
        shape, side = "x".join(map(str, info["input_shape"])), info["smallest_input"][0]
        lines.append(f"| `{name}` | {info['family']} | {shape} | {side}x{side} | {info['summary']} |")
        families.setdefault(info["family"], info["options"])
    lines.append("")
    for family, names_ in families.items():
        lines.append(f"Options of the `{family}` family: {', '.join(f'`{o}`' for o in names_)}.")
    return "\n".join(lines)


def build(name, *, input_shape=None, num_classes=None, weights=None, classifier_activation="softmax",
          include_top=True, pooling=None, **overrides):
    """Build zoo model `name` as a Functional `keras.Model`.

    Args:
        name: a registered model name (see `list_models()`).
        input_shape: (height, width, channels) of the raw-pixel input; defaults to the seed's (the checkpoint's
            with trained weights).
        num_classes: output units (default 10, or the checkpoint's); 1 gives a single sigmoid unit for binary
            problems.
        weights: None (random), the name of a data set the zoo ships weights for (`model_info(name)["weights"]`,
            e.g. "cifar10"), the path of a `.weights.h5` file saved from the same architecture, an https:// URL
            (`#sha256=HEX` checks it) or "hf://org/name" (its model.weights.h5). Families that consume
            weights, the transfer models, load them themselves: backbone weights, "imagenet".
        classifier_activation: "softmax" (default), "sigmoid", or None for logits.
        include_top: False for a feature extractor without the classification head (as keras.applications):
            the model ends at its last feature map, or at its global pooling with `pooling`.
        pooling: with include_top=False, None (the 4D feature map), "avg" or "max" (global pooling, 2D output).
        **overrides: variant options (`batchnorm`, `dropout`, `head`, ... see `model_info`); with trained
            weights only those that keep the weights' shapes.

    Returns:
        The model, with `model.zoo_config` (a `ModelConfig`): the name, family, resolved configuration and
        `weights` it was built from.
    """
    top = {"classifier_activation": classifier_activation, "include_top": include_top, "pooling": pooling}
    family = _family(name)
    if checkpoints.is_dataset_name(weights) and not family.consumes_weights:
        return build_from_checkpoint(name, checkpoints.find(name, weights), input_shape=input_shape,
                                     num_classes=num_classes, **top, **overrides)
    config = resolve(name, overrides)
    if input_shape is not None:
        config["input_shape"] = options.input_shape(input_shape)
    num_classes = options.num_classes(10 if num_classes is None else num_classes)
    classifier_activation = options.classifier_activation(classifier_activation)
    options.top(include_top, pooling)
    if num_classes == 1 and classifier_activation == "softmax":
        classifier_activation = "sigmoid"  # softmax over one unit is constant 1
    consumes = family.consumes_weights  # e.g. transfer models: `weights` are the backbone's
    path = checkpoints.local_file(weights) if weights is not None and not consumes else None
    shapes.check(name, family.spatial_ops(config), config["input_shape"])
    model = family.build(config, name=name, num_classes=num_classes, classifier_activation=classifier_activation,
                         include_top=include_top, pooling=pooling, **({"weights": weights} if consumes else {}))
    if path is not None:
        from keras_cnn.utils.io import load_weights

        load_weights(model, path)
    model.zoo_config = ModelConfig(name, family, MappingProxyType(config), None if weights is None else str(weights))
    return model


def build_from_checkpoint(name, checkpoint, *, input_shape=None, num_classes=None, new_head=False, **kwargs):
    """`build` with a shipped checkpoint's weights: built as the checkpoint was (its options under the
    caller's `kwargs`), at its input shape unless given. With `new_head` (fine-tuning on other classes) the
    classification head starts new when `num_classes` differs; else a different `num_classes` with the head is
    refused, as keras.applications does."""
    classes = len(checkpoint.class_names)
    include_top = kwargs.get("include_top", True)
    if include_top and num_classes not in (None, classes) and not new_head:
        raise ValueError(f"the {checkpoint.spec} weights classify {classes} classes; for {num_classes} build "
                         f"with include_top=False (a feature extractor) or weights=None. "
                         f"Received: num_classes={num_classes}")
    overrides = {key: value for key, value in kwargs.items() if key not in ("classifier_activation", "include_top",
                                                                            "pooling")}
    changed = {key: value for key, value in overrides.items() if checkpoint.options.get(key, "unset") != value}
    if input_shape is not None and tuple(input_shape) != checkpoint.input_shape:
        changed["input_shape"] = tuple(input_shape)
    path = checkpoints.verified_path(checkpoint)
    if not changed and include_top and num_classes in (None, classes):  # the checkpoint's own architecture
        model = build(name, input_shape=checkpoint.input_shape, num_classes=classes, weights=path,
                      **{**checkpoint.options, **kwargs})
    else:
        trained = build(name, input_shape=checkpoint.input_shape, num_classes=classes, weights=path,
                        **checkpoint.options)
        model = build(name, input_shape=input_shape or checkpoint.input_shape, num_classes=num_classes or classes,
                      **{**checkpoint.options, **kwargs})
        checkpoints.copy_weights(trained, model, checkpoint, changed, new_head=new_head)
    model.zoo_config = dataclasses.replace(model.zoo_config, weights=checkpoint.dataset)
    return model
