"""CIFAR-style ResNet v1 with basic blocks (seed 003: "ResNet-style skip connections").

3x3 stem without the ImageNet 7x7/maxpool, four stages of 64/128/256/512
channels with strides 1/2/2/2, global average pooling. A basic block is
conv-BN-act-conv-BN plus a shortcut (1x1 conv + BN when the shape changes), then act.
"""
from keras_cnn.models import options
from keras_cnn.models.family import Family
from keras_cnn.models.registry import Spec, register_model
from keras_cnn.models.shapes import Op

OPTIONS = {
    "blocks": options.int_tuple,
}

DEFAULTS = {
    "input_shape": (32, 32, 3),
    "filters": (64, 128, 256, 512),
    "stages": None,
    "width": 1.0,
    "kernel_size": 3,
    "batchnorm": True,
    "activation": "relu",
    "dropout": 0.0,
    "head": "gap",
    "downsample": "stride",
    "augment": "none",
    "flip": True,
    "kernel_initializer": "he_normal",
}


def resnet(**defaults):
    return Spec(family=FAMILY, defaults={**DEFAULTS, **defaults})


@register_model
def resnet18():
    """ResNet-18 for 32x32 images: basic blocks 2-2-2-2, 64-512 channels, GAP."""
    return resnet(blocks=(2, 2, 2, 2))


@register_model
def resnet34():
    """ResNet-34 for 32x32 images: basic blocks 3-4-6-3, 64-512 channels, GAP."""
    return resnet(blocks=(3, 4, 6, 3))


def resolve(config, *, explicit, name):
    """Reconcile filters, stages and blocks per stage; scale channels by `width`."""
    filters = options.stage_filters(config, explicit, name)
    blocks = list(config["blocks"])
    if "blocks" in explicit and len(blocks) != len(filters):
        raise ValueError(
            f"{name}: `blocks` has {len(blocks)} values for {len(filters)} stages; give one value per stage. "
            f"Received: blocks={tuple(blocks)}"
        )
    blocks = (blocks + blocks[-1:] * len(filters))[: len(filters)]
    config["stage_filters"] = options.scaled(filters, config["width"])
    config["stage_blocks"] = tuple(blocks)
    return config


def _stage_stride(index):
    """Every stage after the first halves the map."""
    return 1 if index == 1 else 2


def spatial_ops(config):
    """The main path's spatial operations, in build order."""
    k = config["kernel_size"]
    ops = [Op("stem_conv", k, 1, "same")]
    for i in range(1, len(config["stage_filters"]) + 1):
        if _stage_stride(i) == 2 and config["downsample"] != "stride":
            ops.append(Op(f"stage{i}_pool", 2, 2, "valid"))
        elif _stage_stride(i) == 2:
            ops.append(Op(f"stage{i}_block1_conv1", k, 2, "same"))
    return ops


def _basic_block(x, filters, stride, prefix, config):
    from keras import layers

    from keras_cnn.models import blocks

    shortcut = x
    y = blocks.conv_bn_act(x, filters, prefix, config, stride=stride, suffix="1")
    y = blocks.conv_bn_act(y, filters, prefix, config, act=False, suffix="2")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, padding="same", use_bias=not config["batchnorm"],
                                 kernel_initializer=blocks.kernel_initializer(config), name=f"{prefix}_shortcut_conv")(x)
        if config["batchnorm"]:
            shortcut = blocks.batchnorm(f"{prefix}_shortcut_bn", config)(shortcut)
    y = layers.Add(name=f"{prefix}_add")([shortcut, y])
    return blocks.activation(config["activation"], f"{prefix}_out")(y)


def build(config, *, name, **top):
    """The network of `config`; `top` is `blocks.head`'s (num_classes, classifier_activation, include_top, pooling)."""
    import keras

    from keras_cnn.models import blocks

    inputs, x = blocks.inputs_and_stem(config)
    x = blocks.conv_bn_act(x, config["stage_filters"][0], "stem", config)
    for i, (filters, count) in enumerate(zip(config["stage_filters"], config["stage_blocks"]), start=1):
        stride = _stage_stride(i)
        if stride == 2 and config["downsample"] != "stride":
            x = blocks.pool(x, config["downsample"], f"stage{i}_pool")
            stride = 1
        for j in range(1, count + 1):
            x = _basic_block(x, filters, stride if j == 1 else 1, f"stage{i}_block{j}", config)
    outputs = blocks.head(x, config, **top)
    return keras.Model(inputs, outputs, name=name)


FAMILY = Family("resnet", OPTIONS, resolve, spatial_ops, build)
