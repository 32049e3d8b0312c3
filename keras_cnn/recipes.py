"""Training recipes: optimizers and schedules, losses and metrics, steps per call, and `compile_model`.

`sgd` is seed 003's PyTorch recipe reproduced exactly: SGD with momentum 0.9,
learning rate 0.1 on a per-step cosine schedule (after a short linear warm-up),
and weight decay 5e-4 added to the gradient as L2, as `torch.optim.SGD` does.
Keras's own `weight_decay=` is decoupled (w -= lr * wd * w, AdamW-style), which
is a different and here much weaker regulariser, so it cannot stand in for it
(`keras_cnn.optimizers.TorchSGD` is the optimizer). Keras is imported when a function runs, so the
command line can read RECIPES without loading it.
"""
RECIPES = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}
WARMUP_FRACTION = 0.02  # of all steps, for the sgd recipe
# Every call from Keras into TensorFlow has a fixed cost (Python, callbacks, starting the graph): on a
# 2-core CPU a batch-2 step took 7.0 ms with one step per call and 5.4 with 32. Several steps per call
# made `small` at batch 128 5-11% faster; `deeper`, 12x the work a step, gained nothing measurable.
# Calls aim at this much training work (multiply-accumulates, forward and backward), at most
# MAX_STEPS_PER_EXECUTION steps.
MACS_PER_EXECUTION = 64e9
MAX_STEPS_PER_EXECUTION = 32


def optimizer(recipe, *, total_steps, learning_rate=None):
    """The recipe's optimizer; `total_steps` sizes the cosine schedule of `sgd`."""
    import keras

    from keras_cnn.optimizers import TorchSGD

    if recipe not in RECIPES:
        raise ValueError(f"`recipe` must be one of {', '.join(RECIPES)}. Received: recipe={recipe!r}")
    peak = DEFAULT_LR[recipe] if learning_rate is None else learning_rate
    if not peak > 0:
        raise ValueError(f"the learning rate must be > 0. Received: learning_rate={learning_rate!r}")
    if recipe == "adam":
        return keras.optimizers.Adam(peak)
    warmup = int(total_steps * WARMUP_FRACTION)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=max(1, total_steps - warmup),
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )
    return TorchSGD(schedule)


def steps_per_execution(model, batch_size):
    """Training steps per Keras call for `model` at `batch_size` (1 to 32); batch-level callbacks and the
    progress bar then update once per call."""
    from keras_cnn import analysis

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
                  steps_per_call=None):
    """Compile `model` as every keras_cnn trainer does (`train`, its fine-tuning phase, the tuner's trials).

    The recipe's optimizer (its schedule spanning `total_steps`, the peak `learning_rate` or the recipe's),
    cross-entropy on one-hot labels with `label_smoothing`, `accuracy` (and `top5_accuracy` above 5 classes),
    no XLA, and `steps_per_call` training steps per Keras call (default: `steps_per_execution(model,
    batch_size)`). Returns the optimizer.
    """
    loss, metrics = loss_and_metrics(model.output_shape[-1], label_smoothing)
    optimizer_ = optimizer(recipe, total_steps=total_steps, learning_rate=learning_rate)
    per_call = steps_per_execution(model, batch_size) if steps_per_call is None else steps_per_call
    model.compile(optimizer=optimizer_, loss=loss, metrics=metrics, jit_compile=False, steps_per_execution=per_call)
    return optimizer_
