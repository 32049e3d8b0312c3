"""Optimizers the recipes use that Keras does not have, registered so saved models load with them.

`TorchSGD` is `torch.optim.SGD` with momentum and coupled L2 weight decay, step for step: the `sgd`
recipe (`keras_cnn.training.recipes`). With `nesterov=True`, `bias_lr_scale` and a ramped EMA it is also the
`airbench` recipe's optimizer. It is registered as `keras_cnn>TorchSGD`, the name saved `model.keras`
files refer to; `import keras_cnn` imports this module so that they load.

`Muon` is the `airbench_muon` recipe's optimizer: airbench94_muon's orthogonalised momentum for the
convolution kernels and Nesterov SGD for the rest.
"""
import keras

from keras_cnn.utils import compat


def momentum_step(optimizer, variable, buffer, step, learning_rate, momentum, nesterov):
    """torch.optim.SGD's update of `variable` by `step` (the gradient with any L2 added) and its momentum `buffer`:
    buf = momentum * buf + step;  w -= lr * buf   (Nesterov: w -= lr * (step + momentum * buf))."""
    if keras.backend.backend() == "tensorflow":
        # TensorFlow's momentum kernel does exactly the lines below in one pass over the weights
        # instead of five element-wise ops: `small` (0.5M weights in one dense layer) trained 2-3% faster.
        import tensorflow as tf

        tf.raw_ops.ResourceApplyMomentum(var=variable.handle, accum=buffer.value.handle, lr=learning_rate,
                                         grad=step, momentum=tf.cast(momentum, variable.dtype), use_nesterov=nesterov)
        return
    optimizer.assign(buffer, momentum * buffer + step)
    optimizer.assign_sub(variable, learning_rate * (step + momentum * buffer if nesterov else buffer))


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
        index = compat.variable_index(self, variable)
        buffer = self.momentums[index]
        l2 = self.l2
        if self.bias_lr_scale != 1.0 and index in self._offsets:
            learning_rate, l2 = learning_rate * self.bias_lr_scale, l2 / self.bias_lr_scale
        step = gradient + l2 * variable if l2 else gradient
        momentum_step(self, variable, buffer, step, learning_rate, self.momentum, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "l2": self.l2, "nesterov": self.nesterov,
                "bias_lr_scale": self.bias_lr_scale, "ema_ramp_steps": self.ema_ramp_steps,
                "ema_momentum": self._ema_momentum}


# airbench94_muon's Newton-Schulz coefficients (Keller Jordan's Muon): a few steps bring every singular value of
# the normalised update to roughly [0.7, 1.2], which is orthogonal enough and cheaper than an exact SVD.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix, steps=3):
    """`matrix` with its singular values pushed towards 1 and its singular vectors kept (Muon's Newton-Schulz)."""
    a, b, c = NEWTON_SCHULZ
    x = matrix / (keras.ops.norm(matrix) + 1e-7)
    tall = matrix.shape[0] > matrix.shape[1]
    if tall:  # iterate on the small Gram matrix
        x = keras.ops.transpose(x)
    for _ in range(steps):
        gram = keras.ops.matmul(x, keras.ops.transpose(x))
        x = a * x + keras.ops.matmul(b * gram + c * keras.ops.matmul(gram, gram), x)
    return keras.ops.transpose(x) if tall else x


@keras.saving.register_keras_serializable(package="keras_cnn")
class Muon(keras.optimizers.Optimizer):
    """Muon for convolution kernels and Nesterov SGD for every other weight, as airbench94_muon trains.

    A convolution kernel or hidden weight matrix (rank 2 or more, `filters` last; not the head's) is first
    rescaled to Frobenius norm sqrt(filters), so the orthogonal step has a fixed size relative to it, then
    (`momentum`, always Nesterov):
        buf = momentum * buf + g;  w -= lr * orthogonalize((g + momentum * buf) as a (kh*kw*in, filters) matrix)
    Every other weight takes `TorchSGD`'s Nesterov step with `sgd_momentum` and coupled L2, at the learning
    rate times `rate_scales[role]` and with L2 `l2[role]`. The role is the weight's layer: "predictions",
    "stem_offset" (`keras_cnn.models.layers.Offset`, whose rate also falls linearly to zero by `stem_offset_steps`)
    or "other" (batch-norm offsets and scales, biases). Keras's own `keras.optimizers.Muon` sends rank-4 kernels to
    AdamW and does not normalise the weights, so it is not airbench's optimizer.
    """

    ROLES = ("predictions", "stem_offset", "other")

    def __init__(self, learning_rate=0.24, momentum=0.6, newton_schulz_steps=3, sgd_momentum=0.85, rate_scales=None,
                 l2=None, stem_offset_steps=None, name="muon", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        for argument, given in (("rate_scales", rate_scales), ("l2", l2)):
            if set(given or ()) - set(self.ROLES):
                raise ValueError(f"`{argument}` takes the roles {', '.join(self.ROLES)}. "
                                 f"Received: {argument}={given!r}")
        self.momentum = momentum
        self.newton_schulz_steps = newton_schulz_steps
        self.sgd_momentum = sgd_momentum
        self.rate_scales = {role: 1.0 for role in self.ROLES} | dict(rate_scales or {})
        self.l2 = {role: 0.0 for role in self.ROLES} | dict(l2 or {})
        self.stem_offset_steps = stem_offset_steps

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]
        self._roles = [self.role(v) for v in variables]

    @staticmethod
    def role(variable):
        """The role of `variable`: "kernel" (Muon's: rank 2 or more, not the head's) or its SGD role."""
        layer = variable.path.split("/")[-2] if "/" in variable.path else ""
        if len(variable.shape) >= 2 and layer != "predictions":
            return "kernel"
        return layer if layer in ("predictions", "stem_offset") else "other"

    def update_step(self, gradient, variable, learning_rate):
        index = compat.variable_index(self, variable)
        learning_rate = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        role = self._roles[index]
        if role == "kernel":
            self._orthogonal_step(variable, self.momentums[index], gradient, learning_rate)
            return
        learning_rate = learning_rate * self.rate_scales[role]
        if role == "stem_offset" and self.stem_offset_steps:
            progress = keras.ops.cast(self.iterations, variable.dtype) / self.stem_offset_steps
            learning_rate = learning_rate * keras.ops.maximum(1.0 - progress, 0.0)
        step = gradient + self.l2[role] * variable if self.l2[role] else gradient
        momentum_step(self, variable, self.momentums[index], step, learning_rate, self.sgd_momentum, True)

    def _orthogonal_step(self, variable, buffer, gradient, learning_rate):
        filters = variable.shape[-1]
        self.assign(variable, variable * (filters**0.5 / keras.ops.norm(keras.ops.reshape(variable, (-1,)))))
        self.assign(buffer, self.momentum * buffer + gradient)
        nesterov = keras.ops.reshape(gradient + self.momentum * buffer, (-1, filters))
        update = orthogonalize(nesterov, self.newton_schulz_steps)
        self.assign_sub(variable, learning_rate * keras.ops.reshape(update, variable.shape))

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "newton_schulz_steps": self.newton_schulz_steps,
                "sgd_momentum": self.sgd_momentum, "rate_scales": self.rate_scales, "l2": self.l2,
                "stem_offset_steps": self.stem_offset_steps}


@keras.saving.register_keras_serializable(package="keras_cnn")
class TriangularSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from `start * peak` to `peak` over `warmup_steps`, then linear to `end * peak` at `total_steps`
    (airbench's schedule; Keras's schedules have a linear warm-up only in front of a cosine)."""

    def __init__(self, peak, warmup_steps, total_steps, start=0.2, end=0.07):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.start, self.end = start, end

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rising = self.start + (1.0 - self.start) * step / self.warmup_steps
        falling_fraction = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        falling = 1.0 + (self.end - 1.0) * keras.ops.minimum(falling_fraction, 1.0)
        return self.peak * keras.ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "start": self.start, "end": self.end}
