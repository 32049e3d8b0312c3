"""Custom layers (registered for `.keras` files; each has `**kwargs` and a `get_config`)."""
import keras


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
