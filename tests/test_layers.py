"""keras_cnn.models.layers: FusedBatchNormalization (Keras's batch-norm numbers, PyTorch's running statistics),
Conv2D (Keras's convolution, its kernel gradient on narrow maps computed by the method timed fastest) and
GELU (Keras's exact GELU, trained with fused kernels on a CPU)."""
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cnn.models import layers
from keras_cnn.models.layers import FusedBatchNormalization


def pair(**kwargs):
    fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    for layer in (fused, plain):
        layer.build((None, 5, 6, 3))
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)]
    fused.set_weights([w.astype("float32") for w in weights][: len(fused.weights)])
    plain.set_weights([w.astype("float32") for w in weights][: len(plain.weights)])
    return fused, plain


X = np.random.default_rng(1).normal(2.0, 3.0, (4, 5, 6, 3)).astype("float32")


def test_inference_matches_keras():
    fused, plain = pair()
    np.testing.assert_allclose(fused(X, training=False), plain(X, training=False), atol=1e-5)


def test_training_output_and_gradients_match_keras():
    fused, plain = pair()
    upstream = np.random.default_rng(2).normal(size=X.shape).astype("float32")
    results = []
    for layer in (fused, plain):
        x = tf.constant(X)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        results.append((y, *tape.gradient(loss, [x, layer.gamma, layer.beta])))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_running_statistics_follow_pytorch():
    """running = 0.9 * running + 0.1 * batch, with the unbiased variance (torch.nn.BatchNorm2d)."""
    fused, _ = pair()
    mean0, var0 = fused.moving_mean.numpy(), fused.moving_variance.numpy()
    fused(X, training=True)
    n = X.shape[0] * X.shape[1] * X.shape[2]
    np.testing.assert_allclose(fused.moving_mean, 0.9 * mean0 + 0.1 * X.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, 0.9 * var0 + 0.1 * X.var((0, 1, 2)) * n / (n - 1), rtol=1e-5)


def test_frozen_layer_uses_running_statistics():
    fused, plain = pair()
    fused.trainable = plain.trainable = False
    np.testing.assert_allclose(fused(X, training=True), plain(X, training=False), atol=1e-5)


def test_without_scale_and_center():
    fused, plain = pair(scale=False, center=False)
    np.testing.assert_allclose(fused(X, training=False), plain(X, training=False), atol=1e-5)


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(dtype):
    layer = FusedBatchNormalization(dtype=dtype)
    y = layer(tf.cast(X, layer.compute_dtype), training=True)
    assert y.dtype == layer.compute_dtype and layer.moving_mean.dtype == "float32"



@pytest.fixture
def method_calls(monkeypatch):
    """Replaces the timing of the kernel-gradient methods: `method_calls.method` is used, `method_calls.calls`
    records each choice (input shape, kernel shape, dtype), so a test sees which path a convolution took."""
    class MethodCalls:
        method = "strips40"
        calls = []

    def choose(input_shape, kernel_shape, dtype):
        MethodCalls.calls.append((input_shape, kernel_shape, dtype))
        return MethodCalls.method

    monkeypatch.setattr(layers, "fastest_kernel_gradient", choose)
    return MethodCalls


def conv_pair(shape, kernel_size, filters, **kwargs):
    """Our Conv2D and Keras's, built for `shape` with the same weights."""
    ours = layers.Conv2D(filters, kernel_size, padding="same", **kwargs)
    plain = keras.layers.Conv2D(filters, kernel_size, padding="same", **kwargs)
    ours.build(shape)
    plain.build(shape)
    plain.set_weights(ours.get_weights())
    return ours, plain


def output_and_gradients(layer, x, upstream):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]


@pytest.mark.parametrize("method", layers.KERNEL_GRADIENTS)
@pytest.mark.parametrize("width, kernel_size, batch", [(8, 3, 5), (4, 3, 9), (4, 5, 3), (3, 2, 7), (8, 1, 4)])
def test_each_kernel_gradient_method_matches_keras(method_calls, method, width, kernel_size, batch):
    """Odd and even kernels (asymmetric "same" padding), non-square maps and batches that leave the last strip
    part empty: output, input gradient, kernel and bias gradients all equal Keras's Conv2D's."""
    method_calls.method = method
    rng = np.random.default_rng(width * 10 + kernel_size)
    x = rng.normal(size=(batch, 5, width, layers.NARROW_MIN_CHANNELS)).astype("float32")
    upstream = tf.constant(rng.normal(size=(batch, 5, width, 6)).astype("float32"))
    ours, plain = conv_pair(x.shape, kernel_size, 6)
    expected = output_and_gradients(plain, x, upstream)
    for got, want in zip(output_and_gradients(ours, x, upstream), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert method_calls.calls == [(x.shape, (kernel_size, kernel_size, x.shape[-1], 6), "float32")]


@pytest.mark.parametrize("options, shape", [
    ({}, (2, 4, layers.NARROW_MAX_WIDTH + 1, 128)),           # wide enough for oneDNN's own kernel
    ({}, (2, 4, 4, layers.NARROW_MIN_CHANNELS - 1)),           # too few channels to gain
    ({"strides": 2}, (2, 4, 4, 128)),
    ({"padding": "valid"}, (2, 4, 4, 128)),
])
def test_other_convolutions_are_keras_own(method_calls, options, shape):
    layer = layers.Conv2D(3, 3, **{"padding": "same", **options})
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(np.ones(shape, "float32")))
    tape.gradient(loss, layer.kernel)
    assert method_calls.calls == []


def test_fastest_is_the_lowest_median_time():
    """Not the lowest single time or mean: `fast_median` has one slow outlier, `fast_once` one lucky call.
    The clock is simulated: each function advances it by its next cost, the first (untimed) call included."""
    costs = {"fast_once": [0, 1, 1, 9, 9, 9], "fast_median": [0, 3, 3, 3, 3, 30], "slow": [0, 5, 5, 5, 5, 5]}
    now = [0.0]

    def spend(name):
        now[0] += costs[name].pop(0)

    functions = {name: lambda name=name: spend(name) for name in costs}
    assert layers.fastest(functions, rounds=5, clock=lambda: now[0]) == "fast_median"
    assert all(not left for left in costs.values())


def test_kernel_gradient_methods_are_timed_once_per_shape(monkeypatch):
    """TensorFlow's own op is among the candidates, so a machine where the others lose keeps it."""
    timed = []
    monkeypatch.setattr(layers, "fastest", lambda functions: timed.append(sorted(functions)) or "transposed")
    layers.fastest_kernel_gradient.cache_clear()
    try:
        for shape in [(None, 3, 3, 128), (None, 3, 3, 128), (2, 4, 4, 128)]:
            assert layers.fastest_kernel_gradient(shape, (3, 3, 128, 4), "bfloat16") == "transposed"
    finally:
        layers.fastest_kernel_gradient.cache_clear()
    assert timed == [sorted(layers.KERNEL_GRADIENTS)] * 2
    assert {"tensorflow", "transposed", "strips40"} <= set(timed[0])


def test_kernel_gradient_methods_are_timed_and_used_inside_a_traced_step():
    """The timing runs eagerly while the training step is traced, with the batch size unknown."""
    layers.fastest_kernel_gradient.cache_clear()
    conv, plain = conv_pair((None, 3, 3, 128), 3, 4)
    x = np.random.default_rng(5).normal(size=(6, 3, 3, 128)).astype("float32")

    @tf.function(input_signature=[tf.TensorSpec((None, 3, 3, 128))])
    def kernel_gradient(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(conv(x) ** 2)
        return tape.gradient(loss, conv.kernel)

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(plain(x) ** 2)
    np.testing.assert_allclose(kernel_gradient(x), tape.gradient(loss, plain.kernel), rtol=1e-4, atol=1e-3)
    assert layers.fastest_kernel_gradient.cache_info().currsize == 1


@pytest.mark.parametrize("method", layers.KERNEL_GRADIENTS)
def test_each_kernel_gradient_method_in_mixed_bfloat16(method_calls, method):
    method_calls.method = method
    x = np.random.default_rng(3).normal(size=(6, 4, 4, 128)).astype("float32")
    ours, plain = conv_pair(x.shape, 3, 4, dtype="mixed_bfloat16")
    gradients = []
    for layer in (ours, plain):
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, "float32") ** 2)
        gradients.append(tape.gradient(loss, layer.kernel))
        assert y.dtype == tf.bfloat16
    assert method_calls.calls[0][2] == "bfloat16" and gradients[0].dtype == tf.float32
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=0.02, atol=0.02 * float(tf.reduce_max(gradients[1])))


def test_conv2d_saves_and_loads_as_itself(tmp_path):
    inputs = keras.Input((4, 4, 128))
    model = keras.Model(inputs, layers.Conv2D(3, 3, padding="same", name="conv")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("conv")) is layers.Conv2D
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 128)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


@pytest.fixture
def fused_gelu_calls(monkeypatch):
    """Records each use of the fused GELU, so a test sees which path the activation took."""
    calls, original = [], layers._fused_gelu()

    def spy(x):
        calls.append(x.shape)
        return original(x)

    monkeypatch.setattr(layers, "_fused_gelu", lambda: spy)
    return calls


def gelu_and_gradient(x, policy):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layers.GELU(dtype=policy)(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") * tf.cos(tf.cast(x, "float32")))
    return y, tape.gradient(loss, x)


@pytest.mark.parametrize("policy, dtype, tolerance", [("float32", "float32", 1e-6),
                                                      ("mixed_bfloat16", "bfloat16", 1e-2)])
def test_gelu_trains_with_the_fused_kernels_and_matches_keras(fused_gelu_calls, policy, dtype, tolerance):
    x = tf.cast(np.linspace(-6, 6, 4001).reshape(1, 1, -1, 1), dtype)
    x32 = tf.cast(x, "float32")
    with tf.GradientTape() as tape:
        tape.watch(x32)
        expected = keras.activations.gelu(x32, approximate=False)
        loss = tf.reduce_sum(expected * tf.cos(x32))
    expected_gradient = tape.gradient(loss, x32)
    y, gradient = gelu_and_gradient(x, policy)
    assert fused_gelu_calls == [x.shape] and y.dtype == gradient.dtype == dtype
    np.testing.assert_allclose(tf.cast(y, "float32"), expected, atol=tolerance)
    np.testing.assert_allclose(tf.cast(gradient, "float32"), expected_gradient, atol=tolerance * 4)


def test_gelu_infers_with_keras_own_function(fused_gelu_calls):
    x = np.linspace(-3, 3, 61).astype("float32")
    np.testing.assert_array_equal(layers.GELU()(x), keras.activations.gelu(x, approximate=False))
    assert fused_gelu_calls == []


def test_fused_gelu_only_on_cpu(fused_gelu_calls):
    """The fused kernels were measured on CPUs only: a GPU placement (mocked) never takes them."""
    gelu = layers.GELU()
    assert gelu.uses_fused() and gelu.uses_fused("/job:localhost/replica:0/task:0/device:CPU:0")
    assert not gelu.uses_fused("/device:GPU:0")
    with mock.patch("tensorflow.config.list_logical_devices", return_value=["/device:GPU:0"]):
        assert not gelu.uses_fused()
        tf.function(lambda x: gelu(x, training=True))(np.ones((2, 3), "float32"))  # traced: no device named
    assert fused_gelu_calls == []


def test_a_gelu_model_fits_through_the_fused_kernels_and_loads_as_itself(fused_gelu_calls, tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.GELU(name="act")(keras.layers.Dense(3)(inputs)))
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    before = model.get_weights()
    model.fit(x, x[:, :3], epochs=1, verbose=0)
    assert fused_gelu_calls and any(np.any(b != a) for b, a in zip(before, model.get_weights()))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("act")) is layers.GELU
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
