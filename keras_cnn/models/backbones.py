"""The backbones a transfer model stands on: their table, building them, and their preprocessing layer.

keras.applications networks (ResNet50, ResNet50V2, MobileNetV2, MobileNetV3Small, EfficientNetB0) and
the zoo's own ResNet-18/34 without their top (`keras_cnn.build(..., include_top=False)`), each built as
a Functional model named `backbone` from raw pixels, or from the pixels `preprocess_layer` prepared as
the network's `preprocess_input` would. The transfer family (`keras_cnn.models.transfer`) puts a head
on them; `keras_cnn.models.pretrained` finds their ImageNet weights.

EfficientNet's `Normalization` layer keeps its statistics in a form that `set_weights` does not
refresh (Keras snapshots them on load), which would break cloning and export; it is replaced by an
equivalent fixed per-channel 1x1 depthwise convolution named `normalization` (identity without
ImageNet weights; with them, ImageNet's mean and standard deviation including Keras's own
correction of tensorflow/tensorflow#49930).
"""
from typing import NamedTuple

from keras_cnn.utils.io import load_weights

BACKBONE_LAYER = "backbone"
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


def build_backbone(spec, config, imagenet_file=None):
    """The backbone as a Functional model named `backbone`, from raw (or backbone-preprocessed) pixels."""
    import keras

    shape = tuple(config["input_shape"])
    if spec.constructor.startswith("zoo:"):
        from keras_cnn.models import registry

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


def preprocess_layer(spec):
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


def backbone_key(backbone):
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
