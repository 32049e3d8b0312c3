"""Transfer learning: a pretrained backbone, frozen, under a new zoo head (seed 003, section 7).

Backbones are `keras.applications` networks (ResNet50, ResNet50V2, MobileNetV2, MobileNetV3Small,
EfficientNetB0; ImageNet weights or a file) or the zoo's own ResNet-18/34 up to their last stage
(weights from a trained zoo model). Every transfer model has the same layout and stable names:

    image (raw pixels [0, 255], H x W x 3)
    -> preprocess           identity: pixels stay in [0, 255] (the contract's first layer)
    -> augment              optional, on raw pixels (value_range (0, 255)), training only
    -> backbone_preprocess  what the backbone's `preprocess_input` does, if it is not inside the
                            backbone already: ResNet50 "caffe" (RGB->BGR and the ImageNet mean
                            subtracted, as a fixed 1x1 convolution), ResNet50V2 and MobileNetV2
                            [-1, 1] (Rescaling); none for MobileNetV3, EfficientNet and the zoo
                            ResNets, whose own first layers rescale (never scaled twice)
    -> backbone             a nested Functional model, frozen and called with training=False, so
                            its BatchNorm layers always use their moving statistics (the Keras
                            transfer-learning guide), also while fine-tuning
    -> head_pool | head_flatten -> [head_bn] -> [head_dense<i>] -> [head_dropout] -> predictions

Augmentation sits on raw pixels, before the backbone's normalisation, so the presets see the
[0, 255] range they fill and jitter in, whatever the backbone: the model contract's "augment
right after preprocess" holds with `preprocess` an identity. The data pipeline resizes images to
the model's input (`preferred_input` picks the size), so there is no Resizing layer inside.

`weights` of a transfer model are the BACKBONE's (the head is always new, include_top=False):
None; "imagenet" (read from the Keras cache, ~/.keras/models/<file>; downloaded only if there is
a network, else a clear error naming the file and `keras-cnn weights download NAME`); a legacy
`.h5` file as Keras distributes ImageNet weights; a `.weights.h5` file of the backbone alone
(`save_backbone_weights`) or, for the zoo ResNets, of a whole trained zoo model; a `.keras` model
or a run folder containing one (a transfer model's backbone, or a zoo model's layers by name).
A `.weights.h5` file of the whole transfer model (same head) also loads, as for every zoo model.
The backbones themselves are `keras_cnn.models.backbones`'; finding, downloading and loading their
weights is `keras_cnn.models.pretrained`'s.

`unfreeze(model, blocks)` makes the top blocks of the backbone trainable for fine-tuning (BatchNorm
stays frozen); `fine_tune` is the family's second training phase, which `keras_cnn.train(...,
fine_tune_epochs=N, unfreeze=B)` runs.
"""
import logging
import os
import re

from keras_cnn.models import options, pretrained
from keras_cnn.models.family import Family
from keras_cnn.models.backbones import BACKBONE_LAYER, BACKBONES, backbone_key, build_backbone, preprocess_layer
from keras_cnn.models.registry import Spec, register_model
from keras_cnn.models.shapes import Op

logger = logging.getLogger("keras_cnn")

OPTIONS = {
    "dense": lambda name, value: options.int_tuple(name, value, allow_empty=True),
}

FINE_TUNE_LR_FACTOR = 0.01  # phase-2 learning rate / phase-1 peak (the Keras guide's 1e-3 -> 1e-5)
HEAD_DEFAULTS = {"head": "gap", "batchnorm": False, "dense": (), "dropout": 0.2, "augment": "none", "flip": True}


def transfer(backbone, **defaults):
    spec = BACKBONES[backbone]
    side = 32 if spec.constructor.startswith("zoo:") else 224
    width = {"width": 1.0} if spec.widths or spec.constructor.startswith("zoo:") else {}
    return Spec(family=FAMILY, defaults={"input_shape": (side, side, 3), "backbone": backbone, **width,
                                           **HEAD_DEFAULTS, **defaults})


@register_model
def resnet50_transfer():
    """ResNet50 backbone (ImageNet or a file), frozen, caffe preprocessing inside, new GAP head."""
    return transfer("resnet50")


@register_model
def resnet50v2_transfer():
    """ResNet50V2 backbone (ImageNet or a file), frozen, [-1, 1] preprocessing inside, new GAP head."""
    return transfer("resnet50v2")


@register_model
def mobilenetv2_transfer():
    """MobileNetV2 backbone (width = alpha), frozen, [-1, 1] preprocessing inside, new GAP head."""
    return transfer("mobilenetv2")


@register_model
def mobilenetv3small_transfer():
    """MobileNetV3Small backbone (width = alpha, its own rescaling), frozen, new GAP head."""
    return transfer("mobilenetv3small")


@register_model
def efficientnetb0_transfer():
    """EfficientNetB0 backbone (its own normalisation), frozen, new GAP head."""
    return transfer("efficientnetb0")


@register_model
def resnet18_transfer():
    """The zoo's resnet18 up to its last stage (`width` as trained), frozen, weights from a trained resnet18."""
    return transfer("resnet18")


@register_model
def resnet34_transfer():
    """The zoo's resnet34 up to its last stage (`width` as trained), frozen, weights from a trained resnet34."""
    return transfer("resnet34")


def resolve(config, *, explicit, name):
    """Add the head's dense activation and, as the other families do, the backbone's channels per stage."""
    config["activation"] = "relu"
    spec = BACKBONES[config["backbone"]]
    config["stage_filters"] = ()
    if spec.constructor.startswith("zoo:"):
        from keras_cnn.models import registry

        config["stage_filters"] = registry.resolve(spec.constructor[4:], {"width": config["width"]})["stage_filters"]
    return config


def spatial_ops(config):
    """The backbone as one op: its total stride, and a kernel that makes its smallest input the real one.

    keras.applications backbones downsample by 32 with "same"-style padding (the real output is
    ceil(n / 32), one more than this op's floor(n / 32) when n is not a multiple of 32) and refuse
    inputs below 32x32; the zoo ResNets downsample by 8 and take any input.
    """
    spec = BACKBONES[config["backbone"]]
    if spec.smallest > 1:
        return [Op(BACKBONE_LAYER, spec.smallest, spec.stride, "valid")]
    return [Op(BACKBONE_LAYER, 1, spec.stride, "same")]


def preferred_input(config, data_shape):
    """The input a transfer model trains at on data of `data_shape` (used by `training.fit_input_shape`).

    keras.applications backbones: 3 channels (gray is repeated by the data pipeline) and small images
    resized up to the backbone's `upsize` (CIFAR's 32 pixels would leave 1x1 final feature maps).
    The zoo ResNets take the data as it is, like the zoo models themselves.
    """
    height, width, channels = data_shape
    spec = BACKBONES[config["backbone"]]
    if not spec.upsize:
        return (max(height, spec.smallest), max(width, spec.smallest), channels)
    return (max(height, spec.upsize), max(width, spec.upsize), 3)


# ---------------------------------------------------------------------------------------------------------------
# Building


def build(config, *, name, weights=None, **top):
    """The transfer model of `config` with `weights` for its backbone; `top` is `blocks.head`'s (num_classes,
    classifier_activation, include_top, pooling)."""
    import keras
    from keras import layers

    from keras_cnn.models import blocks
    from keras_cnn.models.augment import augmentation

    spec = BACKBONES[config["backbone"]]
    shape = tuple(config["input_shape"])
    if not spec.constructor.startswith("zoo:") and shape[-1] != 3:
        raise ValueError(f"{name}: the {spec.constructor} backbone takes RGB images (3 channels); gray images are "
                         f"repeated to RGB by the data pipeline. Received: input_shape={shape}")
    kind, path = _check_weights(name, spec, config, weights)
    backbone = build_backbone(spec, config, imagenet_file=path if kind == "imagenet" else None)

    inputs = keras.Input(shape=shape, name="image")
    x = layers.Identity(name="preprocess")(inputs)
    augment = augmentation(config["augment"], image_shape=shape, value_range=(0.0, 255.0), flip=config["flip"])
    if augment is not None:
        x = augment(x)
    preprocess = preprocess_layer(spec)
    if preprocess is not None:
        x = preprocess(x)
    x = backbone(x, training=False)
    outputs = blocks.head(x, config, head_bn=config["batchnorm"], **top)
    model = keras.Model(inputs, outputs, name=name)
    if kind == "checkpoint":
        pretrained.load_checkpoint(model, model.get_layer(BACKBONE_LAYER), path)
    freeze(model)
    return model


def _check_weights(name, spec, config, weights):
    """(kind, path): (None, None), ("imagenet", a keras.applications .h5 file) or ("checkpoint", file or folder)."""
    if weights is None:
        return None, None
    if weights == "imagenet":
        if spec.constructor.startswith("zoo:"):
            raise ValueError(f"{name} has no ImageNet weights: its backbone is the zoo's {spec.constructor[4:]}; pass "
                             f"a trained {spec.constructor[4:]} (a .weights.h5 file, a model.keras or a run folder). "
                             f"Received: weights='imagenet'")
        pretrained.check_imagenet_width(name, spec, config)
        return "imagenet", pretrained.imagenet_weights_file(name, config, download=True)
    path = os.path.expanduser(str(weights))
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {weights}. Received: weights={weights!r}")
    if os.path.isfile(path) and path.endswith(".h5") and not path.endswith(".weights.h5"):
        if spec.constructor.startswith("zoo:"):
            raise ValueError(f"{name}: a legacy .h5 file cannot hold a zoo backbone; pass a .weights.h5 file, a "
                             f"model.keras or a run folder. Received: weights={weights!r}")
        return "imagenet", path  # the legacy format Keras distributes ImageNet weights in
    return "checkpoint", path


# ---------------------------------------------------------------------------------------------------------------
# Weights


def save_backbone_weights(model, path):
    """Write the backbone of a transfer model to a .weights.h5 file (atomically), for `weights=` elsewhere."""
    path = str(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"the file name must end in .weights.h5. Received: path={path!r}")
    backbone = backbone_of(model)
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.getpid()}.{base}")  # Keras wants the .weights.h5 ending
    try:
        backbone.save_weights(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Freezing and fine-tuning


def backbone_of(model):
    """The nested `backbone` model of a transfer model (ValueError for other models)."""
    import keras

    try:
        backbone = model.get_layer(BACKBONE_LAYER)
    except ValueError:
        backbone = None
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"{model.name} is not a transfer model: it has no nested `{BACKBONE_LAYER}` model (see "
                         f"keras_cnn.list_models('*_transfer')). Received: model={model.name!r}")
    return backbone


def backbone_blocks(model):
    """The backbone's layers grouped into blocks, bottom to top: {block name: [layers]}.

    A block is a name prefix: `conv5_block3` (ResNet50/50V2 bottleneck blocks), `block_16` /
    `expanded_conv` (MobileNetV2 inverted residuals), `expanded_conv_10` (MobileNetV3), `block7a`
    (EfficientNet), `stage4` (the zoo ResNets: whole stages). Layers before the first block form
    `stem`; the final 1x1 convolutions of the MobileNets and EfficientNet form `top`; any other
    layer belongs to the block before it (ResNet50V2's post_bn, MobileNetV3's activations).
    """
    backbone = backbone_of(model)
    spec = BACKBONES[backbone_key(backbone)]
    pattern = re.compile(spec.block)
    groups, current = {}, "stem"
    for layer in backbone.layers:
        match = pattern.match(layer.name)
        if match:
            current = match.group(1)
        elif layer.name in spec.top:
            current = "top"
        groups.setdefault(current, []).append(layer)
    return groups


def freeze(model):
    """Freeze the whole backbone (phase 1: only the head trains)."""
    backbone_of(model).trainable = False


def unfreeze(model, blocks=None):
    """Make the top `blocks` blocks of the backbone trainable (None: all of it); BatchNorm stays frozen.

    Returns the names of the unfrozen blocks. The backbone is still called with training=False, so
    its BatchNorm layers keep normalising with their moving statistics. Recompile afterwards.
    """
    import keras

    groups = backbone_blocks(model)
    if blocks is not None:
        blocks = options.positive_int("unfreeze", blocks)
    names = list(groups)[-blocks:] if blocks is not None else list(groups)
    backbone = backbone_of(model)
    backbone.trainable = True
    for block, members in groups.items():
        for layer in members:
            layer.trainable = block in names and not isinstance(layer, keras.layers.BatchNormalization)
    return names


def fine_tune(model, *, blocks=None, learning_rate):
    """The family's second training phase, which `keras_cnn.train(..., fine_tune_epochs=N, unfreeze=B)` runs.

    Unfreezes the top `blocks` backbone blocks (`unfreeze`) and returns what the phase trains at and
    config.json records: {"learning_rate": 1/100 of phase 1's peak `learning_rate`, "blocks": their names}.
    The trainer recompiles the model with that rate.
    """
    names = unfreeze(model, blocks)
    rate = learning_rate * FINE_TUNE_LR_FACTOR
    logger.info("%s: fine-tuning %d backbone block(s) (%s ... %s) at learning rate %g", model.name, len(names),
                names[0], names[-1], rate)
    return {"learning_rate": rate, "blocks": names}


FAMILY = Family("transfer", OPTIONS, resolve, spatial_ops, build, consumes_weights=True,
                preferred_input=preferred_input, fine_tune=fine_tune)
