"""The keras-tuner HyperModel over the zoo: a space's proposal -> `keras_cnn.build` -> the training recipes.

`build(hp)` asks the space what to build, refuses a configuration whose feature
maps would shrink below 1x1 on this data (`FailedTrialError`, decided by
`keras_cnn.model_info` before anything is built), builds the zoo's own model with
`keras_cnn.build` and compiles it with the optimizer, loss, metrics and steps
per call of `keras_cnn.training.recipes`, as `keras_cnn.train` does. `fit` measures the built model
against the budgets (`tuning.budgets`) before training it and, once trained, converts the
trial's checkpoint to the file the search ships and measures that (`tuning.shipping`).
"""
import os

import keras
import keras_tuner
import numpy as np

from keras_cnn.models import registry
from keras_cnn.training import recipes
from keras_cnn.tuning import budgets as budget_checks
from keras_cnn.tuning import shipping as ship


class ZooHyperModel(keras_tuner.HyperModel):
    """Builds and trains the zoo models a space proposes, for images of `input_shape`.

    Args:
        space: a function `space(hp) -> tuning.spaces.Proposal`.
        input_shape: (height, width, channels) of the data; models are never resized to fit it.
        num_classes: output units.
        steps_per_epoch: training batches per epoch, which size the `sgd` recipe's cosine schedule.
        batch_size: images per batch, which sizes the steps run per Keras call (`recipes.steps_per_execution`).
        epochs: epochs per trial (Hyperband sets each trial's own in its hyperparameters).
        budgets: {"max_params": ..., ...} limits a model must meet.
        shipping: a `tuning.shipping.Shipping`: every trained trial is converted to that file and measured
            (None: not measured).
        metrics: return {metric: value} with the shipped file's numbers from `fit` (a search with objectives)
            rather than the Keras history.
    """

    def __init__(self, space, *, input_shape, num_classes, steps_per_epoch, epochs, batch_size=128, budgets=None,
                 shipping=None, metrics=False):
        super().__init__(name="keras_cnn")
        self.space = space
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.batch_size = batch_size
        self.budgets = budgets or {}
        self.shipping = shipping
        self.metrics = metrics

    def declare_hyperparameters(self, hp):
        """Register the space on `hp` without building anything (see `tuning.search`)."""
        self.space(hp)

    def proposal(self, hp):
        """The space's proposal for `hp`; FailedTrialError if its feature maps would collapse on this data."""
        proposal = self.space(hp)
        info = registry.model_info(proposal.model, **proposal.overrides)
        side = info["smallest_input"]
        shape = proposal.input_shape(self.input_shape)
        height, width = shape[:2]
        if height < side[0] or width < side[1]:
            raise keras_tuner.errors.FailedTrialError(
                f"collapsed: needs inputs of at least {side[0]}x{side[1]}, the images are {height}x{width}")
        if proposal.weights == "imagenet":
            _check_imagenet(proposal.model, {**info["config"], "input_shape": shape})
        return proposal

    def build(self, hp):
        proposal = self.proposal(hp)
        model = registry.build(proposal.model, input_shape=proposal.input_shape(self.input_shape),
                               num_classes=self.num_classes, weights=proposal.weights, **proposal.overrides)
        if proposal.unfreeze:
            from keras_cnn.models import transfer

            transfer.unfreeze(model, proposal.unfreeze)
        # Hyperband continues a trial from another's weights: each trial's schedule spans the epochs it trains.
        epochs = hp.values.get("tuner/epochs", self.epochs) - hp.values.get("tuner/initial_epoch", 0)
        optimizer = recipes.compile_model(model, proposal.recipe, total_steps=epochs * self.steps_per_epoch,
                                          learning_rate=proposal.learning_rate, batch_size=self.batch_size)
        # Create the optimizer's variables now rather than inside the traced training step, where they leave
        # ~0.35 MB a trial that clear_session() does not return (trials 20 to 40 on digits).
        optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp, model, *args, record=None, verbose=0, **kwargs):
        """Measure `model` into `record`, refuse it if it breaks a budget, train it (one line per epoch when
        `verbose`), then measure the file it ships as and refuse it if that breaks the size or latency budget."""
        record = {} if record is None else record
        float32 = self.shipping is None or self.shipping.variant == "float32"
        budget_checks.measure_and_enforce(model, self.budgets, record, float32_precheck=float32)
        args, kwargs = _resized(model, args, kwargs)
        history = model.fit(*args, shuffle=False, verbose=2 if verbose else 0, **kwargs)  # the pipeline shuffles
        record.update(epochs=kwargs.get("initial_epoch", 0) + len(history.epoch),  # Hyperband continues trials
                      val_accuracy=max(history.history.get("val_accuracy", [None])))
        if self.shipping is None:
            return history
        _load_checkpoint(model, kwargs.get("callbacks", []))
        if not all(np.isfinite(weights).all() for weights in model.get_weights()):
            raise keras_tuner.errors.FailedTrialError("diverged: the trained weights are not finite numbers")
        record.update(ship=self.shipping.variant, **ship.measure(model, self.shipping), **self.shipping.threads)
        budget_checks.enforce_shipped(record, self.budgets)
        if not self.metrics:
            return history
        return {key: float(record[key]) for key in ("val_accuracy", "params", "macs", *ship.METRICS)
                if record.get(key) is not None}


def _check_imagenet(model, config):
    """FailedTrialError when the ImageNet weights a proposal names are not in the Keras cache (or do not exist)."""
    from keras_cnn.models import pretrained

    try:
        pretrained.check_imagenet_width(model, pretrained.BACKBONES[config["backbone"]], config)
        pretrained.imagenet_weights_file(model, config)
    except (ValueError, FileNotFoundError) as error:  # pretrained.WeightsUnavailable: not in the cache
        raise keras_tuner.errors.FailedTrialError(f"no weights: {' '.join(str(error).split())}") from error


def _load_checkpoint(model, callbacks):
    """Give `model` the weights keras-tuner checkpointed for its trial (its best epoch, or the last one when the
    objective is measured after training), so that what is measured is what the trial keeps."""
    for callback in callbacks:
        path = getattr(callback, "filepath", None)
        if type(callback).__name__ == "SaveBestEpoch" and path and os.path.exists(path):
            model.load_weights(path)


def rebuild(hypermodel, hp, weights):
    """A trial's model with its checkpoint `weights` (keras-tuner keeps weights only)."""
    keras.backend.clear_session()
    model = hypermodel.build(hp)
    model.load_weights(weights)
    return model


def _resized(model, args, kwargs):
    """`fit`'s training and validation batches resized to `model`'s input where it differs from the data's (a
    proposal's `input_size`), as the data pipeline resizes them (`keras_cnn.data.loading.adapt`)."""
    from keras_cnn.data.loading import adapt

    shape = tuple(model.input_shape[1:])
    train = args[0] if args else None
    if not hasattr(train, "element_spec") or tuple(train.element_spec[0].shape[1:]) == shape:
        return args, kwargs

    def resize(images, labels):
        return adapt(images, shape), labels

    if kwargs.get("validation_data") is not None:
        kwargs = {**kwargs, "validation_data": kwargs["validation_data"].map(resize)}
    return (train.map(resize), *args[1:]), kwargs
