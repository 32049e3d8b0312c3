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

EfficientNet's `Normalization` layer keeps its statistics in a form that `set_weights` does not
refresh (Keras snapshots them on load), which would break cloning and export; it is replaced by an
equivalent fixed per-channel 1x1 depthwise convolution named `normalization` (identity without
ImageNet weights; with them, ImageNet's mean and standard deviation including Keras's own
correction of tensorflow/tensorflow#49930).

`unfreeze(model, blocks)` makes the top blocks of the backbone trainable for fine-tuning (BatchNorm
stays frozen); `keras_cnn.train(..., fine_tune_epochs=N, unfreeze=B)` runs that second phase.
"""
import logging
import os
import re
import warnings
from typing import NamedTuple

from keras_cnn import options
from keras_cnn.io import first_line, load_weights
from keras_cnn.registry import Spec, register_model
from keras_cnn.shapes import Op

logger = logging.getLogger("keras_cnn")

CONSUMES_WEIGHTS = True  # registry.build passes `weights` here instead of loading them into the whole model

OPTIONS = {
    "dense": lambda name, value: options.int_tuple(name, value, allow_empty=True),
}

BACKBONE_LAYER = "backbone"
FINE_TUNE_LR_FACTOR = 0.01  # phase-2 learning rate / phase-1 peak (the Keras guide's 1e-3 -> 1e-5)
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode "caffe"
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # EfficientNet's Normalization, in [0, 1] units
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


class Backbone(NamedTuple):
    """What a transfer model needs to know about its backbone."""

    constructor: str  # keras.applications function, or "zoo:<model>" for the zoo's ResNets
    module: str  # keras.applications submodule whose preprocess_input matches (None for the zoo)
    preprocess: str  # "caffe", "tf" ([-1, 1]) or "inside" (the backbone rescales itself)
    stride: int  # total downsampling
    smallest: int  # smallest input side (keras.applications refuses less than 32)
    upsize: int  # smaller images are resized up to this side (0: the zoo's rule, take the data's)
    block: str  # regex: group 1 of a layer name is its block (see `backbone_blocks`)
    top: tuple  # names of the layers after the last block, a block of their own ("top")
    widths: tuple  # `width` (alpha) values with ImageNet weights; () = no `width` option


BACKBONES = {
    "resnet50": Backbone("ResNet50", "resnet", "caffe", 32, 32, 128, r"(conv\d_block\d+)_", (), ()),
    "resnet50v2": Backbone("ResNet50V2", "resnet_v2", "tf", 32, 32, 128, r"(conv\d_block\d+)_", (), ()),
    "mobilenetv2": Backbone("MobileNetV2", "mobilenet_v2", "tf", 32, 32, 96, r"(block_\d+|expanded_conv)_",
                            ("Conv_1", "Conv_1_bn", "out_relu"), (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    "mobilenetv3small": Backbone("MobileNetV3Small", "mobilenet_v3", "inside", 32, 32, 96,
                                 r"(expanded_conv(?:_\d+)?)_", ("conv_1", "conv_1_bn"), (0.75, 1.0)),
    "efficientnetb0": Backbone("EfficientNetB0", "efficientnet", "inside", 32, 32, 128, r"(block\d+[a-z])_",
                               ("top_conv", "top_bn", "top_activation"), ()),
    "resnet18": Backbone("zoo:resnet18", None, "inside", 8, 1, 0, r"(stage\d+)_", (), ()),
    "resnet34": Backbone("zoo:resnet34", None, "inside", 8, 1, 0, r"(stage\d+)_", (), ()),
}

# MobileNetV2 has ImageNet weights for these square input sides (others get the 224 ones, as in Keras).
MOBILENETV2_SIDES = (96, 128, 160, 192, 224)

HEAD_DEFAULTS = {"head": "gap", "batchnorm": False, "dense": (), "dropout": 0.2, "augment": "none", "flip": True}


def transfer(backbone, **defaults):
    spec = BACKBONES[backbone]
    side = 32 if spec.constructor.startswith("zoo:") else 224
    width = {"width": 1.0} if spec.widths or spec.constructor.startswith("zoo:") else {}
    return Spec(family=__name__, defaults={"input_shape": (side, side, 3), "backbone": backbone, **width,
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
        from keras_cnn import registry

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

    from keras_cnn import blocks
    from keras_cnn.augment import augmentation

    spec = BACKBONES[config["backbone"]]
    shape = tuple(config["input_shape"])
    if not spec.constructor.startswith("zoo:") and shape[-1] != 3:
        raise ValueError(f"{name}: the {spec.constructor} backbone takes RGB images (3 channels); gray images are "
                         f"repeated to RGB by the data pipeline. Received: input_shape={shape}")
    kind, path = _check_weights(name, spec, config, weights)
    backbone = _backbone(spec, config, imagenet_file=path if kind == "imagenet" else None)

    inputs = keras.Input(shape=shape, name="image")
    x = layers.Identity(name="preprocess")(inputs)
    augment = augmentation(config["augment"], image_shape=shape, value_range=(0.0, 255.0), flip=config["flip"])
    if augment is not None:
        x = augment(x)
    preprocess = _backbone_preprocess(spec)
    if preprocess is not None:
        x = preprocess(x)
    x = backbone(x, training=False)
    outputs = blocks.head(x, config, head_bn=config["batchnorm"], **top)
    model = keras.Model(inputs, outputs, name=name)
    if kind == "checkpoint":
        _load_weights(model, path)
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
        _check_imagenet_width(name, spec, config)
        return "imagenet", imagenet_weights_file(name, config, download=True)
    path = os.path.expanduser(str(weights))
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {weights}. Received: weights={weights!r}")
    if os.path.isfile(path) and path.endswith(".h5") and not path.endswith(".weights.h5"):
        if spec.constructor.startswith("zoo:"):
            raise ValueError(f"{name}: a legacy .h5 file cannot hold a zoo backbone; pass a .weights.h5 file, a "
                             f"model.keras or a run folder. Received: weights={weights!r}")
        return "imagenet", path  # the legacy format Keras distributes ImageNet weights in
    return "checkpoint", path


def _check_imagenet_width(name, spec, config):
    width = config.get("width", 1.0)
    if spec.widths and width not in spec.widths:
        raise ValueError(f"{name}: ImageNet weights of {spec.constructor} exist for width (alpha) "
                         f"{', '.join(map(str, spec.widths))} only. Received: width={width}")


def _backbone(spec, config, imagenet_file=None):
    """The backbone as a Functional model named `backbone`, from raw (or backbone-preprocessed) pixels."""
    import keras

    shape = tuple(config["input_shape"])
    if spec.constructor.startswith("zoo:"):
        from keras_cnn import registry

        features = registry.build(spec.constructor[4:], input_shape=shape, include_top=False, width=config["width"])
        return keras.Model(features.input, features.output, name=BACKBONE_LAYER)
    constructor = getattr(keras.applications, spec.constructor)
    kwargs = {}
    if spec.widths:
        kwargs["alpha"] = float(config["width"])
    if spec.constructor == "MobileNetV3Small":
        kwargs["include_preprocessing"] = True
    app = constructor(include_top=False, weights=None, input_shape=shape, **kwargs)
    if imagenet_file is not None:
        load_weights(app, imagenet_file)
    if spec.constructor.startswith("EfficientNet"):
        app = _fixed_normalization(app, imagenet=imagenet_file is not None)
    return keras.Model(app.input, app.output, name=BACKBONE_LAYER)


def _fixed_normalization(app, *, imagenet):
    """EfficientNet with its Normalization layer replaced by an equivalent fixed 1x1 depthwise convolution.

    With ImageNet weights Keras follows Normalization (x - mean) / sqrt(var) with a Rescaling by
    1 / sqrt(stddev) (tensorflow/tensorflow#49930): both are folded into the convolution here.
    """
    import keras
    import numpy as np

    norm = next(layer for layer in app.layers if isinstance(layer, keras.layers.Normalization))
    if imagenet:
        mean = np.asarray(norm.adapt_mean.numpy(), "float64")
        scale = 1.0 / np.sqrt(np.asarray(norm.adapt_variance.numpy(), "float64")) / np.sqrt(IMAGENET_STDDEV_RGB)
    else:
        mean, scale = np.zeros(3), np.ones(3)  # Keras's defaults without weights: the identity
    replacement = keras.layers.DepthwiseConv2D(1, use_bias=True, trainable=False, name="normalization")

    def clone(layer):  # fresh layers: a Functional model reusing the originals' layers misbehaves when nested
        return replacement if layer is norm else layer.__class__.from_config(layer.get_config())

    adapted = keras.models.clone_model(app, clone_function=clone)
    for layer in adapted.layers:
        if layer is replacement:
            layer.set_weights([scale.reshape(1, 1, 3, 1).astype("float32"), (-mean * scale).astype("float32")])
        elif layer.weights:
            layer.set_weights(app.get_layer(layer.name).get_weights())
    return adapted


def _backbone_preprocess(spec):
    """The layer doing `keras.applications.<module>.preprocess_input` on raw pixels, or None."""
    from keras import layers

    if spec.preprocess == "tf":  # x / 127.5 - 1
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="backbone_preprocess", dtype="float32")
    if spec.preprocess == "caffe":
        return _caffe_preprocess()
    return None


def _caffe_preprocess():
    """RGB -> BGR and the ImageNet mean subtracted, as a frozen 1x1 convolution (built-in: loads and exports anywhere).

    Its kernel is a channel permutation (0s and 1s) and its bias minus the BGR mean, so the result is
    exactly `x[..., ::-1] - mean`; the values live in the layer's weights (saved with the model).
    """
    import numpy as np
    from keras import layers

    kernel = np.zeros((1, 1, 3, 3), "float32")
    for i in range(3):
        kernel[0, 0, 2 - i, i] = 1.0  # output channel i (BGR order) is input channel 2 - i (RGB order)
    layer = layers.Conv2D(3, 1, name="backbone_preprocess", trainable=False, dtype="float32")
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, -np.asarray(IMAGENET_MEAN_BGR, "float32")])
    return layer


# ---------------------------------------------------------------------------------------------------------------
# Weights


def _load_weights(model, source):
    """Backbone weights from a checkpoint: a .keras model or run folder, or a .weights.h5 file."""
    backbone = model.get_layer(BACKBONE_LAYER)
    if os.path.isdir(source):
        keras_file = os.path.join(source, "model.keras")
        if not os.path.isfile(keras_file):
            raise ValueError(f"{source} is a folder without model.keras; pass a run folder, a .keras model or a "
                             f"weights file. Received: weights={source!r}")
        source = keras_file
    if source.endswith(".keras"):
        from keras_cnn.io import load_model

        _copy_backbone(load_model(source), backbone, source, model.name)
        return
    errors = []
    for target in (backbone, model):  # the backbone alone (or a whole zoo model: its prefix), else the whole model
        try:
            with warnings.catch_warnings(record=True) as caught:  # a failed attempt warns about every layer
                warnings.simplefilter("always")
                target.load_weights(source)
            skipped = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
            if not skipped:
                return
            errors.append(first_line(skipped[0]))
        except (ValueError, KeyError, OSError) as error:
            errors.append(first_line(error))
    raise ValueError(f"cannot load weights from {source} into {model.name}: the file holds neither the weights of its "
                     f"backbone ({errors[0]}) nor of this whole model ({errors[1]}). Received: weights={source!r}")


def _copy_backbone(source_model, backbone, path, name):
    """Copy weights from a loaded model: a transfer model's backbone (in order), else layers of the same name."""
    import keras

    names = {layer.name for layer in source_model.layers}
    if BACKBONE_LAYER in names and isinstance(source_model.get_layer(BACKBONE_LAYER), keras.Model):
        source = source_model.get_layer(BACKBONE_LAYER)
        pairs = list(zip(source.weights, backbone.weights))
        if len(source.weights) != len(backbone.weights) or any(s.shape != t.shape for s, t in pairs):
            mismatch = next(((s.path, s.shape, t.shape) for s, t in pairs if s.shape != t.shape), None)
            detail = (f"{mismatch[0]} has shape {mismatch[1]}, this backbone needs {mismatch[2]}" if mismatch else
                      f"{len(source.weights)} weights, this backbone has {len(backbone.weights)}")
            raise ValueError(f"cannot load the backbone of {path} into {name}: another architecture ({detail}). "
                             f"Received: weights={path!r}")
        backbone.set_weights(source.get_weights())
        return
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            raise ValueError(f"cannot load weights from {path} into {name}: it has no layer {layer.name!r} (is it a "
                             f"{source_model.name} rather than this backbone?). Received: weights={path!r}")
        values = source_model.get_layer(layer.name).get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(f"cannot load weights from {path} into {name}: layer {layer.name!r} has weights of shapes "
                             f"{[tuple(v.shape) for v in values]}, this backbone needs {expected} (another `width`?). "
                             f"Received: weights={path!r}")
        layer.set_weights(values)


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
# ImageNet weights: the Keras cache, and downloading on a connected machine

DOWNLOAD_TIMEOUT = 10  # seconds without an answer before a download counts as offline
WEIGHTS_HOST = "storage.googleapis.com"  # where keras.applications downloads its weights from


class WeightsUnavailable(FileNotFoundError):
    """ImageNet weights that are not in the Keras cache and could not be downloaded; says what to do."""


def _backbone_name(name):
    """'resnet50', 'resnet50_transfer' -> the registered transfer model name."""
    from keras_cnn.registry import list_models

    model = name if name.endswith("_transfer") else f"{name}_transfer"
    if model not in list_models("*_transfer") or BACKBONES[model[: -len("_transfer")]].constructor.startswith("zoo:"):
        choices = ", ".join(k for k, b in BACKBONES.items() if not b.constructor.startswith("zoo:"))
        raise ValueError(f"no ImageNet weights for {name!r}: the backbones with ImageNet weights are {choices}. "
                         f"Received: name={name!r}")
    return model


def imagenet_file_name(backbone, config):
    """The file keras.applications loads for `backbone` without its top (as its constructors name it)."""
    spec = BACKBONES[backbone]
    if backbone in ("resnet50", "resnet50v2"):
        return f"{backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if backbone == "mobilenetv2":
        height, width = config["input_shape"][:2]
        rows = height if height == width and height in MOBILENETV2_SIDES else 224
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(config['width'])}_{rows}_no_top.h5"
    if backbone == "mobilenetv3small":
        return f"weights_mobilenet_v3_small_224_{float(config['width'])}_float_no_top_v2.h5"
    if backbone == "efficientnetb0":
        return "efficientnetb0_notop.h5"
    raise ValueError(f"{spec.constructor} has no ImageNet weights. Received: backbone={backbone!r}")


def keras_cache_dir():
    """Where keras.utils.get_file keeps downloaded weights: $KERAS_HOME/models, by default ~/.keras/models."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    if os.path.isdir(home) and not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")  # Keras's own fallback
    return os.path.join(home, "models")


def imagenet_weights_file(name, config=None, *, download=False):
    """The cached ImageNet weights of transfer model `name` (downloading them first if `download`)."""
    from keras_cnn.registry import resolve

    model = _backbone_name(name)
    config = config or resolve(model)
    backbone = config["backbone"]
    height, width = config["input_shape"][:2]
    if backbone == "mobilenetv2" and not (height == width and height in MOBILENETV2_SIDES):
        logger.info("%s: MobileNetV2 has ImageNet weights for square %s-pixel inputs; using the 224-pixel ones for "
                    "%dx%d", model, "/".join(map(str, MOBILENETV2_SIDES)), height, width)
    path = os.path.join(keras_cache_dir(), imagenet_file_name(backbone, config))
    if os.path.isfile(path):
        return path
    if not download:
        raise WeightsUnavailable(_missing_message(model, path))
    return download_weights(model, input_shape=config["input_shape"], width=config.get("width"))


def _missing_message(model, path, reason=None):
    backbone = model[: -len("_transfer")]
    because = f"downloading failed ({reason})" if reason else "it is not there"
    return (f"{model}: ImageNet weights are read from the Keras cache, {path}, and {because}. On a machine with "
            f"internet run `keras-cnn weights download {backbone}` (or keras_cnn.models.transfer.download_weights"
            f"('{backbone}')) and copy that file to {os.path.dirname(path)}/ here, or pass weights=<path of the "
            f"file>. Received: weights='imagenet'")


def _unreachable(host):
    """Why `host` cannot be reached over HTTPS right now, or None (also None behind a proxy: urllib decides)."""
    import socket

    if any(os.environ.get(key) for key in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return None
    try:
        socket.create_connection((host, 443), timeout=DOWNLOAD_TIMEOUT).close()
    except OSError as error:
        return f"cannot reach {host}: {error}"
    return None


def download_weights(name, input_shape=None, width=None):
    """Fill the Keras cache with the ImageNet weights of backbone `name` (e.g. "resnet50"); return the file.

    keras.applications downloads and checks the file (its own name and hash); without a network this
    fails within DOWNLOAD_TIMEOUT seconds with the file name to copy over from a connected machine.
    `input_shape` and `width` select MobileNet variants (alpha, and MobileNetV2's input size).
    """
    import socket

    from keras_cnn.registry import resolve

    model = _backbone_name(name)
    overrides = {"width": width} if width is not None else {}
    config = resolve(model, overrides)
    if input_shape is not None:
        config["input_shape"] = options.input_shape(input_shape)
    spec = BACKBONES[config["backbone"]]
    _check_imagenet_width(model, spec, config)
    path = os.path.join(keras_cache_dir(), imagenet_file_name(config["backbone"], config))
    if os.path.isfile(path):
        return path
    unreachable = _unreachable(WEIGHTS_HOST)  # before building a model only to have its download fail
    if unreachable:
        raise WeightsUnavailable(_missing_message(model, path, unreachable))
    import keras

    kwargs = {"alpha": float(config["width"])} if spec.widths else {}
    shape = tuple(config["input_shape"])
    if spec.constructor == "MobileNetV2":
        side = shape[0] if shape[0] == shape[1] and shape[0] in MOBILENETV2_SIDES else 224
        shape = (side, side, 3)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        getattr(keras.applications, spec.constructor)(include_top=False, weights="imagenet", input_shape=shape,
                                                      **kwargs)
    except Exception as error:  # get_file raises a bare Exception for URL and HTTP failures
        raise WeightsUnavailable(_missing_message(model, path, first_line(error))) from None
    finally:
        socket.setdefaulttimeout(previous)
    if not os.path.isfile(path):
        raise RuntimeError(f"keras.applications.{spec.constructor} did not leave {path} behind; its cache is "
                           "elsewhere (KERAS_HOME?)")
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


def _backbone_key(backbone):
    """The BACKBONES entry of a backbone, recognised by its layer names."""
    names = {layer.name for layer in backbone.layers}
    if "stage1_block1_conv1" in names:
        return "resnet18"  # the zoo ResNets share their naming (and their blocks: stages)
    if "conv1_conv" in names:
        return "resnet50v2" if "post_bn" in names else "resnet50"
    if "Conv1" in names:
        return "mobilenetv2"
    if "expanded_conv_depthwise" in names:
        return "mobilenetv3small"
    if "block1a_dwconv" in names:
        return "efficientnetb0"
    raise ValueError(f"unknown backbone {backbone.name!r}: its layers match none of {', '.join(BACKBONES)}")


def backbone_blocks(model):
    """The backbone's layers grouped into blocks, bottom to top: {block name: [layers]}.

    A block is a name prefix: `conv5_block3` (ResNet50/50V2 bottleneck blocks), `block_16` /
    `expanded_conv` (MobileNetV2 inverted residuals), `expanded_conv_10` (MobileNetV3), `block7a`
    (EfficientNet), `stage4` (the zoo ResNets: whole stages). Layers before the first block form
    `stem`; the final 1x1 convolutions of the MobileNets and EfficientNet form `top`; any other
    layer belongs to the block before it (ResNet50V2's post_bn, MobileNetV3's activations).
    """
    backbone = backbone_of(model)
    spec = BACKBONES[_backbone_key(backbone)]
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


def is_transfer_model(model):
    try:
        backbone_of(model)
        return True
    except ValueError:
        return False
