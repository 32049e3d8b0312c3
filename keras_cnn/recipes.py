"""Training recipes: optimizers and schedules, losses and metrics, and the precision policy.

`sgd` is seed 003's PyTorch recipe reproduced exactly: SGD with momentum 0.9,
learning rate 0.1 on a per-step cosine schedule (after a short linear warm-up),
and weight decay 5e-4 added to the gradient as L2, as `torch.optim.SGD` does.
Keras's own `weight_decay=` is decoupled (w -= lr * wd * w, AdamW-style), which
is a different and here much weaker regulariser, so it cannot stand in for it.
"""
import functools
import json
import logging
import os
import platform
import time

import keras

logger = logging.getLogger("keras_cnn")

RECIPES = ("sgd", "adam")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}
WARMUP_FRACTION = 0.02  # of all steps, for the sgd recipe
# Every call from Keras into TensorFlow has a fixed cost (Python, callbacks, starting the graph): on a
# 2-core CPU a batch-2 step took 7.0 ms with one step per call and 5.4 with 32. Several steps per call
# made `small` at batch 128 5-11% faster; `deeper`, 12x the work a step, gained nothing measurable.
# Calls aim at this much training work (multiply-accumulates, forward and backward), at most
# MAX_STEPS_PER_EXECUTION steps.
MACS_PER_EXECUTION = 64e9
MAX_STEPS_PER_EXECUTION = 32


@keras.saving.register_keras_serializable(package="keras_cnn")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled L2 weight decay, step for step as `torch.optim.SGD`.

    g = grad + l2 * w;  buf = momentum * buf + g;  w = w - lr * buf
    (Keras's SGD keeps lr inside its velocity, which differs once lr changes.)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, l2=5e-4, name="torch_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.l2 = l2

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        step = gradient + self.l2 * variable if self.l2 else gradient
        if keras.backend.backend() == "tensorflow":
            # TensorFlow's momentum kernel does exactly the two lines below in one pass over the weights
            # instead of five element-wise ops: `small` (0.5M weights in one dense layer) trained 2-3% faster.
            import tensorflow as tf

            tf.raw_ops.ResourceApplyMomentum(var=variable.handle, accum=buffer.value.handle, lr=learning_rate,
                                             grad=step, momentum=tf.cast(self.momentum, variable.dtype))
            return
        self.assign(buffer, self.momentum * buffer + step)
        self.assign_sub(variable, learning_rate * buffer)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "l2": self.l2}


def optimizer(recipe, *, total_steps, learning_rate=None):
    """The recipe's optimizer; `total_steps` sizes the cosine schedule of `sgd`."""
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


def resolve_precision(precision):
    """The dtype policy for `precision`; "auto" measures bf16 against fp32 once per machine."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if _bf16_speedup() >= 1.3 else "float32"


def model_precision(model):
    """The dtype policy a built model computes in, read off its layers: a Functional model loaded from a
    `.keras` file reports float32 itself even when its layers are mixed precision."""
    policies = [layer.dtype_policy.name for layer in model.layers]
    return next((policy for policy in policies if policy.startswith("mixed_")), model.dtype_policy.name)


@functools.cache
def _bf16_speedup():
    """How much faster a bf16 convolution step runs than fp32 here (cached on disk per machine)."""
    import tensorflow as tf

    cache = os.path.join(os.path.expanduser("~"), ".cache", "keras_cnn", "precision.json")
    key = f"{platform.processor() or platform.machine()}|{_cpu_model()}|{os.cpu_count()}|tf{tf.__version__}"
    try:
        with open(cache) as handle:
            known = json.load(handle)
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = round(_time_conv(tf, tf.float32) / _time_conv(tf, tf.bfloat16), 3)
        logger.info("measured bf16 convolution speed-up on this machine: %.2fx", known[key])
        from keras_cnn.io import write_json

        try:
            write_json(cache, known)
        except OSError:
            pass  # an unwritable home only costs a re-measurement next time
    return known[key]


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return ""


def _time_conv(tf, dtype, repeats=5):
    """Median seconds of a forward+backward 3x3 convolution of CIFAR-sized activations."""
    x = tf.random.uniform((64, 32, 32, 64), dtype=tf.float32)
    w = tf.random.uniform((3, 3, 64, 64), dtype=tf.float32)

    @tf.function
    def step(x, w):
        x, w = tf.cast(x, dtype), tf.cast(w, dtype)
        with tf.GradientTape() as tape:
            tape.watch(w)
            y = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
        return tape.gradient(y, w)

    step(x, w)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x, w).numpy()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
