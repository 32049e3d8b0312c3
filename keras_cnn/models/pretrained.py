"""Pretrained weights of the transfer models' backbones: ImageNet files in the Keras cache, downloading them,
and loading a backbone from a local checkpoint.

ImageNet weights are the files keras.applications distributes, read from the Keras cache
($KERAS_HOME/models, by default ~/.keras/models) under the names its constructors give them. They are
downloaded only when the host answers within DOWNLOAD_TIMEOUT seconds; otherwise `WeightsUnavailable`
names the file and `keras-cnn weights download NAME`, to run on a connected machine and copy over.
`download_weights("resnet50")` fills the cache (`keras-cnn weights download resnet50`).
"""
import logging
import os
import warnings

from keras_cnn.models import options
from keras_cnn.models.backbones import BACKBONES
from keras_cnn.utils import network
from keras_cnn.utils.io import MODEL_FILE, first_line, keras_home, load_model

logger = logging.getLogger("keras_cnn")

DOWNLOAD_TIMEOUT = 10  # seconds without an answer before a download counts as offline
WEIGHTS_HOST = "storage.googleapis.com"  # where keras.applications downloads its weights from


class WeightsUnavailable(FileNotFoundError):
    """ImageNet weights that are not in the Keras cache and could not be downloaded; says what to do."""
# MobileNetV2 has ImageNet weights for these square input sides (others get the 224 ones, as in Keras).
MOBILENETV2_SIDES = (96, 128, 160, 192, 224)


def load_checkpoint(model, backbone, source):
    """Load the weights of `model`'s nested `backbone` from a checkpoint: a .keras model or run folder (a transfer
    model's backbone, or a zoo model's layers of the same names), a .weights.h5 file of the backbone alone (or of a
    whole zoo model, whose first layers it is), or of the whole `model`."""
    if os.path.isdir(source):
        keras_file = os.path.join(source, MODEL_FILE)
        if not os.path.isfile(keras_file):
            raise ValueError(f"{source} is a folder without model.keras; pass a run folder, a .keras model or a "
                             f"weights file. Received: weights={source!r}")
        source = keras_file
    if source.endswith(".keras"):
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
    """Copy weights from a loaded model: a transfer model's backbone (a nested model of the same name as `backbone`,
    in order), else layers of the same name."""
    import keras

    names = {layer.name for layer in source_model.layers}
    if backbone.name in names and isinstance(source_model.get_layer(backbone.name), keras.Model):
        source = source_model.get_layer(backbone.name)
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


def imagenet_file_name(backbone, config):
    """The file keras.applications loads for `backbone` without its top (as its constructors name it)."""
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
    raise ValueError(f"{backbone} has no ImageNet weights. Received: backbone={backbone!r}")


def keras_cache_dir():
    """Where keras.utils.get_file keeps downloaded weights: $KERAS_HOME/models, by default ~/.keras/models."""
    return os.path.join(keras_home(), "models")


def missing_message(model, path, reason=None):
    """What to do when the ImageNet weights of transfer model `model` are not at `path` (and `reason` they could
    not be downloaded)."""
    backbone = model[: -len("_transfer")]
    because = f"downloading failed ({reason})" if reason else "it is not there"
    return (f"{model}: ImageNet weights are read from the Keras cache, {path}, and {because}. On a machine with "
            f"internet run `keras-cnn weights download {backbone}` (or keras_cnn.models.pretrained.download_weights"
            f"('{backbone}')) and copy that file to {os.path.dirname(path)}/ here, or pass weights=<path of the "
            f"file>. Received: weights='imagenet'")


def fetch_imagenet(model, constructor, config, path, *, alpha=None):
    """Download the ImageNet weights of `model`'s keras.applications `constructor` into the Keras cache, where
    they are expected at `path`; WeightsUnavailable within DOWNLOAD_TIMEOUT seconds without a network.

    keras.applications downloads and checks the file (its own name and hash). `alpha` selects a MobileNet width.
    """
    import socket

    reason = network.unreachable(WEIGHTS_HOST, DOWNLOAD_TIMEOUT)  # before building a model to download into
    if reason:
        raise WeightsUnavailable(missing_message(model, path, reason))
    import keras

    kwargs = {} if alpha is None else {"alpha": float(alpha)}
    shape = tuple(config["input_shape"])
    if constructor == "MobileNetV2":
        side = shape[0] if shape[0] == shape[1] and shape[0] in MOBILENETV2_SIDES else 224
        shape = (side, side, 3)
    # keras.applications downloads with keras.utils.get_file, which calls urllib's urlretrieve: it takes no timeout,
    # so the process-wide default is set for this call only and put back (sockets other threads open meanwhile
    # get it too: a timeout where they had none, never a hang).
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        getattr(keras.applications, constructor)(include_top=False, weights="imagenet", input_shape=shape, **kwargs)
    except Exception as error:  # get_file raises a bare Exception for URL and HTTP failures
        raise WeightsUnavailable(missing_message(model, path, first_line(error))) from error
    finally:
        socket.setdefaulttimeout(previous)
    if not os.path.isfile(path):
        raise RuntimeError(f"keras.applications.{constructor} did not leave {path} behind; its cache is "
                           "elsewhere (KERAS_HOME?)")
    return path


def _backbone_name(name):
    """'resnet50', 'resnet50_transfer' -> the registered transfer model name."""
    from keras_cnn.models.registry import list_models

    model = name if name.endswith("_transfer") else f"{name}_transfer"
    if model not in list_models("*_transfer") or BACKBONES[model[: -len("_transfer")]].constructor.startswith("zoo:"):
        choices = ", ".join(k for k, b in BACKBONES.items() if not b.constructor.startswith("zoo:"))
        raise ValueError(f"no ImageNet weights for {name!r}: the backbones with ImageNet weights are {choices}. "
                         f"Received: name={name!r}")
    return model


def imagenet_weights_file(name, config=None, *, download=False):
    """The cached ImageNet weights of transfer model `name` (downloading them first if `download`)."""
    from keras_cnn.models.registry import resolve

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
        raise WeightsUnavailable(missing_message(model, path))
    return download_weights(model, input_shape=config["input_shape"], width=config.get("width"))


def download_weights(name, input_shape=None, width=None):
    """Fill the Keras cache with the ImageNet weights of backbone `name` (e.g. "resnet50"); return the file.

    Without a network this fails within `DOWNLOAD_TIMEOUT` seconds with the file name to copy over
    from a connected machine. `input_shape` and `width` select MobileNet variants (alpha, and MobileNetV2's
    input size).
    """
    from keras_cnn.models.registry import resolve

    model = _backbone_name(name)
    config = resolve(model, {"width": width} if width is not None else {})
    if input_shape is not None:
        config["input_shape"] = options.input_shape(input_shape)
    spec = BACKBONES[config["backbone"]]
    check_imagenet_width(model, spec, config)
    path = os.path.join(keras_cache_dir(), imagenet_file_name(config["backbone"], config))
    if os.path.isfile(path):
        return path
    return fetch_imagenet(model, spec.constructor, config, path,
                                     alpha=config["width"] if spec.widths else None)


def check_imagenet_width(name, spec, config):
    """ImageNet weights exist for some MobileNet widths (alpha) only: ValueError for another."""
    width = config.get("width", 1.0)
    if spec.widths and width not in spec.widths:
        raise ValueError(f"{name}: ImageNet weights of {spec.constructor} exist for width (alpha) "
                         f"{', '.join(map(str, spec.widths))} only. Received: width={width}")
