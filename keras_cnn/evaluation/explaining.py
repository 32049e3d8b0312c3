"""Grad-CAM: which part of an image made the model choose a class (`keras_cnn.explain`).

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a spatial layer's output by the mean gradient of
the class score over that channel, sums the weighted channels, keeps the positive part and scales it to
[0, 1]. The layer is by default the model's last layer with a spatial (N, H, W, C) output, found from the
model's structure: when that layer is a nested model (the backbone of a `*_transfer` model), the search
descends into it. The model is then run as three pieces around each nested model (the layers before it,
the nested model returning the chosen layer's output too, the layers after it), so the gradient is taken
with `tf.GradientTape` on the very tensor the backbone computes (the approach of the keras.io example
breaks on nested backbones: tensorflow/tensorflow#44462).

The score differentiated is the log of the class probability: the gradient of a saturated softmax
probability (0.9999) vanishes, its log's does not, and it differs from the usual pre-softmax logit only by
a term shared by all classes.
"""
import dataclasses
import os

import numpy as np

from keras_cnn.utils import compat


@dataclasses.dataclass
class Explanation:
    """What `explain` returns: one heat map per image, at the image's size, with the class it explains."""

    images: np.ndarray  # (N, H, W, C) float32 in [0, 255]: the images as the model saw them
    heatmaps: np.ndarray  # (N, H, W) float32 in [0, 1]
    class_indices: np.ndarray  # (N,) the class each map explains
    probabilities: np.ndarray  # (N, classes) the model's output
    layer: str  # the spatial layer, "backbone/stage4_out" for one inside a nested model


def explain(run_or_model, images, class_index=None, layer=None):
    """Grad-CAM heat maps of `images` for `class_index` (default: each image's top class).

    Args:
        run_or_model: a `keras.Model`, a run folder or a `keras_cnn.artifacts.runs.Run`.
        images: an image file, a numpy image (H, W, C) or batch (N, H, W, C) in raw pixels [0, 255], or a
            list of files / numpy images. Files are decoded and resized as in training; arrays must already
            fit the model's input (any size where the model accepts any).
        class_index: None, or the class to explain for every image.
        layer: None (the last spatial layer), or the name of a layer with a spatial output, of the model or
            of a nested model.
    """
    import keras
    import tensorflow as tf

    model = _model(run_or_model)
    x = _images(model, images)
    units = model.output_shape[-1]
    if class_index is not None and (isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer))
                                    or not 0 <= class_index < max(units, 2)):
        raise ValueError(f"class_index must be an integer in [0, {max(units, 2) - 1}] for {model.name}. "
                         f"Received: class_index={class_index!r}")
    path = _layer_path(model, layer)
    if keras.backend.backend() == "jax":
        heatmaps, chosen, probabilities = _jax_maps(*_split(model, path), x, units, class_index)
        return Explanation(x, heatmaps[..., 0], chosen, probabilities, "/".join(lay.name for lay in path))
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"Grad-CAM runs on the tensorflow and jax backends. Received: backend="
                         f"{keras.backend.backend()!r}")
    forward = _forward(model, path)

    # A graph, not eager ops: eagerly, TensorFlow 2.21's oneDNN kernels crashed the process (double free)
    # taking this gradient for one image back through a ResNet block.
    @tf.function
    def maps_and_probabilities(inputs):
        with tf.GradientTape() as tape:
            features, outputs = forward(inputs)
            probabilities = tf.cast(outputs, tf.float32)
            if units == 1:  # one sigmoid unit: P(class 1)
                probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
            chosen = (tf.argmax(probabilities, axis=-1) if class_index is None
                      else tf.fill(tf.shape(inputs)[:1], tf.constant(int(class_index), tf.int64)))
            score = tf.math.log(tf.gather(probabilities, chosen, batch_dims=1) + 1e-12)
        gradients = tf.cast(tape.gradient(score, features), tf.float32)
        return _grad_cam(tf.cast(features, tf.float32), gradients, x.shape[1:3]), chosen, probabilities

    heatmaps, chosen, probabilities = maps_and_probabilities(tf.constant(x))
    return Explanation(x, heatmaps.numpy()[..., 0], chosen.numpy(), probabilities.numpy(),
                       "/".join(lay.name for lay in path))


def overlay(run_or_model, image, class_names=None, class_index=None, layer=None):
    """A figure of one image with its Grad-CAM map, the explained class and the top three classes in the title."""
    from keras_cnn.analysis import viz

    explanation = explain(run_or_model, image, class_index, layer)
    probabilities = explanation.probabilities[0]
    names = class_names or [str(k) for k in range(len(probabilities))]
    top = ", ".join(f"{names[k]} {probabilities[k]:.2f}" for k in np.argsort(-probabilities)[:3])
    title = f"Grad-CAM of {names[explanation.class_indices[0]]} at {explanation.layer}\n{top}"
    return viz.cam_overlay(explanation.images, explanation.heatmaps, [title])


def spatial_layer_names(model):
    """Names of the layers with a spatial output, nested models' inner layers as "outer/inner"."""
    names = []
    for lay in model.layers:
        if _is_spatial(lay):
            names.append(lay.name)
            if _is_model(lay):
                names += [f"{lay.name}/{inner}" for inner in spatial_layer_names(lay)]
    return names


def _model(run_or_model):
    from keras_cnn.artifacts import runs

    return runs.as_run(run_or_model).model if runs.is_run(run_or_model) else run_or_model


def _images(model, images):
    """A float32 (N, H, W, C) batch that fits the model's input, or a one-line error naming `images`."""
    from keras_cnn.data.loading import read_image

    expected = tuple(model.input_shape[1:])
    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = images
    else:
        items = images if isinstance(images, (list, tuple)) else [images]
        batch = np.stack([np.atleast_3d(item) if isinstance(item, np.ndarray)
                          else read_image(item, _file_shape(item, expected)) for item in items])
    fits = batch.ndim == 4 and all(want in (None, got) for want, got in zip(expected, batch.shape[1:]))
    if not fits:
        wanted = "x".join("any" if d is None else str(d) for d in expected)
        raise ValueError(f"{model.name} takes images of {wanted} (height x width x channels); resize or convert "
                         f"them first. Received: images.shape={tuple(batch.shape)}")
    return batch.astype(np.float32)


def _file_shape(path, expected):
    """The model's input shape, with the file's own height or width where the model takes any."""
    from keras_cnn.data.image_files import image_header

    if None not in expected[:2] or not os.path.isfile(str(path)):  # read_image reports a missing file
        return tuple(d or 1 for d in expected)
    own = image_header(str(path)) or (None, None)
    return tuple(want or got or 1 for want, got in zip(expected, (*own, expected[-1])))


def _is_model(layer):
    import keras

    return isinstance(layer, keras.Model)


def _is_spatial(layer):
    import keras

    if isinstance(layer, keras.layers.InputLayer):
        return False
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # a layer never called in a graph, or called more than once
        return False


def _layer_path(model, name):
    """[outer layer, ..., chosen layer]: the chosen layer and the nested models leading to it."""
    if name is None:
        return _last_spatial(model)
    for lay in model.layers:
        if lay.name == name:
            if not _is_spatial(lay):
                raise ValueError(f"layer {name!r} of {model.name} has no spatial (N, H, W, C) output; Grad-CAM "
                                 f"needs one of: {', '.join(spatial_layer_names(model)) or 'none'}. "
                                 f"Received: layer={name!r}")
            return [lay]
    for lay in model.layers:
        if _is_model(lay) and any(inner.name == name for inner in _all_layers(lay)):
            return [lay, *_layer_path(lay, name)]
    raise ValueError(f"{model.name} has no layer {name!r}; layers with a spatial output: "
                     f"{', '.join(spatial_layer_names(model)) or 'none'}. Received: layer={name!r}")


def _all_layers(model):
    for lay in model.layers:
        yield lay
        if _is_model(lay):
            yield from _all_layers(lay)


def _last_spatial(model):
    for lay in reversed(model.layers):
        if _is_spatial(lay):
            return [lay, *_last_spatial(lay)] if _is_model(lay) and _has_spatial(lay) else [lay]
    raise ValueError(f"{model.name} has no layer with a spatial (N, H, W, C) output (a dense-only model?), so "
                     f"there is nothing for Grad-CAM to map. Received: model={model.name!r}")


def _has_spatial(model):
    return any(_is_spatial(lay) for lay in model.layers)


def _forward(model, path):
    """A function images -> (the output of path[-1], the model's output), through nested models."""
    import keras

    target = path[0]
    if len(path) == 1:
        probe = keras.Model(model.inputs, [target.output, model.outputs[0]])
        return lambda x: probe(x, training=False)
    inputs, outputs = compat.first_call(target)  # the call of the nested model in `model`'s graph
    try:
        before = keras.Model(model.inputs, inputs[0])
        after = keras.Model(outputs[0], model.outputs[0])
    except ValueError as error:
        raise ValueError(f"cannot split {model.name} around its nested model {target.name!r} ({error}); name a "
                         f"layer of {model.name} itself. Received: layer={path[-1].name!r}") from error
    inner = _forward(target, path[1:])

    def run(x):
        features, inner_output = inner(before(x, training=False))
        return features, after(inner_output, training=False)

    return run


def _split(model, path):
    """(images -> the output of path[-1], that output -> the model's output), through nested models: the two
    halves JAX differentiates between (it takes gradients of functions, not of tensors on a tape)."""
    import keras

    target = path[0]
    if len(path) == 1:
        head, tail = keras.Model(model.inputs[0], target.output), keras.Model(target.output, model.outputs[0])
        return lambda x: head(x, training=False), lambda features: tail(features, training=False)
    inputs, outputs = compat.first_call(target)  # the call of the nested model in `model`'s graph
    before = keras.Model(model.inputs[0], inputs[0])
    after = keras.Model(outputs[0], model.outputs[0])
    inner_head, inner_tail = _split(target, path[1:])
    return (lambda x: inner_head(before(x, training=False)),
            lambda features: after(inner_tail(features), training=False))


def _jax_maps(head, tail, x, units, class_index):
    """Grad-CAM maps (N, H, W, 1), chosen classes and probabilities as numpy arrays, by `jax.grad` of the log
    probability of the chosen class with respect to the spatial layer's output."""
    import jax
    import jax.numpy as jnp
    import tensorflow as tf

    def score(features):
        probabilities = jnp.asarray(tail(features), jnp.float32)
        if units == 1:  # one sigmoid unit: P(class 1)
            probabilities = jnp.concatenate([1.0 - probabilities, probabilities], axis=-1)
        chosen = (jnp.argmax(probabilities, axis=-1) if class_index is None
                  else jnp.full(probabilities.shape[:1], int(class_index)))
        picked = jnp.take_along_axis(probabilities, chosen[:, None], axis=1)
        return jnp.sum(jnp.log(picked + 1e-12)), (chosen, probabilities)  # each image's score: its own gradient

    features = head(x)
    gradients, (chosen, probabilities) = jax.grad(score, has_aux=True)(features)
    maps = _grad_cam(tf.constant(np.asarray(features, np.float32)), tf.constant(np.asarray(gradients, np.float32)),
                     x.shape[1:3])
    return maps.numpy(), np.asarray(chosen), np.asarray(probabilities)


def _grad_cam(features, gradients, size):
    """ReLU(sum over channels of feature x mean gradient), each map scaled to [0, 1], resized to `size`."""
    import tensorflow as tf

    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1, keepdims=True))
    peak = tf.reduce_max(maps, axis=(1, 2, 3), keepdims=True)
    maps = tf.math.divide_no_nan(maps, peak)
    return tf.image.resize(maps, size, method="bilinear")
