"""FusedBatchNormalization: Keras's BatchNormalization numbers, PyTorch's running statistics."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cnn.layers import FusedBatchNormalization


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
