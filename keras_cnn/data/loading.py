"""Image-classification data for keras_cnn: every source behind one loader and one pipeline contract.

``load_data(spec)`` understands four sources:

* ``"digits"``: scikit-learn's bundled 8x8 digits (offline; 0-16 scaled to 0-255).
* ``"tfds:NAME"`` / ``"tfds:NAME:CONFIG"``: a TensorFlow Datasets image-classification data set in
  ``data_dir``, downloaded and prepared first if its host answers a short probe; without network an
  unprepared data set fails at once (see keras_cnn.data.tfds_source).
* ``"folder:PATH"``: ``PATH/train/<class>/*`` + ``PATH/test/<class>/*`` (+ optional ``PATH/val/<class>/*``),
  or ``PATH/<class>/*`` split by fractions. JPEG/PNG/BMP/GIF, decoded by TensorFlow inside tf.data.
* ``(x, y)`` numpy arrays: x of shape (N, H, W) or (N, H, W, C), y integer labels.

Whatever the source, models get float32 images in raw pixel units [0, 255], channels last, and one-hot
float32 labels. Splits missing from the source are carved from train with ``seed``: stratified by class
for arrays and folders, the first examples of train for tfds.

Each split is kept as an unbatched ``tf.data.Dataset`` of (image at ``image_shape``, int label) in the
source dtype: 8-bit sources stay uint8 until batching, so an in-memory cache of CIFAR-10 costs 150 MB,
not 600 MB. Images resized to a common size are rounded back to uint8 for the same reason.

Bad files in folders: files without an image extension (.txt, .DS_Store, ...) are skipped with one logged
count. Every file with an image extension has its header read (a few bytes, no decoding in Python): a file
that is not a JPEG/PNG/BMP/GIF, whose header is cut short, or that has more than ``image_files.MAX_IMAGE_PIXELS`` pixels
(a decompression bomb: a 100 KB PNG can claim 10000x10000) fails with a ValueError naming it. A file whose
header is fine but whose body TensorFlow cannot decode (truncated, 1-bit BMP) is dropped by the pipeline with
a TensorFlow warning, so ``sizes`` counts it but batches do not contain it. With ``skip_bad_images=True`` every
file is decoded once when listed and those that fail (unreadable, not an image, cut short) are left out of
every split, named in ``ImageData.skipped`` (``report_skipped`` logs and lists them); only bombs still fail.
CMYK JPEGs, 16-bit PNGs (scaled to 8 bits), palette and transparent images are converted to RGB or grayscale;
an animated GIF gives its first frame.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from keras_cnn.data import image_files
from keras_cnn.data.image_files import IMAGE_EXTENSIONS, image_header
from keras_cnn.models.options import positive_int
from keras_cnn.utils import io

logger = logging.getLogger("keras_cnn")

SPLITS = ("train", "val", "test")
# Splits are stored in a seeded random order, and every epoch reshuffles them through a buffer: the whole split
# where its images fit in _SHUFFLE_BYTES (CIFAR-10's 50,000 take 150 MB), as PyTorch's and airbench's loaders draw
# a new permutation each epoch; else _SHUFFLE_BUFFER images, a window sliding over the stored order.
_SHUFFLE_BUFFER = 10_000
_SHUFFLE_BYTES = 512 * 2**20
_AUTOTUNE = tf.data.AUTOTUNE


def shuffle_buffer(images, image_bytes):
    """Images in the shuffle buffer of a split of `images` images of `image_bytes` bytes each (None: unknown)."""
    whole_split_fits = image_bytes is not None and images * image_bytes <= _SHUFFLE_BYTES
    return images if whole_split_fits else min(images, _SHUFFLE_BUFFER)


def _pipeline_options():
    """tf.data options for every pipeline: autotuning off, so AUTOTUNE keeps its starting values (parallel
    maps: one call per core, up to 16). The autotuner's thread competed with the training step, and joining
    it when Keras dropped an epoch's iterator stalled training at every epoch boundary (measured in
    docs/performance.md)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


_SPEC_HELP = "'digits', 'tfds:NAME[:CONFIG]', 'folder:PATH' or a tuple (x, y) of numpy arrays"


@dataclasses.dataclass
class _Split:
    dataset: tf.data.Dataset  # unbatched (image at ImageData.image_shape in the source dtype, int label)
    size: int
    labels: Callable[[], np.ndarray]  # lazy: tfds has to read the split to know them


@dataclasses.dataclass
class ImageData:
    """A loaded data set: metadata plus ready-to-train tf.data pipelines for "train", "val" and "test"."""

    name: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    seed: int = 0
    spec: str | None = dataclasses.field(default=None, init=False)
    skipped: list[str] = dataclasses.field(default_factory=list, init=False, repr=False)  # see report_skipped
    _skips_told: bool = dataclasses.field(default=False, init=False, repr=False)
    _splits: dict[str, _Split] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sizes(self) -> dict[str, int]:
        return {s: self._splits[s].size if s in self._splits else 0 for s in SPLITS}

    def pipeline(self, split, *, batch_size=128, image_shape=None, training=False, seed=None, cache=True):
        """Batches of (float32 images in [0, 255], one-hot float32 labels) for Keras ``fit``/``evaluate``.

        Order: decode -> adapt shape -> cache -> shuffle (training only, reshuffled every epoch, seeded
        with ``seed`` or the load seed) -> batch -> prefetch. ``cache`` is True (memory), a file path, or
        False. ``image_shape`` (H, W, C) resizes and converts gray<->RGB when it differs from the stored shape.
        """
        batch_size = positive_int("batch_size", batch_size)
        ds = self._examples(split, image_shape)
        if cache:
            ds = ds.cache(cache if isinstance(cache, str) else "")
        if training:
            image = ds.element_spec[0]
            values = image.shape.num_elements()
            buffer = shuffle_buffer(self._splits[split].size, values and values * image.dtype.size)
            ds = ds.shuffle(buffer, seed=self.seed if seed is None else seed, reshuffle_each_iteration=True)
        num_classes = self.num_classes
        ds = ds.batch(batch_size).map(
            lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes, dtype=tf.float32)),
            num_parallel_calls=_AUTOTUNE,
        )
        return ds.prefetch(_AUTOTUNE).with_options(_pipeline_options())

    def arrays(self, split, *, image_shape=None, limit=None):
        """The split as numpy (x float32 [0, 255] of shape (N, H, W, C), y int64 labels), for evaluation.

        ``limit`` keeps the first examples; splits are stored in a seeded random order, so that is a sample.
        """
        limit = None if limit is None else positive_int("limit", limit)
        ds = self._examples(split, image_shape)
        if limit is not None:
            ds = ds.take(limit)
        batches = list(ds.batch(1024).as_numpy_iterator())
        x = np.concatenate([b[0] for b in batches]).astype(np.float32)
        return x, np.concatenate([b[1] for b in batches]).astype(np.int64)

    def class_weights(self) -> dict[int, float]:
        """Keras ``class_weight`` for imbalanced data: sklearn's "balanced" weights on the train labels.

        Classes absent from train get 1.0 (they never occur, but Keras wants every class).
        """
        from sklearn.utils.class_weight import compute_class_weight

        labels = self._splits["train"].labels()
        present = np.unique(labels)
        weights = compute_class_weight("balanced", classes=present, y=labels)
        result = {c: 1.0 for c in range(self.num_classes)}
        result.update({int(c): float(w) for c, w in zip(present, weights)})
        return result

    def check_fits(self, model):
        """ValueError unless `model`'s output units fit these classes (one sigmoid unit for two classes)."""
        units = model.output_shape[-1]
        if units != self.num_classes and not (units == 1 and self.num_classes == 2):
            names = f"{', '.join(self.class_names[:5])}{', ...' if self.num_classes > 5 else ''}"
            raise ValueError(f"the model predicts {units} classes but {self.name} has {self.num_classes} ({names}). "
                             f"Received: num_classes={units}")

    def report_skipped(self, folder=None):
        """Say in one line how many images ``skip_bad_images`` left out: once per ImageData, or with ``folder``
        each time, listing them there, one path a line, in ``io.SKIPPED_IMAGES_FILE`` (written atomically)."""
        if not self.skipped or (folder is None and self._skips_told):
            return
        count = (f"{self.name}: skipped {len(self.skipped):,} of {sum(self.sizes.values()) + len(self.skipped):,} "
                 "images that could not be decoded")
        if folder is None:
            logger.warning("%s, e.g. %s", count, self.skipped[0])
        else:
            io.write_text(os.path.join(folder, io.SKIPPED_IMAGES_FILE), "".join(f"{file}\n" for file in self.skipped))
            logger.warning("%s: see %s", count, os.path.join(folder, io.SKIPPED_IMAGES_FILE))
        self._skips_told = True

    def _examples(self, split, image_shape):
        """The unbatched split, adapted to ``image_shape`` (one log line when that changes anything)."""
        if split not in SPLITS:
            raise ValueError(f"Unknown split, expected one of {SPLITS}. Received: split={split!r}")
        if split not in self._splits:
            raise ValueError(f"The {split!r} split of {self.name!r} is empty. Received: split={split!r}")
        ds = self._splits[split].dataset
        target = self.image_shape if image_shape is None else _check_image_shape(image_shape)
        if target != self.image_shape:
            logger.info("%s %s: adapting images from %s to %s.", self.name, split, self.image_shape, target)
            ds = ds.map(lambda x, y: (adapt(x, target), y), num_parallel_calls=_AUTOTUNE)
        return ds


def load_data(spec, *, val_fraction=0.1, test_fraction=0.2, seed=0, data_dir=None, image_size=None,
              color_mode=None, class_names=None, skip_bad_images=False) -> ImageData:
    """Load ``spec`` (see the module docstring) as an ``ImageData``.

    ``image_size`` (H, W) or an int and ``color_mode`` ("rgb"/"grayscale") fix the stored image shape;
    by default it is the source's own (for folders: the most common size and rgb if any image is color,
    palette images included, read from the headers of up to 256 sampled files). ``class_names`` names the labels
    of an (x, y) spec.
    ``skip_bad_images``: folders only, leave out the files that cannot be decoded (see the module docstring)
    rather than fail on the first whose header is bad; it decodes every image once while loading.
    tfds carves from the start of train: its records were shuffled when the data set was prepared.
    """
    for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
            raise ValueError(f"{arg} must be a number in [0, 1). Received: {arg}={value!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction + test_fraction must be below 1, leaving images to train on. "
                         f"Received: val_fraction={val_fraction}, test_fraction={test_fraction}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if image_size is not None and not (isinstance(image_size, (tuple, list)) and len(image_size) == 2
                                       and _positive_ints(image_size)):
        raise ValueError(f"image_size must be (height, width) or an int. Received: image_size={image_size!r}")
    if color_mode not in (None, "rgb", "grayscale"):
        raise ValueError(f"color_mode must be 'rgb', 'grayscale' or None. Received: color_mode={color_mode!r}")
    if class_names is not None and not isinstance(spec, tuple):
        raise ValueError(f"class_names is only used with an (x, y) spec. Received: class_names={class_names!r}")
    options = dict(fractions=(val_fraction, test_fraction), seed=seed, image_size=image_size,
                   channels={None: None, "rgb": 3, "grayscale": 1}[color_mode])
    if isinstance(spec, tuple) and len(spec) == 2:
        return _from_arrays("arrays", *spec, class_names=class_names, **options)
    scheme, _, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    data = None
    if scheme == "digits" and not rest:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.images.astype(np.float32) * (255.0 / 16.0)
        data = _from_arrays("digits", x, digits.target, class_names=[str(d) for d in range(10)], **options)
    elif scheme == "tfds" and rest:
        data = _from_tfds(spec, rest, data_dir, **options)
    elif scheme == "folder" and rest:
        data = _from_folder(spec, rest, skip_bad_images=skip_bad_images, **options)
    if data is not None:
        data.spec = spec  # the string that loads this data again (None for arrays)
        return data
    shown = repr(spec) if isinstance(spec, str) else f"<{type(spec).__name__}>"
    raise ValueError(f"Unknown data spec, expected {_SPEC_HELP}. Received: spec={shown}")


def _from_arrays(name, x, y, *, class_names, fractions, seed, image_size, channels):
    """(x, y) numpy arrays -> ImageData, after checking shapes, labels and the pixel range."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"x must be non-empty with shape (N, H, W) or (N, H, W, C), C 1 or 3. "
                         f"Received: x.shape={np.shape(x)}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must hold one label per image in x. Received: x.shape={x.shape}, y.shape={y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels. Received: y.dtype={y.dtype}")
    if y.min() < 0:
        raise ValueError(f"labels must be >= 0. Received: min(y)={y.min()}")
    class_names = list(class_names) if class_names is not None else [str(c) for c in range(y.max() + 1)]
    if y.max() >= len(class_names):
        raise ValueError(f"label {y.max()} is out of range for {len(class_names)} class_names. "
                         f"Received: max(y)={y.max()}")
    if len(class_names) < 2:
        raise ValueError(f"Need at least 2 classes. Received: class_names={class_names}")
    low, high = x.min(), x.max()
    if not (low >= 0 and high <= 255):
        raise ValueError(f"x must hold raw pixel values in [0, 255]. Received: x in [{low}, {high}]")
    if x.dtype != np.uint8 and high <= 1:
        logger.warning("%s: x is within [0, 1]; keras_cnn expects raw pixel values in [0, 255].", name)
    x = x if x.dtype == np.uint8 else x.astype(np.float32)
    shape = _stored_shape(x.shape[1:3], x.shape[3], image_size, channels)
    if shape != x.shape[1:]:
        x = adapt(tf.constant(x), shape).numpy()
    y = y.astype(np.int32)
    parts = _stratified_indices(y, *fractions, seed)
    splits = {s: _memory_split(x[idx], y[idx]) for s, idx in parts.items() if len(idx)}
    return ImageData(name, class_names, shape, seed, splits)


def _memory_split(x, y) -> _Split:
    return _Split(tf.data.Dataset.from_tensor_slices((x, y)), len(y), lambda: y)


def _from_tfds(spec, rest, data_dir, *, fractions, seed, image_size, channels):
    """A tfds data set -> ImageData, downloaded and prepared first where the network allows."""
    import tensorflow_datasets as tfds  # imported here: only this source needs it

    from keras_cnn.data import tfds_source

    builder = tfds_source.builder(spec, data_dir)
    full_name = rest.replace(":", "/", 1)
    info = builder.info
    keys = info.supervised_keys
    if not (keys and len(keys) == 2 and all(isinstance(k, str) for k in keys)
            and isinstance(info.features[keys[0]], tfds.features.Image)
            and isinstance(info.features[keys[1]], tfds.features.ClassLabel)):
        raise ValueError(f"tfds dataset {full_name!r} is not an image-classification dataset "
                         f"(supervised keys {keys}). Received: spec={spec!r}")
    image_key, label_key = keys
    height, width, native_channels = info.features[image_key].shape
    if image_size is None and None in (height, width):
        raise ValueError(f"tfds dataset {full_name!r} has images of varying size; pass image_size=(H, W). "
                         "Received: image_size=None")
    shape = _stored_shape((height, width), native_channels or 3, image_size, channels)
    available = set(info.splits.keys())
    if "train" not in available:
        raise ValueError(f"tfds dataset {full_name!r} has no 'train' split ({sorted(available)}). "
                         f"Received: spec={spec!r}")
    total = info.splits["train"].num_examples
    n_val = 0 if "validation" in available else round(total * fractions[0])
    n_test = 0 if "test" in available else round(total * fractions[1])
    split_names = {"train": f"train[{n_val + n_test}:]",
                   "val": "validation" if "validation" in available else f"train[:{n_val}]",
                   "test": "test" if "test" in available else f"train[{n_val}:{n_val + n_test}]"}

    def read_labels(tfds_split):
        ds = builder.as_dataset(split=tfds_split, as_supervised=True,
                                decoders={image_key: tfds.decode.SkipDecoding()})
        return np.concatenate([y for _, y in ds.batch(4096).as_numpy_iterator()]).astype(np.int32)

    splits = {}
    for split, tfds_split in split_names.items():
        if info.splits[tfds_split].num_examples == 0:
            continue
        ds = builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)
        ds = ds.map(lambda x, y: (adapt(x, shape), tf.cast(y, tf.int32)), num_parallel_calls=_AUTOTUNE)
        splits[split] = _Split(ds, int(ds.cardinality()), lambda s=tfds_split: read_labels(s))
    return ImageData(builder.name, list(info.features[label_key].names), shape, seed, splits)


def _from_folder(spec, path, *, fractions, seed, image_size, channels, skip_bad_images):
    """A folder of class sub-folders (optionally under train/val/test) -> ImageData decoded by tf.data."""
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder not found: {root}. Received: spec={spec!r}")
    if os.path.isdir(os.path.join(root, "train")):
        pools = {s: os.path.join(root, s) for s in SPLITS if os.path.isdir(os.path.join(root, s))}
    else:
        pools = {"train": root}
    class_names = sorted(e.name for e in os.scandir(pools["train"]) if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise ValueError(f"No class sub-folders in {pools['train']}: expected PATH/<class>/* or "
                         f"PATH/train/<class>/*. Received: spec={spec!r}")
    if len(class_names) < 2:
        raise ValueError(f"Need at least 2 classes, found only {class_names[0]!r} in {pools['train']}. "
                         f"Received: spec={spec!r}")
    listed = {s: image_files.list_images(folder, class_names) for s, folder in pools.items()}
    skipped = [f for _, _, extra in listed.values() for f in extra]
    if skipped:
        logger.warning("%s: skipped %d files without an image extension %s (e.g. %s).",
                       os.path.basename(root), len(skipped), IMAGE_EXTENSIONS, skipped[0])
    all_files = [f for files, _, _ in listed.values() for f in files]
    bad = image_files.undecodable(all_files) if skip_bad_images else image_files.check_headers(all_files)
    if bad:
        listed = {s: image_files.without(set(bad), *entry) for s, entry in listed.items()}
        all_files = [f for files, _, _ in listed.values() for f in files]
    if not all_files:
        raise ValueError(f"none of the {len(bad):,} images in {root} could be decoded. Received: spec={spec!r}")
    common_size, any_color = image_files.sample_headers(all_files, seed)
    shape = _stored_shape(common_size, 3 if any_color else 1, image_size, channels)

    rng = np.random.default_rng(seed)
    train_files, train_labels, _ = listed["train"]
    carve = _stratified_indices(train_labels, 0 if "val" in pools else fractions[0],
                                0 if "test" in pools else fractions[1], seed)
    splits = {}
    for split in SPLITS:
        if split in pools and split != "train":
            files, labels, _ = listed[split]
            order = rng.permutation(len(files))
        else:
            files, labels, order = train_files, train_labels, carve[split]
        if len(order):
            splits[split] = _file_split(np.asarray(files)[order], np.asarray(labels, np.int32)[order], shape)
    data = ImageData(os.path.basename(root), class_names, shape, seed, splits)
    data.skipped = bad or []
    return data


def _file_split(files, labels, shape) -> _Split:
    """Decode + resize + color-convert in tf.data; undecodable bodies are dropped with a TF warning."""

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return adapt(image, shape), label

    ds = tf.data.Dataset.from_tensor_slices((files, labels)).map(decode, num_parallel_calls=_AUTOTUNE)
    return _Split(ds.ignore_errors(log_warning=True), len(files), lambda: labels)


def _stratified_indices(labels, val_fraction, test_fraction, seed):
    """Per-class split of ``range(len(labels))`` into {"train", "val", "test"} index arrays, each shuffled."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = round(len(idx) * val_fraction), round(len(idx) * test_fraction)
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {s: rng.permutation(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def read_image(image, shape):
    """An image file (or numpy image) as float32 (H, W, C) in [0, 255], adapted to ``shape`` as in training."""
    if isinstance(image, np.ndarray):
        array = image[..., np.newaxis] if image.ndim == 2 else image
        if array.ndim != 3 or array.shape[-1] not in (1, 3):
            raise ValueError(f"a numpy image must be (H, W) or (H, W, C) with 1 or 3 channels. "
                             f"Received: image.shape={image.shape}")
        return adapt(tf.constant(array, tf.float32), shape).numpy()
    path = str(image)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    if image_header(path) is None:
        raise ValueError(f"{path}: not a readable image ({', '.join(IMAGE_EXTENSIONS)})")
    try:
        decoded = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        raise ValueError(f"{path}: not a readable image ({', '.join(IMAGE_EXTENSIONS)})") from error
    return tf.cast(adapt(decoded, shape), tf.float32).numpy()


def _stored_shape(native_size, native_channels, image_size, channels):
    return (*(image_size or native_size), channels or native_channels)


def _check_image_shape(image_shape):
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else ()
    if not (len(shape) == 3 and _positive_ints(shape) and shape[2] in (1, 3)):
        raise ValueError(f"image_shape must be (height, width, channels) with 1 or 3 channels. "
                         f"Received: image_shape={image_shape!r}")
    return shape


def _positive_ints(values):
    return all(isinstance(v, (int, np.integer)) and v >= 1 for v in values)


def adapt(image, shape):
    """Convert gray<->RGB and resize an image (or batch) to ``shape``, keeping [0, 255] and the dtype."""
    height, width, channels = shape
    if image.shape[-1] != channels:
        image = tf.image.grayscale_to_rgb(image) if channels == 3 else tf.image.rgb_to_grayscale(image)
    if tuple(image.shape[-3:-1]) != (height, width):
        resized = tf.clip_by_value(tf.image.resize(image, (height, width), antialias=True), 0.0, 255.0)
        image = tf.cast(tf.round(resized), tf.uint8) if image.dtype == tf.uint8 else resized
    return image
