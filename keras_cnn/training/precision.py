"""The precision policy: which dtype policy a model trains in, and the measured bf16 speed-up behind "auto".

`resolve_precision("auto")` picks mixed_float16 on a GPU; on a CPU it times a bf16 convolution step against
fp32 once per machine (CPU model, core count and TensorFlow version, from /proc/cpuinfo) and caches the
ratio in ~/.cache/keras_cnn/precision.json: bf16 pays only where the CPU has native bf16 instructions.
"""
import functools
import json
import logging
import os
import platform
import time

from keras_cnn.utils.io import write_json

logger = logging.getLogger("keras_cnn")

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BF16_MIN_SPEEDUP = 1.3  # "auto" trains in mixed_bfloat16 when a bf16 convolution step is at least this much faster


def resolve_precision(precision):
    """The dtype policy for `precision`; "auto" measures bf16 against fp32 once per machine."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if _bf16_speedup() >= BF16_MIN_SPEEDUP else "float32"


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
    key = f"{platform.processor() or platform.machine()}|{cpu_model()}|{os.cpu_count()}|tf{tf.__version__}"
    try:
        with open(cache) as handle:
            known = json.load(handle)
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = round(_time_conv(tf, tf.float32) / _time_conv(tf, tf.bfloat16), 3)
        logger.info("measured bf16 convolution speed-up on this machine: %.2fx", known[key])
        try:
            write_json(cache, known)
        except OSError:
            pass  # an unwritable home only costs a re-measurement next time
    return known[key]


def cpu_model():
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
