"""Training-time data augmentation presets, built from Keras 3 preprocessing layers.

`augmentation(preset, image_shape=...)` returns a `keras.Sequential` that a zoo
model places right after its `preprocess` layer. Every layer draws its random
parameters independently for each image of a batch, acts only when called with
`training=True`, and is the identity with `training=False` (Keras's image layers
default to `training=True` when called bare, so inference must pass `False`).
Images are channels-last, `image_shape=(height, width, channels)`.
"""

import math

import keras
from keras import ops

from keras_cnn.models.options import ALL_AUGMENT_PRESETS as PRESETS  # validated there without TensorFlow

TRANSLATE_PIXELS = 2  # airbench's translation, for the "flip_translate" preset


@keras.saving.register_keras_serializable(package="keras_cnn")
class AlternatingFlip(keras.layers.RandomFlip):
    """airbench's derandomised flips: each image is mirrored in every other epoch, starting mirrored or not.

    airbench flips a random half of the images once, then all of them every odd epoch, so every image is seen
    both ways in any two consecutive epochs (random flips repeat an orientation half the time). Images carry no
    index through a Keras model, so an image's starting orientation is the parity of the sum of its pixel values
    (as 8-bit levels of `value_range`): fixed for the image, about half of the images each way. The epoch comes
    from `epoch`, a variable `keras_cnn.training.callbacks.AugmentationEpoch` sets as each epoch begins.
    """

    def __init__(self, value_range=(0.0, 1.0), seed=None, **kwargs):
        kwargs.pop("mode", None)  # always horizontal
        super().__init__("horizontal", seed=seed, **kwargs)  # the seed is unused: the flips are derandomised
        self.value_range = tuple(value_range)
        self.epoch = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="epoch")

    def call(self, images, training=True):  # replaces RandomFlip's random draw
        if not training:
            return images
        low, high = self.value_range
        levels = ops.round((images - low) * (255.0 / (high - low)))
        parity = ops.cast(ops.sum(levels, axis=(1, 2, 3)), "int32") % 2
        flip = ops.reshape(ops.not_equal(parity, self.epoch % 2), (-1, 1, 1, 1))
        return ops.where(flip, ops.flip(images, axis=2), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "value_range": self.value_range}


@keras.saving.register_keras_serializable(package="keras_cnn")
class RandomShift(keras.layers.Layer):
    """airbench's translation: each image moved by a whole number of pixels drawn uniformly from
    [-pixels, pixels] on each axis (at most the image's side minus one), the uncovered border filled by
    reflection about the edge pixel (PyTorch's "reflect" padding, which airbench pads with, and the padding of
    the `flip+translate` test-time views).

    Keras's `RandomTranslation` draws a continuous shift and rounds it, so the largest shifts come half as
    often as the others, and its "reflect" fill repeats the edge pixel; TensorFlow's image transform has no
    fill that skips it. So the image is padded by `pixels` with `ops.pad`'s reflection and moved inside the
    padding by a whole-pixel transform (nearest neighbour on integer shifts copies pixels exactly).
    """

    def __init__(self, pixels=2, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.pixels = pixels
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # as RandomTranslation, which uses the same op

    def call(self, images, training=True):
        # reflection needs a border narrower than the image: smaller images shift by less
        pad = min(self.pixels, images.shape[1] - 1, images.shape[2] - 1)
        if not training or pad < 1:
            return images
        padded = ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect")
        batch = ops.shape(images)[0]
        shifts = keras.random.randint((batch, 2), -pad, pad + 1, seed=self.seed_generator)
        shifts = ops.cast(shifts, "float32")
        one, zero = ops.ones((batch, 1)), ops.zeros((batch, 1))
        transform = ops.concatenate([one, zero, shifts[:, :1], zero, one, shifts[:, 1:], zero, zero], axis=1)
        moved = ops.image.affine_transform(ops.cast(padded, "float32"), transform, interpolation="nearest")
        return ops.cast(moved[:, pad:-pad, pad:-pad, :], images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pixels": self.pixels, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_cnn")
class RandomResizedCrop(keras.layers.Layer):
    """torchvision's `RandomResizedCrop`: per image, crop a box of a random
    fraction `scale` of the area and aspect ratio in `ratio` at a random place
    inside the image, and resize it (bilinear) back to the input size.

    No Keras layer does this: `RandomCrop` draws one offset per batch and
    returns a smaller image in training, and `RandomZoom` zooms about the
    centre; a `RandomTranslation` after it cannot tie its shift to each image's
    zoom, so the pair either shows fill from beyond the edge or never reaches
    the corners. The aspect ratio is clipped where needed so the box always
    fits (torchvision redraws instead).
    """

    def __init__(self, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), seed=None, **kwargs):
        super().__init__(**kwargs)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # as RandomZoom and RandomTranslation, which use the same op

    def call(self, images, training=True):
        if not training:
            return images
        batch, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]

        def uniform(low, high):
            return keras.random.uniform((batch, 1), low, high, seed=self.seed_generator)

        area = uniform(*self.scale)
        # `ratio` is width / height in pixels, as in torchvision; `aspect` is in fractions of W, H.
        aspect = ops.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1]))) * (height / width)
        aspect = ops.minimum(ops.maximum(aspect, area), 1.0 / area)
        box_w, box_h = ops.sqrt(area * aspect), ops.sqrt(area / aspect)
        x0, y0 = uniform(0.0, 1.0) * (1.0 - box_w) * width, uniform(0.0, 1.0) * (1.0 - box_h) * height
        # Output pixel j (centre j + 0.5) samples the box at x0 + (j + 0.5) * box_w, in
        # the index coordinates of affine_transform (pixel i centred on i).
        zero = ops.zeros_like(area)
        transform = ops.concatenate(
            [box_w, zero, x0 + 0.5 * (box_w - 1.0), zero, box_h, y0 + 0.5 * (box_h - 1.0), zero, zero],
            axis=1,
        )
        return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="nearest")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "ratio": self.ratio, "seed": self.seed}


def augmentation(preset, *, image_shape, value_range=(0.0, 1.0), flip=True, seed=None, name="augment",
                 translate=TRANSLATE_PIXELS, dtype=None):
    """The augmentation block for `preset`, or None for "none".

    - "basic": torchvision `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`:
      a whole-pixel shift of up to 4 pixels per axis (whatever the image size),
      filled with black (`value_range[0]`), then a horizontal flip. The shift is
      drawn in [-4, 4) and rounded, so +-4 are half as likely as the others.
    - "strong": `RandomResizedCrop(scale=(0.6, 1))` + flip + `ColorJitter(0.2,
      0.2, 0.2, 0.1)` + `RandomGrayscale(p=0.05)`. Images without 3 channels get
      only the brightness and contrast jitter (as torchvision does for grayscale).
    - "cutout": flip + erase one square of half the height and width at a random
      place inside the image, filled with mid-grey (Cutout, DeVries & Taylor 2017).
    - "flip_translate": airbench's: alternating flips (`AlternatingFlip`) + a whole-pixel shift drawn
      uniformly from [-translate, translate] per axis, the edge filled by reflection (`RandomShift`).
    - "randaugment", "augmix": Keras's `RandAugment` (2 operations, factor 0.5) and `AugMix` with their
      defaults, after a flip.

    `flip=False` drops every flip, for data where a mirror image means
    something else (digits, text). `value_range` is the pixel range the layers
    see; `seed` (int) makes the draws reproducible; `dtype` is the layers' dtype
    policy (default: the global one).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown augmentation preset; expected one of {PRESETS}. Received: augment={preset!r}")
    if preset == "none":
        return None
    height, width, _ = image_shape
    layers = []

    def add(suffix, layer_class, *args, **kwargs):
        layer_seed = None if seed is None else seed + len(layers)  # distinct streams per layer
        layers.append(layer_class(*args, seed=layer_seed, name=f"{name}_{suffix}", dtype=dtype, **kwargs))

    if preset == "basic":
        # at most the whole image: Keras refuses factors above 1 (images under 4 pixels)
        add("translate", keras.layers.RandomTranslation, min(1.0, 4 / height), min(1.0, 4 / width),
            fill_mode="constant", fill_value=float(value_range[0]), interpolation="nearest")
    elif preset == "strong":
        add("crop", RandomResizedCrop, scale=(0.6, 1.0))
    if flip and preset == "flip_translate":
        add("flip", AlternatingFlip, value_range=value_range)
    elif flip:
        add("flip", keras.layers.RandomFlip, "horizontal")
    _after_flip(add, preset, image_shape, value_range, translate)
    return keras.Sequential([keras.Input(shape=tuple(image_shape)), *layers], name=name)


def _after_flip(add, preset, image_shape, value_range, translate):
    """The layers of `preset` that come after its flip, through `add(suffix, layer_class, *args, **kwargs)`."""
    low, high = value_range
    if preset == "flip_translate":
        add("translate", RandomShift, translate)
    elif preset in ("randaugment", "augmix"):
        layer = keras.layers.RandAugment if preset == "randaugment" else keras.layers.AugMix
        add(preset, layer, value_range=value_range)
    if preset == "strong":
        colour = image_shape[2] == 3
        # Keras's brightness is additive: +-0.1 of the range is torchvision's x[0.8, 1.2]
        # at mid-grey. A single contrast factor 0.2 would mean [1, 1.2] (RandomContrast
        # clips its lower bound at 0), hence the pair. Saturation is multiplied by
        # f / (1 - f), so [0.8, 1.2] is f in [0.8 / 1.8, 1.2 / 2.2]; hue 0.2 shifts by +-0.1.
        add("jitter", keras.layers.RandomColorJitter, value_range=value_range,
            brightness_factor=0.1, contrast_factor=(0.2, 0.2),
            saturation_factor=(0.8 / 1.8, 1.2 / 2.2) if colour else None,
            hue_factor=0.2 if colour else None)
        if colour:
            add("grayscale", keras.layers.RandomGrayscale, factor=0.05)
    elif preset == "cutout":
        # A bare factor 1.0 would draw the probability from [0, 1] (half the images erased);
        # each side is sqrt(a draw from `scale`) of the image side, so 0.25 gives half sides.
        add("erase", keras.layers.RandomErasing, factor=(1.0, 1.0), scale=(0.25, 0.25),
            fill_value=(low + high) / 2, value_range=value_range)
