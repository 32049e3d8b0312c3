"""What a model family declares, and what a built zoo model carries.

A family is a module of `keras_cnn.models` (plain, resnet, fast, transfer) that ends with
`FAMILY = Family(...)`; its registered models return `Spec(FAMILY, defaults)`. The registry
validates options and builds through the required parts; the trainer calls the optional hooks,
None where a family has no such step. Pure Python: nothing here imports Keras.
"""
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, eq=False)  # one object per family: compared and hashed by identity
class Family:
    """A family's interface.

    Attributes:
        name: what `model_info` and the docs call it ("plain", "resnet", ...).
        options: the family's own overrides beyond `options.COMMON`, {option: validator(name, value)}.
        resolve: `(config, *, explicit, name) -> config` with the derived values (channels per stage, ...);
            `explicit` is the set of options the caller gave.
        spatial_ops: `(config) -> [shapes.Op]`, the main path's convolutions and pools, checked before building.
        build: `(config, *, name, num_classes, classifier_activation, include_top, pooling[, weights])`
            -> the `keras.Model`.
        consumes_weights: `build` takes `weights` itself (transfer models: the backbone's) instead of the
            registry loading them into the whole model.
        preferred_input: `(config, data_shape) -> input shape` the family trains at on such data (transfer:
            the backbone's size and channels); None: the data's shape, resized up to the smallest input.
        initialize_from_data: `(model, config, data)`, initialisation from the training images before the
            first step (airbench's whitening stem).
        fine_tune: `(model, *, blocks, learning_rate) -> {"learning_rate", "blocks"}`, a second training phase
            (transfer: unfreeze the top backbone blocks).
    """

    name: str
    options: Mapping[str, Callable[[str, Any], Any]]
    resolve: Callable[..., dict]
    spatial_ops: Callable[[dict], list]
    build: Callable[..., Any]
    consumes_weights: bool = False
    preferred_input: Callable[[dict, tuple], tuple] | None = None
    initialize_from_data: Callable[[Any, dict, Any], None] | None = None
    fine_tune: Callable[..., dict] | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What `keras_cnn.build` made, carried by the model as `model.zoo_config` (timm's `pretrained_cfg`):
    the registered name, its family, the resolved configuration and the `weights` it was asked for."""

    name: str
    family: Family
    config: Mapping[str, Any]
    weights: str | None = None
