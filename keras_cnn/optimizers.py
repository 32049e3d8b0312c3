"""Optimizers the recipes use that Keras does not have, registered so saved models load with them.

`TorchSGD` is `torch.optim.SGD` with momentum and coupled L2 weight decay, step for step: the `sgd`
recipe (`keras_cnn.recipes`). With `nesterov=True`, `bias_lr_scale` and a ramped EMA it is also the
`airbench` recipe's optimizer. It is registered as `keras_cnn>TorchSGD`, the name saved `model.keras`
files refer to; `keras_cnn.io.load_model` imports this module so that they load.
"""
import keras


@keras.saving.register_keras_serializable(package="keras_cnn")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled L2 weight decay, step for step as `torch.optim.SGD`.

    g = grad + l2 * w;  buf = momentum * buf + g;  w = w - lr * buf   (Nesterov: w = w - lr * (g + momentum * buf))
    (Keras's SGD keeps lr inside its velocity, which differs once lr changes.)

    `bias_lr_scale` multiplies the learning rate of batch-norm offsets (`beta`) and divides their L2 by the
    same factor, so their decay per step is unchanged (airbench's `bias_scaler`).
    `ema_ramp_steps` makes the Keras EMA's momentum grow as `ema_momentum * (step / ema_ramp_steps) ** 0.6`:
    airbench's lookahead decay `0.95**5 * t**3` per 5 steps, spread over single steps. Together with
    `use_ema=True` and `ema_overwrite_frequency=5` that is airbench's lookahead: near-raw weights early, an
    average of the last steps at the end (Keras keeps the average in the optimizer's variables, so
    `--resume` keeps it too).
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, l2=5e-4, nesterov=False, bias_lr_scale=1.0,
                 ema_ramp_steps=None, name="torch_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.l2 = l2
        self.nesterov = nesterov
        self.bias_lr_scale = bias_lr_scale
        self.ema_ramp_steps = ema_ramp_steps

    @property
    def ema_momentum(self):
        """The EMA momentum of this step: constant, or ramped over `ema_ramp_steps` (see the class docstring)."""
        if not getattr(self, "ema_ramp_steps", None):
            return self._ema_momentum
        progress = keras.ops.minimum(keras.ops.cast(self.iterations, "float32") / self.ema_ramp_steps, 1.0)
        return self._ema_momentum * keras.ops.power(progress, 0.6)

    @ema_momentum.setter
    def ema_momentum(self, value):
        self._ema_momentum = value

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]
        self._offsets = {index for index, v in enumerate(variables) if v.path.endswith("beta")}  # batch-norm offsets

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        buffer = self.momentums[index]
        l2 = self.l2
        if self.bias_lr_scale != 1.0 and index in self._offsets:
            learning_rate, l2 = learning_rate * self.bias_lr_scale, l2 / self.bias_lr_scale
        step = gradient + l2 * variable if l2 else gradient
        if keras.backend.backend() == "tensorflow":
            # TensorFlow's momentum kernel does exactly the lines below in one pass over the weights
            # instead of five element-wise ops: `small` (0.5M weights in one dense layer) trained 2-3% faster.
            import tensorflow as tf

            tf.raw_ops.ResourceApplyMomentum(var=variable.handle, accum=buffer.value.handle, lr=learning_rate,
                                             grad=step, momentum=tf.cast(self.momentum, variable.dtype),
                                             use_nesterov=self.nesterov)
            return
        self.assign(buffer, self.momentum * buffer + step)
        self.assign_sub(variable, learning_rate * (step + self.momentum * buffer if self.nesterov else buffer))

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "l2": self.l2, "nesterov": self.nesterov,
                "bias_lr_scale": self.bias_lr_scale, "ema_ramp_steps": self.ema_ramp_steps,
                "ema_momentum": self._ema_momentum}


@keras.saving.register_keras_serializable(package="keras_cnn")
class TriangularSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from `start * peak` to `peak` over `warmup_steps`, then linear to `end * peak` at `total_steps`
    (airbench's schedule; Keras's schedules have a linear warm-up only in front of a cosine)."""

    def __init__(self, peak, warmup_steps, total_steps, start=0.2, end=0.07):
        self.peak, self.warmup_steps, self.total_steps, self.start, self.end = peak, warmup_steps, total_steps, start, end

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rising = self.start + (1.0 - self.start) * step / self.warmup_steps
        falling_fraction = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        falling = 1.0 + (self.end - 1.0) * keras.ops.minimum(falling_fraction, 1.0)
        return self.peak * keras.ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "start": self.start, "end": self.end}
