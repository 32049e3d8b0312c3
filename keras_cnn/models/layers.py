"""Custom layers (registered for `.keras` files; each has `**kwargs` and a `get_config`)."""
import functools
import math
import time

import keras

from keras_cnn.utils.timing import interleaved_median_seconds


@keras.saving.register_keras_serializable(package="keras_cnn")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization through TensorFlow's fused kernel (FusedBatchNormV3).

    Keras 3 builds batch norm from separate moment, subtract and scale ops on
    every backend; TensorFlow's fused kernel does forward and backward in one
    pass each, which is what makes CNN training on a CPU competitive. Its running
    statistics follow PyTorch's BatchNorm2d exactly: running = momentum * running
    + (1 - momentum) * batch statistic, with the unbiased batch variance (Keras's
    layer uses the biased one). The configuration is Keras's own, so the layer
    loads, clones and converts (TFLite folds it into the convolution) like the
    original; outside the channels-last 4-D TensorFlow case it defers to Keras.
    """

    def call(self, inputs, training=None, mask=None):
        if keras.backend.backend() != "tensorflow" or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        training = bool(training) and self.trainable
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,), dtype=self.variable_dtype)
        offset = self.beta if self.center else tf.zeros((channels,), dtype=self.variable_dtype)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.convert_to_tensor(scale),
            tf.convert_to_tensor(offset),
            mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance),
            epsilon=self.epsilon,
            is_training=training,
            exponential_avg_factor=1.0 - self.momentum,
        )
        if training:
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
        return outputs


# TensorFlow 2.21's oneDNN (3.7) computes a convolution's weight gradient slowly when the feature map is
# only a few pixels wide. Two other formulations of the same gradient run on kernels it does well: the batch's
# images laid side by side in strips, zero columns between them standing in for the padding (wide rows suit
# its weight-gradient kernel), or one forward convolution with the channels as the batch and `dy` as a kernel
# the size of the map (its forward kernel). Which is fastest differs between machines and dtypes
# (docs/performance.md), so each process times them and TensorFlow's own once per shape at first use, as
# `torch.backends.cudnn.benchmark` does for cuDNN's algorithms. The others gained at 3x3 to 8x8 maps with
# 128+ input channels and lost at 8x8 with 64, hence the thresholds.
NARROW_MAX_WIDTH = 8
NARROW_MIN_CHANNELS = 128
STRIP_WIDTHS = (40, 64, 128)  # pixels per strip, images and gaps included
TIMING_BATCH = 128  # the batch the methods are timed at when the traced batch size is unknown
TIMING_ROUNDS = 5


@keras.saving.register_keras_serializable(package="keras_cnn")
class Conv2D(keras.layers.Conv2D):
    """Keras's Conv2D whose kernel gradient on narrow feature maps is computed the way timed fastest.

    Same configuration, weights, forward pass and input gradient as `keras.layers.Conv2D`; only the
    kernel gradient's computation may differ, and only for stride-1, undilated, ungrouped "same"
    convolutions on channels-last maps at most `NARROW_MAX_WIDTH` wide with `NARROW_MIN_CHANNELS` or more
    input channels under TensorFlow (see the comment above `NARROW_MAX_WIDTH`): there it is the one of
    `KERNEL_GRADIENTS` that `fastest_kernel_gradient` finds best.
    """

    def convolution_op(self, inputs, kernel):
        if not self.times_kernel_gradient(inputs.shape, getattr(inputs, "device", "")):
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf

        return _conv_with_fastest_kernel_gradient(inputs, tf.convert_to_tensor(kernel))

    def times_kernel_gradient(self, input_shape, device=""):
        """Whether the kernel gradient for inputs of `input_shape` (N, H, W, C) is computed by the method timed
        fastest: only on a CPU, where the methods were measured (`on_cpu`)."""
        _, height, width, channels = input_shape
        return (keras.backend.backend() == "tensorflow" and on_cpu(device) and self.data_format == "channels_last"
                and self.padding == "same" and self.strides == (1, 1) and self.dilation_rate == (1, 1)
                and self.groups == 1 and None not in (height, width, channels) and width <= NARROW_MAX_WIDTH
                and channels >= NARROW_MIN_CHANNELS)


def _conv_with_fastest_kernel_gradient(x, kernel):
    """conv2d(x, kernel, "SAME") whose kernel gradient is computed by `fastest_kernel_gradient`'s method."""
    import tensorflow as tf

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                                                strides=[1, 1, 1, 1], padding="SAME")
            method = fastest_kernel_gradient(tuple(x.shape), tuple(kernel.shape), x.dtype.name)
            return dx, KERNEL_GRADIENTS[method](x, dy, kernel.shape)

        return tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), grad

    return conv(x, kernel)


def tensorflow_kernel_gradient(x, dy, kernel_shape):
    """The kernel gradient of a "same" stride-1 convolution, by TensorFlow's own op."""
    import tensorflow as tf

    return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=list(kernel_shape), out_backprop=dy,
                                           strides=[1, 1, 1, 1], padding="SAME")


def strip_kernel_gradient(x, dy, kernel_shape, strip_width):
    """The kernel gradient of a "same" stride-1 convolution, over strips of the images side by side, each at
    most `strip_width` pixels wide (at least one image)."""
    import tensorflow as tf

    gap = kernel_shape[1] // 2  # zero columns between images: the padding each side needs
    per_strip = max(1, strip_width // (x.shape[2] + gap))

    def strips(t):
        """(N, H, W, C) -> (ceil(N / per_strip), H, per_strip * (W + gap), C), zero-padded."""
        _, height, width, channels = t.shape
        t = tf.pad(t, [[0, -tf.shape(t)[0] % per_strip], [0, 0], [0, gap], [0, 0]])
        t = tf.reshape(t, (-1, per_strip, height, width + gap, channels))
        return tf.reshape(tf.transpose(t, (0, 2, 1, 3, 4)), (-1, height, per_strip * (width + gap), channels))

    return tensorflow_kernel_gradient(strips(x), strips(dy), kernel_shape)


def transposed_kernel_gradient(x, dy, kernel_shape):
    """The kernel gradient of a "same" stride-1 convolution as one forward convolution: the input channels
    are the batch, the images the channels, and `dy` is the kernel, as large as the map."""
    import tensorflow as tf

    kernel_height, kernel_width = kernel_shape[:2]
    padding = [[0, 0], [(kernel_height - 1) // 2, kernel_height // 2], [(kernel_width - 1) // 2, kernel_width // 2],
               [0, 0]]  # "SAME": the extra row or column of an even kernel goes after
    gradient = tf.nn.conv2d(tf.transpose(x, (3, 1, 2, 0)), tf.transpose(dy, (1, 2, 0, 3)), 1, padding)
    return tf.transpose(gradient, (1, 2, 0, 3))  # (C_in, kh, kw, C_out) -> (kh, kw, C_in, C_out)


# The kernel-gradient methods `fastest_kernel_gradient` chooses from: name -> function(x, dy, kernel_shape).
KERNEL_GRADIENTS = {"tensorflow": tensorflow_kernel_gradient, "transposed": transposed_kernel_gradient,
                    **{f"strips{width}": functools.partial(strip_kernel_gradient, strip_width=width)
                       for width in STRIP_WIDTHS}}


@functools.cache
def fastest_kernel_gradient(input_shape, kernel_shape, dtype):
    """The name of the fastest of `KERNEL_GRADIENTS` for these shapes and dtype on this machine: each is timed
    on random tensors, eagerly (lifted out of any function being traced), once per process."""
    import tensorflow as tf

    with tf.init_scope():
        shape = (input_shape[0] or TIMING_BATCH, *input_shape[1:])
        x = tf.cast(tf.random.normal(shape), dtype)
        dy = tf.cast(tf.random.normal((*shape[:3], kernel_shape[3])), dtype)
        functions = {name: tf.function(functools.partial(method, kernel_shape=kernel_shape))
                     for name, method in KERNEL_GRADIENTS.items()}
        return fastest({name: lambda f=f: f(x, dy).numpy() for name, f in functions.items()})


def fastest(functions, rounds=TIMING_ROUNDS, clock=time.perf_counter):
    """The key of the callable in `functions` (key -> no-argument callable) with the lowest median time over
    `rounds` calls, called in turn after one untimed call each (tracing, caches)."""
    medians = interleaved_median_seconds(functions, rounds, warmup=1, clock=clock)
    return min(medians, key=medians.get)


# TensorFlow computes the exact GELU and its gradient as chains of element-wise ops, each one more pass over
# the feature map. The same function and gradient, each compiled by XLA into one fused loop, trained airbench's
# activations about 5x faster, near ReLU's time (measured in docs/performance.md).


@keras.saving.register_keras_serializable(package="keras_cnn")
class GELU(keras.layers.Layer):
    """The exact GELU, x * Phi(x), as `keras.activations.gelu(x, approximate=False)`.

    In training on a CPU under TensorFlow (`uses_fused`), its forward and backward passes are each one
    XLA-compiled loop (see the comment above this class); elsewhere, and in inference (so exported graphs hold
    Keras's own ops), it is Keras's function.
    """

    def call(self, inputs, training=None):
        if training and self.uses_fused(getattr(inputs, "device", "")):
            return _fused_gelu()(inputs)
        return keras.activations.gelu(inputs, approximate=False)

    def uses_fused(self, device=""):
        """Whether training computes the activation with the fused kernels: TensorFlow on a CPU (`on_cpu`),
        where they were measured."""
        return keras.backend.backend() == "tensorflow" and on_cpu(device)

    def compute_output_shape(self, input_shape):
        return input_shape


@functools.cache
def _fused_gelu():
    """The exact GELU with its forward and backward passes each compiled by XLA (computed in float32)."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def forward(x):
        x32 = tf.cast(x, tf.float32)
        return tf.cast(x32 * (0.5 + 0.5 * tf.math.erf(x32 * math.sqrt(0.5))), x.dtype)

    @tf.function(jit_compile=True)
    def backward(x, dy):
        x32 = tf.cast(x, tf.float32)
        cdf = 0.5 + 0.5 * tf.math.erf(x32 * math.sqrt(0.5))
        density = tf.exp(-0.5 * tf.square(x32)) / math.sqrt(2 * math.pi)
        return tf.cast(tf.cast(dy, tf.float32) * (cdf + x32 * density), x.dtype)

    @tf.custom_gradient
    def gelu(x):
        return forward(x), lambda dy: backward(x, dy)

    return gelu


def on_cpu(device=""):
    """Whether TensorFlow places this layer's ops on a CPU: the current device scope names a CPU, or none is
    named and the machine has no GPU (TensorFlow would otherwise pick the GPU). `device`: the tensor's device
    string ("" when unplaced, as inside a traced function without a device scope)."""
    import tensorflow as tf

    if device:
        return tf.DeviceSpec.from_string(device).device_type in (None, "CPU")
    return not tf.config.list_logical_devices("GPU")


@keras.saving.register_keras_serializable(package="keras_cnn")
class RGBToGray(keras.layers.Layer):
    """RGB images to one gray channel with the luma weights the data loader uses (`tf.image.rgb_to_grayscale`).

    The mobile export puts it in front of a grayscale model, because cameras and the on-device clients
    (MediaPipe Tasks) hand a classifier RGB frames.
    """

    def call(self, inputs):
        return keras.ops.image.rgb_to_grayscale(inputs, data_format="channels_last")

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


@keras.saving.register_keras_serializable(package="keras_cnn")
class SigmoidToTwoClasses(keras.layers.Layer):
    """One sigmoid unit P(class 1) as the two probabilities [1 - p, p].

    The mobile export puts it after a single-unit model, because an on-device classifier (MediaPipe Tasks)
    reads one score per label, and the label file names both classes.
    """

    def call(self, inputs):
        return keras.ops.concatenate([1.0 - inputs, inputs], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


@keras.saving.register_keras_serializable(package="keras_cnn")
class TemperatureScaling(keras.layers.Layer):
    """Divides logits by a fixed temperature fitted after training (`keras_cnn.evaluation.calibration`).

    A temperature above 1 softens over-confident probabilities, below 1 sharpens them; the predicted class
    never changes. The temperature is a constant of the graph, not a weight: training leaves it alone, and
    SavedModel and TFLite export it as one multiplication.
    """

    def __init__(self, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive. Received: temperature={temperature!r}")
        self.temperature = float(temperature)

    def call(self, inputs):
        return inputs * keras.ops.cast(1.0 / self.temperature, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="keras_cnn")
class Offset(keras.layers.Layer):
    """Adds a learned per-channel offset (zero at the start), kept in the variable dtype.

    airbench94_muon learns the bias of its frozen whitening stem for the first epochs; the stem's kernel and
    centring bias stay frozen (`keras_cnn.models.fast`), and this offset after them is what learns. Keras has
    no layer that is only a bias.
    """

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="offset")

    def call(self, inputs):
        return inputs + keras.ops.cast(self.offset, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
