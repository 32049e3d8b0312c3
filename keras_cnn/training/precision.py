"""The precision policy: which dtype policy a model trains in, and the measured bf16 speed-up behind "auto".

`resolve_precision("auto")` picks mixed_float16 on a GPU; on a CPU it times a bf16 convolution step against
fp32 once per machine and backend (CPU model, core count, TensorFlow's and the backend's versions, from
/proc/cpuinfo) on the backend that will train, and caches the ratio in ~/.cache/keras_cnn/precision.json:
bf16 pays only where the CPU has native bf16 instructions and the backend's kernels use them. On the torch
backend "auto" is float32 (not measured).
"""
import functools
import json
import logging
import os
import platform

from keras_cnn.utils.io import write_json
from keras_cnn.utils.timing import median_seconds

logger = logging.getLogger("keras_cnn")

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BF16_MIN_SPEEDUP = 1.3  # "auto" trains in mixed_bfloat16 when a bf16 convolution step is at least this much faster


def resolve_precision(precision):
    """The dtype policy for `precision`; "auto" measures bf16 against fp32 once per machine."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
    if precision != "auto":
        return precision
    import keras

    backend = keras.backend.backend()
    if backend not in SPEEDUP_TIMERS:  # no measurement for it: the safe choice
        return "float32"
    if _has_gpu(backend):
        return "mixed_float16"
    return "mixed_bfloat16" if _bf16_speedup(backend) >= BF16_MIN_SPEEDUP else "float32"


def _has_gpu(backend):
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def model_precision(model):
    """The dtype policy a built model computes in, read off its layers: a Functional model loaded from a
    `.keras` file reports float32 itself even when its layers are mixed precision."""
    policies = [layer.dtype_policy.name for layer in model.layers]
    return next((policy for policy in policies if policy.startswith("mixed_")), model.dtype_policy.name)


@functools.cache
def _bf16_speedup(backend):
    """How much faster a bf16 convolution step runs than fp32 here on `backend` (cached on disk per machine,
    backend and version)."""
    from keras_cnn.utils import backends

    cache = os.path.join(os.path.expanduser("~"), ".cache", "keras_cnn", "precision.json")
    key = f"{platform.processor() or platform.machine()}|{cpu_model()}|{os.cpu_count()}|tf{_version('tensorflow')}"
    if backend != "tensorflow":  # TensorFlow's keys keep the form they were cached under
        key += f"|{backend}{backends.current()['version']}"
    try:
        with open(cache) as handle:
            known = json.load(handle)
    except (OSError, ValueError):
        known = {}
    if key not in known:
        timer = SPEEDUP_TIMERS[backend]
        known[key] = round(timer("float32") / timer("bfloat16"), 3)
        logger.info("measured bf16 convolution speed-up on %s on this machine: %.2fx", backend, known[key])
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


def _version(package):
    import importlib

    return importlib.import_module(package).__version__


def _time_conv_jax(dtype):
    """Median seconds of a forward+backward 3x3 convolution of CIFAR-sized activations, jit-compiled by JAX."""
    import jax
    import jax.numpy as jnp

    x = jax.random.uniform(jax.random.key(0), (64, 32, 32, 64)).astype(dtype)
    w = jax.random.uniform(jax.random.key(1), (3, 3, 64, 64)).astype(dtype)

    def loss(w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y.astype(jnp.float32))

    step = jax.jit(jax.grad(loss))
    return median_seconds(lambda: step(w).block_until_ready(), runs=5)


def _time_conv(dtype):
    """Median seconds of a forward+backward 3x3 convolution of CIFAR-sized activations, in a tf.function."""
    import tensorflow as tf

    dtype = tf.as_dtype(dtype)
    x = tf.random.uniform((64, 32, 32, 64), dtype=tf.float32)
    w = tf.random.uniform((3, 3, 64, 64), dtype=tf.float32)

    @tf.function
    def step(x, w):
        x, w = tf.cast(x, dtype), tf.cast(w, dtype)
        with tf.GradientTape() as tape:
            tape.watch(w)
            y = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
        return tape.gradient(y, w)

    return median_seconds(lambda: step(x, w).numpy(), runs=5)


# backend -> function(dtype name) -> median seconds of the same convolution step; "auto" picks float32 on others
SPEEDUP_TIMERS = {"tensorflow": _time_conv, "jax": _time_conv_jax}
