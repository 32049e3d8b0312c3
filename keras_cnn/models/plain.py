"""Plain conv-pool stacks: the seeds' LeNet, MNIST CNN, SimpleCNN, SmallCNN, DeeperCNN and compact net.

One family, six registered configurations. Every stage is conv -> [BN] ->
activation -> downsample; an optional stem conv block comes first (DeeperCNN)
and the last stage may skip its downsampling (the compact net). Where the two
commute (ReLU and max pooling), the activation is placed after the pool:
the same function, computed on a quarter of the elements.
"""
from keras_cnn.models import options
from keras_cnn.models.family import Family
from keras_cnn.models.registry import Spec, register_model
from keras_cnn.models.shapes import Op

OPTIONS = {
    "padding": options.choice(options.PADDINGS),
    "stem": lambda name, value: options.positive_int(name, value, minimum=0),
    "dense": lambda name, value: options.int_tuple(name, value, allow_empty=True),
    "dense_activation": options.optional_activation,
    "bn_after_activation": options.boolean,
    "pool_last": options.boolean,
}

DEFAULTS = {
    "stages": None,
    "width": 1.0,
    "kernel_size": 3,
    "padding": "same",
    "stem": 0,
    "batchnorm": False,
    "bn_after_activation": False,
    "activation": "relu",
    "dense": (),
    "dense_activation": None,
    "dropout": 0.0,
    "head": "flatten",
    "downsample": "maxpool",
    "pool_last": True,
    "augment": "none",
    "flip": True,
}


def plain(**defaults):
    return Spec(family=FAMILY, defaults={**DEFAULTS, **defaults})


@register_model
def lenet():
    """LeNet from seed 002: conv 6@5x5, pool, conv 16@5x5, pool, dense 120-84 (GELU)."""
    return plain(input_shape=(32, 32, 3), filters=(6, 16), kernel_size=5, padding="valid",
                 dense=(120, 84), dense_activation="gelu")


@register_model
def mnist_cnn():
    """MNIST CNN from seed 001: conv 32@3x3, pool, conv 64@3x3, pool, flatten (1600), dense 128."""
    return plain(input_shape=(28, 28, 1), filters=(32, 64), padding="valid", dense=(128,))


@register_model
def simple():
    """SimpleCNN from seed 000: conv 16@3x3 same, pool, conv 32@3x3 same, pool, dense 128."""
    return plain(input_shape=(64, 64, 3), filters=(16, 32), dense=(128,))


@register_model
def small():
    """SmallCNN from seed 003: [conv 32, BN, ReLU, pool], [conv 64, BN, ReLU, pool], dense 128, dropout 0.2."""
    return plain(input_shape=(32, 32, 3), filters=(32, 64), batchnorm=True, dense=(128,), dropout=0.2)


@register_model
def deeper():
    """DeeperCNN from seed 003: conv_block(64) stem, conv_block+pool stages 64/128/256, global average pool."""
    return plain(input_shape=(32, 32, 3), filters=(64, 128, 256), stem=64, batchnorm=True, head="gap")


@register_model
def compact():
    """The Keras alternative from seed 003: conv 32/64 (ReLU, BN, pool), conv 128, GAP, dropout 0.2."""
    return plain(input_shape=(32, 32, 3), filters=(32, 64, 128), batchnorm=True, bn_after_activation=True,
                 pool_last=False, head="gap", dropout=0.2)


def resolve(config, *, explicit, name):
    """Add the derived channel counts: filters per stage reconciled with `stages`, times `width`."""
    options.require(name, explicit, config, "dense_activation", config["dense"], "without dense layers (`dense`)")
    options.require(name, explicit, config, "bn_after_activation", config["batchnorm"], "without `batchnorm`")
    filters = options.stage_filters(config, explicit, name)
    config["stage_filters"] = options.scaled(filters, config["width"])
    config["stem_filters"] = options.scaled((config["stem"],), config["width"])[0] if config["stem"] else 0
    return config


def _downsamples(config, index):
    return config["pool_last"] or index < len(config["stage_filters"])


def spatial_ops(config):
    """The main path's spatial operations, in build order."""
    k, padding = config["kernel_size"], config["padding"]
    ops = [Op("stem_conv", k, 1, padding)] if config["stem_filters"] else []
    for i in range(1, len(config["stage_filters"]) + 1):
        down = _downsamples(config, i)
        if down and config["downsample"] == "stride":
            ops.append(Op(f"stage{i}_conv", k, 2, padding))
        else:
            ops.append(Op(f"stage{i}_conv", k, 1, padding))
            if down:
                ops.append(Op(f"stage{i}_pool", 2, 2, "valid"))
    return ops


def build(config, *, name, **top):
    """The network of `config`; `top` is `blocks.head`'s (num_classes, classifier_activation, include_top, pooling)."""
    import keras

    from keras_cnn.models import blocks

    inputs, x = blocks.inputs_and_stem(config)
    if config["stem_filters"]:
        x = blocks.conv_bn_act(x, config["stem_filters"], "stem", config, padding=config["padding"])
    for i, filters in enumerate(config["stage_filters"], start=1):
        down = _downsamples(config, i)
        stride = 2 if down and config["downsample"] == "stride" else 1
        pool = down and stride == 1
        act_after_pool = pool and blocks.activation_after_pool(config, config["downsample"])
        x = blocks.conv_bn_act(x, filters, f"stage{i}", config, stride=stride, padding=config["padding"],
                               act=not act_after_pool)
        if pool:
            x = blocks.pool(x, config["downsample"], f"stage{i}_pool")
        if act_after_pool:
            x = blocks.activation(config["activation"], f"stage{i}_act")(x)
    outputs = blocks.head(x, config, **top)
    return keras.Model(inputs, outputs, name=name)


FAMILY = Family("plain", OPTIONS, resolve, spatial_ops, build)
