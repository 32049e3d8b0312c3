"""`TrainConfig`: the settings of one `keras_cnn.train` call, checked once, with the recipe's defaults filled in.

`keras_cnn.train` keeps its keyword arguments (their meaning is in its docstring) and makes one `TrainConfig` of
them; every training step reads it, and the run folder's `config.json` records its `settings()` under
"arguments". It is frozen: a step that needs another value (a process's own output folder) makes a copy with
`dataclasses.replace`. Pure Python: nothing here imports Keras.
"""
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from keras_cnn.models import options
from keras_cnn.training import recipes

OBJECTS = ("model", "data", "callbacks")  # what the caller hands over rather than sets: not in settings()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: Any  # a registered name or a keras.Model
    data: Any = "digits"  # a data spec, an (x, y) tuple or an ImageData
    epochs: float | None = None  # None here and below: the recipe's
    batch_size: int | None = None
    recipe: str = "sgd"
    learning_rate: float | None = None
    label_smoothing: float | None = None
    ema: float | None = None
    tta: str | None = None
    precision: str = "auto"
    mixup: float = 0.0
    cutmix: float = 0.0
    seed: int = 0
    out: str | None = None
    resume: bool = False
    early_stopping: int | None = None
    tensorboard: bool = False
    strategy: str | None = None
    distribution: Any = None
    class_weights: bool = False
    data_options: Mapping | None = None
    input_shape: tuple | None = None
    num_classes: int | None = None
    weights: Any = None
    fine_tune_epochs: int = 0
    unfreeze: int | None = None
    callbacks: Sequence = ()
    verbose: Any = "auto"
    overrides: Mapping = dataclasses.field(default_factory=dict)  # variant options of a model built by name

    def __post_init__(self):
        given = {key: getattr(self, key) for key in ("epochs", "batch_size", "label_smoothing", "tta", "ema")}
        self._set(**recipes.defaults(self.recipe, **given))
        self._check()
        if self.by_name:
            self._set(overrides=_recipe_model_options(self.model, self.recipe, self.overrides))
        elif self.overrides or self.input_shape is not None or self.strategy or self.weights is not None:
            raise ValueError("overrides, input_shape, weights and strategy apply to models built by name; build the "
                             f"model with them instead. Received: model=<keras.Model {self.model.name}>")
        if not _is_image_data(self.data):
            self._set(data_options={**recipes.DATA_OPTIONS.get(self.recipe, {}), **(self.data_options or {})})

    @property
    def by_name(self):
        return isinstance(self.model, str)

    @property
    def model_name(self):
        return self.model if self.by_name else self.model.name

    def settings(self):
        """Every setting but the objects handed over (model, data, callbacks): config.json's "arguments"."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name not in OBJECTS}

    def _set(self, **values):  # normalising in __post_init__ only: the dataclass is frozen afterwards
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def _check(self):
        options.positive_float("epochs", self.epochs)
        options.positive_int("batch_size", self.batch_size)
        options.fraction("mixup", self.mixup)
        options.fraction("cutmix", self.cutmix)
        if self.mixup and self.cutmix:
            raise ValueError(f"use MixUp or CutMix, not both. Received: mixup={self.mixup}, cutmix={self.cutmix}")
        if self.strategy not in options.STRATEGIES:
            raise ValueError(f"`strategy` must be None or 'mirrored'. Received: strategy={self.strategy!r}")
        if self.early_stopping is not None:
            options.positive_int("early_stopping", self.early_stopping)
        options.positive_int("fine_tune_epochs", self.fine_tune_epochs, minimum=0)
        if self.num_classes is not None:
            options.num_classes(self.num_classes)
        if self.unfreeze is not None:
            if not self.fine_tune_epochs:
                raise ValueError(f"`unfreeze` has no effect without fine-tuning epochs (`fine_tune_epochs`). "
                                 f"Received: unfreeze={self.unfreeze!r}")
            options.positive_int("unfreeze", self.unfreeze)


def _recipe_model_options(name, recipe, overrides):
    """`overrides` over the network options that go with `recipe` (`recipes.MODEL_OPTIONS`) that model `name`
    has; the caller's win."""
    from keras_cnn.models.registry import valid_options

    valid = valid_options(name)
    if (overrides or {}).get("batchnorm") is False:  # the recipe's batch-norm options would then be refused
        valid = {key: check for key, check in valid.items() if not key.startswith("bn_")}
    return {**{key: value for key, value in recipes.MODEL_OPTIONS.get(recipe, {}).items() if key in valid},
            **(overrides or {})}


def _is_image_data(data):
    loading = sys.modules.get("keras_cnn.data.loading")  # imports Keras; an ImageData exists only once it is imported
    return loading is not None and isinstance(data, loading.ImageData)
