"""Building blocks shared by the model families, with stable layer names.

Naming scheme: `<prefix>_conv`, `<prefix>_bn`, `<prefix>_act`, `<prefix>_pool`
for a block called `<prefix>` (`stem`, `stage2`, `stage3_block1` ...), and
`head_pool`/`head_flatten`, [`head_bn`], `head_dense<i>`, `head_dropout`, `predictions`; without the
top (`include_top=False`) a model ends at its last feature map, or at `avg_pool` / `max_pool`
(`pooling="avg"` / `"max"`), as keras.applications names them.
"""
import keras
from keras import layers

from keras_cnn.models.augment import augmentation
from keras_cnn.models.layers import GELU, Conv2D, FusedBatchNormalization

# PyTorch's BatchNorm2d defaults (momentum 0.1 there = 0.9 here, eps 1e-5): the
# seeds' recipes were tuned with them, and Keras's 0.99 lags badly in short runs.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Max pooling commutes with a non-decreasing activation: pool(act(x)) == act(pool(x)), and so do their
# gradients (only ties among inputs the activation maps to zero differ, where the gradient is zero anyway).
NON_DECREASING = frozenset({"relu", "leaky_relu"})


def inputs_and_stem(config, *, scale=1.0 / 255, dtype=None):
    """Input -> `preprocess` (raw pixels to the network's range) -> optional `augment`, in the dtype policy
    `dtype` (default: the global one)."""
    inputs = keras.Input(shape=config["input_shape"], name="image")
    x = layers.Rescaling(scale, name="preprocess", dtype=dtype)(inputs)
    augment = augmentation(config["augment"], image_shape=config["input_shape"], flip=config["flip"], dtype=dtype)
    if augment is not None:
        x = augment(x)
    return inputs, x


def batchnorm(name, config=None):
    """The fused batch norm; a model's `bn_momentum`, `bn_epsilon` and `bn_scale` (False: no learned scale, as
    airbench) where its config has them."""
    config = config or {}
    return FusedBatchNormalization(momentum=config.get("bn_momentum", BN_MOMENTUM),
                                   epsilon=config.get("bn_epsilon", BN_EPSILON), scale=config.get("bn_scale", True),
                                   name=name)


def kernel_initializer(config):
    """The family's conv initialiser; "dirac" starts each conv as the identity
    (`keras_cnn.models.initializers.Dirac`)."""
    name = config.get("kernel_initializer", "glorot_uniform")
    if name == "dirac":
        from keras_cnn.models.initializers import Dirac

        return Dirac()
    return name


def activation(kind, name):
    """The activation layer: GELU as `keras_cnn.models.layers.GELU` (Keras's function, trained faster on a CPU)."""
    if kind == "gelu":
        return GELU(name=name)
    return layers.Activation(kind, name=name)


def conv(x, filters, name, config, *, stride=1, padding="same"):
    """The family's conv (kernel size, initializer); no bias when BatchNorm follows, which cancels it."""
    return Conv2D(
        filters,
        config["kernel_size"],
        strides=stride,
        padding=padding,
        use_bias=not config["batchnorm"],
        kernel_initializer=kernel_initializer(config),
        name=name,
    )(x)


def conv_bn_act(x, filters, prefix, config, *, stride=1, padding="same", act=True, suffix=""):
    """`<prefix>_conv<suffix>` -> [BN] -> activation (activation before BN with `bn_after_activation`)."""
    use_bn = config["batchnorm"]
    x = conv(x, filters, f"{prefix}_conv{suffix}", config, stride=stride, padding=padding)
    after = config.get("bn_after_activation", False)
    if use_bn and not after:
        x = batchnorm(f"{prefix}_bn{suffix}", config)(x)
    if act:
        x = activation(config["activation"], f"{prefix}_act{suffix}")(x)
    if use_bn and after:
        x = batchnorm(f"{prefix}_bn{suffix}", config)(x)
    return x


def activation_after_pool(config, kind):
    """Whether a stage computes conv -> [BN] -> pool -> act, the same function as conv -> [BN] -> act -> pool
    with the activation on a quarter of the elements (measured faster: docs/performance.md). Not with BN
    after the activation (BN's
    scale can be negative) or average pooling."""
    return (kind == "maxpool" and config["activation"] in NON_DECREASING
            and not config.get("bn_after_activation", False))


def pool(x, kind, name):
    """2x2 max or average pooling with stride 2 (floor: odd rows are dropped, as in PyTorch)."""
    layer = layers.MaxPooling2D if kind == "maxpool" else layers.AveragePooling2D
    return layer(pool_size=2, strides=2, name=name)(x)


def head(x, config, *, num_classes, classifier_activation, include_top=True, pooling=None, head_bn=False):
    """The top: flatten / global pooling -> [BatchNorm] -> dense layers -> dropout -> `predictions` (always float32).

    Without it (`include_top=False`), the features: `x` itself, or pooled with `pooling` ("avg" or "max").
    `head_bn` adds BatchNorm on the pooled features (the transfer family's `batchnorm` option).
    """
    if not include_top:
        return features(x, pooling)
    kind = config["head"]
    if kind == "flatten":
        x = layers.Flatten(name="head_flatten")(x)
    elif kind == "gap":
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    else:
        x = layers.GlobalMaxPooling2D(name="head_pool")(x)
    if head_bn:
        x = batchnorm("head_bn")(x)
    dense_activation = config.get("dense_activation") or config["activation"]
    for i, units in enumerate(config.get("dense", ()), start=1):
        x = layers.Dense(units, activation=dense_activation, name=f"head_dense{i}")(x)
    if config["dropout"] > 0:
        x = layers.Dropout(config["dropout"], name="head_dropout")(x)
    if config.get("head_scale", 1.0) != 1.0:  # airbench's 1/9: keeps a max-pool head's logits small enough to train
        x = layers.Rescaling(config["head_scale"], name="head_scale")(x)
    return layers.Dense(num_classes, activation=classifier_activation, use_bias=config.get("head_bias", True),
                        kernel_initializer=head_initializer(config), dtype="float32", name="predictions")(x)


def head_initializer(config):
    """`predictions`' kernel initialiser: Keras's default, or "unit_uniform" (std 1, as airbench94_muon's head,
    whose logits `head_scale` then divides by the width)."""
    if config.get("head_init", "glorot_uniform") == "unit_uniform":
        return keras.initializers.RandomUniform(-3**0.5, 3**0.5)
    return "glorot_uniform"


def features(x, pooling=None):
    """A headless model's output: the feature map `x`, or its global average or max (`pooling`)."""
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x
