"""Training recipes: optimizers and schedules, losses and metrics, steps per call, and `compile_model`.

`sgd` is seed 003's PyTorch recipe reproduced exactly: SGD with momentum 0.9,
learning rate 0.1 on a per-step cosine schedule (after a short linear warm-up),
and weight decay 5e-4 added to the gradient as L2, as `torch.optim.SGD` does.
Keras's own `weight_decay=` is decoupled (w -= lr * wd * w, AdamW-style), which
is a different and here much weaker regulariser, so it cannot stand in for it
(`keras_cnn.training.optimizers.TorchSGD` is the optimizer).

`airbench` is airbench94's recipe (Keller Jordan's CIFAR-10 speed run): Nesterov SGD with momentum 0.85,
a learning rate given per 1,024 examples (11.5) and divided by airbench's `1 + 1 / (1 - momentum)` so the
step size does not depend on the momentum, L2 weight decay 0.0153 per 1,024 examples (the same decay per
step at every batch size), batch-norm offsets at 64x the rate, a linear warm-up from 0.2x over the first 23%
of steps and a linear decay to 0.07x, label smoothing 0.2, and lookahead (Keras's EMA, overwriting the
weights every 5 steps, its momentum ramped up as airbench's). Its defaults (`RECIPE_DEFAULTS`) are
airbench's: 9.9 epochs of batch 1,024 and `flip+translate` test-time augmentation; `MODEL_OPTIONS` are the
network options that go with it where a model has them (the `airbench` model has them all).

`airbench_muon` is airbench94_muon's recipe: Muon (`keras_cnn.training.optimizers.Muon`) for the convolution kernels at
0.24 and Nesterov SGD for the other weights, all decaying linearly to zero, no lookahead, 10 epochs of batch
2,000, and airbench's network with a bias-free unit-std head scaled by 1/256 and a learned stem offset.

Keras is imported when a function runs, so the command line can read RECIPES without loading it.
"""
RECIPES = ("sgd", "adam")  # the general-purpose recipes (the tuning space draws from these)
# recipes tuned for one network and data set (their lr means something else)
SPEED_RECIPES = ("airbench", "airbench_muon")
ALL_RECIPES = RECIPES + SPEED_RECIPES
# airbench: per 1,024 examples; airbench_muon: the convolution kernels' (the other weights' scale with it)
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "airbench": 11.5, "airbench_muon": 0.24}
WARMUP_FRACTION = 0.02  # of all steps, for the sgd recipe
# `train` arguments a recipe sets when the caller leaves them unset (None); the general ones otherwise.
TRAIN_DEFAULTS = {"epochs": 30, "batch_size": 128, "label_smoothing": 0.0, "tta": None, "ema": None}
RECIPE_DEFAULTS = {"airbench": {"epochs": 9.9, "batch_size": 1024, "label_smoothing": 0.2, "tta": "flip+translate",
                                "ema": 0.95},
                   "airbench_muon": {"epochs": 10, "batch_size": 2000, "label_smoothing": 0.2,
                                     "tta": "flip+translate"}}
# The airbench recipes keep no best epoch (their weights are the final ones, or an average), so like airbench94
# they train on every training image unless the caller asks for a validation split.
DATA_OPTIONS = {"airbench": {"val_fraction": 0.0}, "airbench_muon": {"val_fraction": 0.0}}
MODEL_OPTIONS = {"airbench": {"activation": "gelu", "stem_init": "whitening", "kernel_initializer": "dirac",
                              "bn_scale": False, "bn_momentum": 0.6, "bn_epsilon": 1e-12, "head": "gmp",
                              "head_scale": 1 / 9, "augment": "flip_translate"}}
# airbench94_muon's head: no bias, a unit-std kernel and logits divided by the width (256); the whitening
# stem's offset learns for the first epochs.
MODEL_OPTIONS["airbench_muon"] = {**MODEL_OPTIONS["airbench"], "head_scale": 1 / 256, "head_bias": False,
                                  "head_init": "unit_uniform", "stem_offset": True}
AIRBENCH = {"momentum": 0.85, "weight_decay": 0.0153, "bias_scaler": 64.0, "warmup": 0.23, "start": 0.2,
            "end": 0.07, "lookahead_every": 5}
# airbench94_muon's rates for the weights SGD trains, per example of its summed loss, and its weight decay
# per example; the stem offset learns for the first 30% of the steps (3 of 10 epochs).
AIRBENCH_MUON = {"offset_rate": 0.053, "head_rate": 0.67, "weight_decay": 2e-6, "stem_offset_fraction": 0.3}
# Every call from Keras into TensorFlow has a fixed cost (Python, callbacks, starting the graph): on a
# 2-core CPU a batch-2 step took 7.0 ms with one step per call and 5.4 with 32. Several steps per call
# made `small` at batch 128 5-11% faster; `deeper`, 12x the work a step, gained nothing measurable.
# Calls aim at this much training work (multiply-accumulates, forward and backward), at most
# MAX_STEPS_PER_EXECUTION steps.
MACS_PER_EXECUTION = 64e9
MAX_STEPS_PER_EXECUTION = 32


def check_recipe(recipe):
    """`recipe` if it is one of ALL_RECIPES, else a ValueError naming them."""
    if recipe not in ALL_RECIPES:
        raise ValueError(f"`recipe` must be one of {', '.join(ALL_RECIPES)}. Received: recipe={recipe!r}")
    return recipe


def defaults(recipe, **given):
    """`given` (epochs, batch_size, label_smoothing, tta, ema) with each None replaced by the recipe's default."""
    check_recipe(recipe)
    chosen = {**TRAIN_DEFAULTS, **RECIPE_DEFAULTS.get(recipe, {})}
    return {key: chosen[key] if value is None else value for key, value in given.items()}


def optimizer(recipe, *, total_steps, learning_rate=None, batch_size=128, ema=None):
    """The recipe's optimizer; `total_steps` sizes the schedule, `ema` (a momentum) keeps Keras's moving average
    of the weights, which evaluation and the checkpoint use (`keras_cnn.training.callbacks`)."""
    import keras

    from keras_cnn.training.optimizers import TorchSGD

    check_recipe(recipe)
    peak = DEFAULT_LR[recipe] if learning_rate is None else learning_rate
    if not peak > 0:
        raise ValueError(f"the learning rate must be > 0. Received: learning_rate={learning_rate!r}")
    averaging = {"use_ema": True, "ema_momentum": ema} if ema else {}
    if ema is not None and not 0 <= ema < 1:
        raise ValueError(f"`ema` is the moving average's momentum, 0 <= ema < 1. Received: ema={ema!r}")
    if recipe == "adam":
        return keras.optimizers.Adam(peak, **averaging)
    if recipe == "airbench":
        return _airbench_optimizer(peak, total_steps, batch_size, averaging)
    if recipe == "airbench_muon":
        return _airbench_muon_optimizer(peak, total_steps, batch_size, averaging)
    warmup = int(total_steps * WARMUP_FRACTION)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=max(1, total_steps - warmup),
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )
    return TorchSGD(schedule, **averaging)


def airbench_learning_rate(rate_per_1024, batch_size, momentum=AIRBENCH["momentum"]):
    """The Keras learning rate (of a batch-mean loss) for airbench's decoupled rate per 1,024 examples:
    airbench sums the loss over the batch and divides its rate by 1024 * (1 + 1 / (1 - momentum))."""
    return rate_per_1024 * batch_size / (1024 * (1 + 1 / (1 - momentum)))


def _airbench_optimizer(rate_per_1024, total_steps, batch_size, averaging):
    from keras_cnn.training.optimizers import TorchSGD, TriangularSchedule

    peak = airbench_learning_rate(rate_per_1024, batch_size)
    warmup = max(1, int(total_steps * AIRBENCH["warmup"]))
    schedule = TriangularSchedule(peak, warmup, max(1, total_steps), AIRBENCH["start"], AIRBENCH["end"])
    # lr * l2 = airbench's decay per step, weight_decay * batch / (1024 * (1 + 1 / (1 - momentum))).
    l2 = AIRBENCH["weight_decay"] / rate_per_1024
    lookahead = {"ema_overwrite_frequency": AIRBENCH["lookahead_every"], "ema_ramp_steps": total_steps}
    return TorchSGD(schedule, momentum=AIRBENCH["momentum"], l2=l2, nesterov=True,
                    bias_lr_scale=AIRBENCH["bias_scaler"], **(dict(averaging, **lookahead) if averaging else {}))


def _airbench_muon_optimizer(kernel_rate, total_steps, batch_size, averaging):
    import keras

    from keras_cnn.training.optimizers import Muon

    schedule = keras.optimizers.schedules.PolynomialDecay(kernel_rate, max(1, total_steps), end_learning_rate=0.0)
    # airbench sums the loss over the batch: its rate r on the batch mean is r * batch_size, with L2
    # weight_decay / r, relative to the kernels' rate (`--lr` scales all of them together).
    rates = {"other": AIRBENCH_MUON["offset_rate"], "stem_offset": AIRBENCH_MUON["offset_rate"],
             "predictions": AIRBENCH_MUON["head_rate"]}
    scales = {role: rate * batch_size / DEFAULT_LR["airbench_muon"] for role, rate in rates.items()}
    l2 = {role: AIRBENCH_MUON["weight_decay"] / rate for role, rate in rates.items()}
    stem_offset_steps = max(1, round(total_steps * AIRBENCH_MUON["stem_offset_fraction"]))
    return Muon(schedule, rate_scales=scales, l2=l2, stem_offset_steps=stem_offset_steps, **averaging)


def steps_per_execution(model, batch_size):
    """Training steps per Keras call for `model` at `batch_size` (1 to 32); batch-level callbacks and the
    progress bar then update once per call. Keras runs one step per call on PyTorch."""
    import keras

    from keras_cnn.analysis import architecture as analysis

    if keras.backend.backend() == "torch":
        return 1
    step = 3 * analysis.model_macs(model) * batch_size
    return int(max(1, min(MAX_STEPS_PER_EXECUTION, MACS_PER_EXECUTION // max(step, 1))))


def loss_and_metrics(num_outputs, label_smoothing=0.0):
    """Cross-entropy on one-hot labels, `accuracy`, and `top5_accuracy` where 5 < classes."""
    import keras

    if num_outputs == 1:
        return (keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
                [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.5)])
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_outputs > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing), metrics


def compile_model(model, recipe="sgd", *, total_steps, learning_rate=None, label_smoothing=0.0, batch_size=128,
                  steps_per_call=None, ema=None):
    """Compile `model` as every keras_cnn trainer does (`train`, its fine-tuning phase, the tuner's trials).

    The recipe's optimizer (its schedule spanning `total_steps`, the peak `learning_rate` or the recipe's,
    the weights' moving average with momentum `ema`), cross-entropy on one-hot labels with `label_smoothing`,
    `accuracy` (and `top5_accuracy` above 5 classes), no XLA, and `steps_per_call` training steps per Keras call
    (default: `steps_per_execution(model, batch_size)`). Returns the optimizer.
    """
    loss, metrics = loss_and_metrics(model.output_shape[-1], label_smoothing)
    optimizer_ = optimizer(recipe, total_steps=total_steps, learning_rate=learning_rate, batch_size=batch_size,
                           ema=ema)
    per_call = steps_per_execution(model, batch_size) if steps_per_call is None else steps_per_call
    model.compile(optimizer=optimizer_, loss=loss, metrics=metrics, jit_compile=False, steps_per_execution=per_call)
    return optimizer_
