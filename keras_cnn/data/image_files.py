"""Image files: a folder data set's listing and the size of a JPEG, PNG, GIF or BMP file from its first bytes.

Headers are read for every file of a folder data set when it is listed and for every image `predict` is given,
so that a file that is not an image, is cut short, or would decode to more than `MAX_IMAGE_PIXELS` pixels (a
decompression bomb) is refused with one line before TensorFlow decodes anything. `undecodable` goes further
for `load_data(skip_bad_images=True)`: it decodes every file once, as training would, and names those that fail.
"""
import collections
import os
import struct

import numpy as np

from keras_cnn.utils.io import first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MAX_IMAGE_PIXELS = 8192 * 8192  # 64 megapixels (200 MB decoded as RGB): larger images are refused


def image_header(path):
    """(height, width) from the header of a JPEG/PNG/BMP/GIF file; None if it is none of them or the header is
    cut short. Raises ValueError naming the file if it has more than ``MAX_IMAGE_PIXELS`` pixels."""
    with open(path, "rb") as handle:
        head = handle.read(26)
        if head.startswith(b"\xff\xd8\xff"):
            size = _jpeg_size(handle)
        elif head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
            size = struct.unpack(">II", head[16:24])[::-1]
        elif head.startswith((b"GIF87a", b"GIF89a")) and len(head) >= 10:
            size = struct.unpack("<HH", head[6:10])[::-1]
        elif head.startswith(b"BM") and len(head) >= 26:
            os2 = head[14:18] == b"\x0c\0\0\0"  # OS/2 headers (12 bytes long) have 16-bit sizes
            width, height = struct.unpack("<HH", head[18:22]) if os2 else struct.unpack("<ii", head[18:26])
            size = (abs(height), width)  # a negative height means top-down rows
        else:
            return None
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ValueError(f"{path} has {size[1]}x{size[0]} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
                         "(a guard against decompression bombs); downscale or remove it.")
    return size


def _jpeg_size(handle):
    """(height, width) from the first start-of-frame marker of a JPEG, or None if the file ends first."""
    handle.seek(2)
    while True:
        marker = handle.read(4)  # 0xFF, the marker type, a 2-byte segment length
        if len(marker) < 4 or marker[0] != 0xFF:
            return None
        if marker[1] == 0xFF:  # fill byte before a marker
            handle.seek(-3, os.SEEK_CUR)
        elif 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):  # SOF0-15 but DHT, JPG, DAC
            frame = handle.read(5)  # precision, height, width
            return struct.unpack(">HH", frame[1:]) if len(frame) == 5 else None
        else:
            length = struct.unpack(">H", marker[2:])[0]  # counts its own 2 bytes
            if length < 2:
                return None
            handle.seek(length - 2, os.SEEK_CUR)


def list_images(folder, class_names):
    """(image paths, labels, skipped non-image paths) for ``folder/<class>/*``, checking every class folder."""
    files, labels, skipped = [], [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if entry.name not in class_names:
            raise ValueError(f"{entry.path} is not one of the train classes {class_names}.")
        names = sorted(e.name for e in os.scandir(entry.path) if e.is_file())
        images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not images:
            raise ValueError(f"Class folder {entry.path} has no images {IMAGE_EXTENSIONS}.")
        files += [os.path.join(entry.path, n) for n in images]
        labels += [class_names.index(entry.name)] * len(images)
        skipped += [os.path.join(entry.path, n) for n in names if not n.lower().endswith(IMAGE_EXTENSIONS)]
    return files, labels, skipped


def without(bad, files, labels, extra):
    """A `list_images` entry without the files in the set `bad`."""
    kept = [(file, label) for file, label in zip(files, labels) if file not in bad]
    return [file for file, _ in kept], [label for _, label in kept], extra


def check_headers(files):
    """Raise a one-line ValueError naming the first of `files` that is not a JPEG/PNG/BMP/GIF image, has a header
    cut short, or has more than ``MAX_IMAGE_PIXELS`` pixels. Reads a few bytes per file: about 2 s for 60,000."""
    for file in files:
        if image_header(file) is None:
            raise ValueError(f"{file} is not a JPEG/PNG/BMP/GIF image or its header is cut short; remove or replace "
                             "it, or skip such files with skip_bad_images=True (--skip-bad-images). "
                             "Received: skip_bad_images=False")


def undecodable(files):
    """The files of `files` that training could not decode, in their order: unreadable, not an image, a header
    or pixel data cut short, or pixels TensorFlow's decoder refuses. A file over ``MAX_IMAGE_PIXELS`` pixels
    still raises (it is not damaged, and decoding it is what the limit prevents).

    Every file with a sound header is decoded once in tf.data, with the decoder and settings of training.
    tf.data's `ignore_errors` drops the files whose decoding fails but does not say which, so the paths that
    come through are compared with those that went in: that gives the exact list."""
    import tensorflow as tf

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return path, tf.shape(image)  # the shape needs the pixels: the decoder runs

    headed = tf.constant([file for file in files if _has_header(file)], tf.string)
    decoded = tf.data.Dataset.from_tensor_slices(headed).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    good = {os.fsdecode(path) for path, _ in decoded.ignore_errors().as_numpy_iterator()}
    return [file for file in files if file not in good]


def _has_header(file):
    try:
        return image_header(file) is not None
    except OSError:  # unreadable: no permission, a dangling link
        return False


def sample_headers(files, seed, sample=256):
    """(most common (H, W), whether any image is color) from the headers of up to `sample` of `files`, drawn
    with `seed`."""
    from PIL import Image

    chosen = sorted(np.random.default_rng(seed).permutation(len(files))[:sample])
    sizes, any_color = collections.Counter(), False
    for i in chosen:
        try:
            with Image.open(files[i]) as image:  # reads the header only
                sizes[image.size[::-1]] += 1
                any_color |= image.mode not in ("1", "L", "LA", "I", "I;16", "F")
        except OSError as err:
            raise ValueError(f"{files[i]} is not a readable image: {first_line(err)}; remove or replace it.") from err
    return sizes.most_common(1)[0][0], any_color
