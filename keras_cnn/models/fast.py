"""Fast CIFAR-10 nets in the style of airbench (Keller Jordan's CIFAR-10 speed-run network).

A 2x2 stem conv, then stages of two 3x3 convs where the first is followed by a
2x2 max pool *before* its batch norm and activation (normalising the pooled map
costs a quarter of the work), and a global average pool head. Three stages of
64/256/256 channels cost 0.24 GFLOPs per 32x32 image forward, a fifth of
ResNet-18; its time to accuracy on CIFAR-10 is logged in docs/performance.md.
Measured differences from airbench: ReLU instead of GELU by default (the faster step) and
average instead of max pooling in the head (without airbench's 1/9 logit scale, the max-pool
head diverged at the learning rates used here). Flip test-time augmentation is
`evaluate(..., tta="flip")`.

airbench94's own network options are here too, and `--recipe airbench` turns them on
(`keras_cnn.training.recipes.MODEL_OPTIONS`): `stem_init="whitening"` (a frozen 2x2 stem computed from the run's
training images, `keras_cnn.models.initializers.whitening_filters`, 8 filters per input channel), identity-initialised
convolutions (`kernel_initializer="dirac"`), batch norm without a learned scale and with momentum 0.6
(`bn_scale`, `bn_momentum`, `bn_epsilon`), and a global max-pool head with logits scaled by 1/9 (`head="gmp"`,
`head_scale`; airbench's `MaxPool2d(3)` of its 3x3 final map), and airbench's GELU (`keras_cnn.models.layers.GELU`,
trained with fused kernels on a CPU). `--recipe airbench_muon` adds airbench94_muon's: a learned offset after
the frozen stem (`stem_offset`) and a bias-free head (`head_bias`) with a unit-std kernel (`head_init`).
"""
from keras_cnn.models import options
from keras_cnn.models.family import Family
from keras_cnn.models.registry import Spec, register_model
from keras_cnn.models.shapes import Op

STEM_INITS = ("he_normal", "whitening")

OPTIONS = {
    "stem": options.positive_int,
    "stem_init": options.choice(STEM_INITS),
    "stem_offset": options.boolean,
}

DEFAULTS = {
    "input_shape": (32, 32, 3),
    "stem": 24,
    "filters": (64, 256, 256),
    "stages": None,
    "width": 1.0,
    "kernel_size": 3,
    "batchnorm": True,
    "activation": "relu",
    "dropout": 0.0,
    "head": "gap",
    "augment": "none",
    "flip": True,
    "kernel_initializer": "he_normal",
    "stem_init": "he_normal",
    "bn_scale": True,
    "bn_momentum": 0.9,
    "bn_epsilon": 1e-5,
    "head_scale": 1.0,
    "head_bias": True,
    "head_init": "glorot_uniform",
    "stem_offset": False,
}


@register_model
def airbench():
    """airbench-style fast CIFAR net: 2x2 stem (24), stages of two convs 64/256/256, pool before BN, GAP."""
    return Spec(family=FAMILY, defaults=dict(DEFAULTS))


def resolve(config, *, explicit, name):
    """Reconcile filters and stages; scale channels by `width`."""
    filters = options.stage_filters(config, explicit, name)
    config["stage_filters"] = options.scaled(filters, config["width"])
    config["stem_filters"] = options.scaled((config["stem"],), config["width"])[0]
    options.require(name, explicit, config, "stem", config["stem_init"] != "whitening",
                    "with stem_init='whitening' (its width is 8 filters per input channel)")
    options.require(name, explicit, config, "stem_offset", config["stem_init"] == "whitening",
                    "without stem_init='whitening' (a trainable stem learns its own bias)")
    for option in ("bn_scale", "bn_momentum", "bn_epsilon"):
        options.require(name, explicit, config, option, config["batchnorm"], "without batch norm (`batchnorm`)")
    return config


def spatial_ops(config):
    """The main path's spatial operations, in build order."""
    ops = [Op("stem_conv", 2, 1, "valid")]
    for i in range(1, len(config["stage_filters"]) + 1):
        ops += [Op(f"stage{i}_conv1", config["kernel_size"], 1, "same"), Op(f"stage{i}_pool", 2, 2, "valid")]
    return ops


def _stage(x, filters, prefix, config):
    """conv -> max pool -> [BN] -> act -> conv -> [BN] -> act."""
    from keras_cnn.models import blocks

    x = blocks.conv(x, filters, f"{prefix}_conv1", config)
    x = blocks.pool(x, "maxpool", f"{prefix}_pool")
    if config["batchnorm"]:
        x = blocks.batchnorm(f"{prefix}_bn1", config)(x)
    x = blocks.activation(config["activation"], f"{prefix}_act1")(x)
    return blocks.conv_bn_act(x, filters, prefix, config, suffix="2")


def build(config, *, name, **top):
    """The network of `config`; `top` is `blocks.head`'s (num_classes, classifier_activation, include_top, pooling)."""
    import keras
    from keras import layers

    from keras_cnn.models import blocks
    from keras_cnn.models.layers import Offset

    whitening = config["stem_init"] == "whitening"  # frozen; `initialize_from_data` computes it
    # The whitening stem amplifies its weakest components many times over; bfloat16 pixels (8 bits of mantissa,
    # about one pixel level) would add rounding noise to them (measured in docs/training.md), so the pixels
    # reach it in float32.
    exact = "float32" if whitening else None
    inputs, x = blocks.inputs_and_stem(config, dtype=exact)
    stem_filters = 8 * config["input_shape"][-1] if whitening else config["stem_filters"]
    x = layers.Conv2D(stem_filters, 2, padding="valid", kernel_initializer=config["stem_init"] if not whitening
                      else "zeros", trainable=not whitening, dtype=exact, name="stem_conv")(x)
    if config["stem_offset"]:
        x = Offset(dtype=exact, name="stem_offset")(x)
    x = blocks.activation(config["activation"], "stem_act")(x)
    for i, filters in enumerate(config["stage_filters"], start=1):
        x = _stage(x, filters, f"stage{i}", config)
    outputs = blocks.head(x, config, **top)
    return keras.Model(inputs, outputs, name=name)


def initialize_from_data(model, config, data):
    """With `stem_init="whitening"`, set the frozen stem to whiten 2x2 patches of the first training images of
    `data` (a seeded random sample), as the model sees them (pixels / 255). `keras_cnn.train` calls it."""
    if config["stem_init"] != "whitening":
        return
    from keras_cnn.models.initializers import WHITENING_IMAGES, whitening_filters

    images, _ = data.arrays("train", image_shape=tuple(model.input_shape[1:]), limit=WHITENING_IMAGES)
    model.get_layer("stem_conv").set_weights(list(whitening_filters(images / 255.0)))


FAMILY = Family("fast", OPTIONS, resolve, spatial_ops, build, initialize_from_data=initialize_from_data)
