"""CIFAR-10-C-style corruptions at 5 severities, seeded, and the accuracy of a model under each of them.

The corruptions and their strengths are those of CIFAR-10-C (Hendrycks and Dietterich, 2019,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"), made here offline from
any RGB test split instead of downloaded: Gaussian noise, shot (Poisson) noise, Gaussian blur, defocus
blur, brightness, contrast, JPEG re-compression and pixelation. Blur widths are CIFAR-10-C's for 32-pixel
images and grow in proportion for larger ones. Each corrupted image is rounded to whole pixel values, as a
saved 8-bit photo would be, and keeps the input's shape and dtype. Noise is drawn from `seed` only, so
the same seed gives the same images.

Image operations are TensorFlow's, Keras's and Pillow's; the only hand-made piece is the disk-shaped
kernel of the defocus blur, which none of them provides. Distances from the clean image grow with the
severity for photographs (mixed spatial frequencies); pixelation of a pattern of one frequency can alias
less at a stronger severity.
"""
import dataclasses
import io
import time

import numpy as np

from keras_cnn.utils.progress import Progress

CORRUPTIONS = ("gaussian_noise", "shot_noise", "gaussian_blur", "defocus_blur", "brightness", "contrast",
               "jpeg", "pixelate")
SEVERITIES = (1, 2, 3, 4, 5)
# CIFAR-10-C's parameter per severity 1..5
_PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation, image in [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit of intensity
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels (32-pixel images)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # disk radius, then sigma
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # distance from each channel's mean kept
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side of the coarse image / side of the image
}
_CHUNK = 1000  # images corrupted and predicted at a time


def corrupt(images, corruption, severity, seed=0):
    """`images` (N, H, W, 3) or (H, W, 3) in [0, 255], corrupted by `corruption` at `severity` 1-5."""
    check(corruption, severity)
    array = np.asarray(images)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        channels = array.shape[-1] if array.ndim in (3, 4) else None
        raise ValueError(f"corruptions need RGB images of shape (N, H, W, 3) or (H, W, 3); gray images have no "
                         f"colour to shift or compress as CIFAR-10-C does. Received: channels={channels} "
                         f"(images.shape={array.shape})")
    batch = array.reshape((-1, *array.shape[-3:])).astype(np.float32) / 255.0
    parameter = _PARAMETERS[corruption][severity - 1]
    corrupted = _FUNCTIONS[corruption](batch, parameter, np.random.default_rng(seed))
    result = np.round(np.clip(np.asarray(corrupted, dtype=np.float32), 0.0, 1.0) * 255.0)
    return result.reshape(array.shape).astype(array.dtype)


def check(corruption, severity):
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption; choose from {', '.join(CORRUPTIONS)}. "
                         f"Received: corruption={corruption!r}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5. Received: severity={severity!r}")


def _gaussian_noise(x, sigma, rng):
    return x + rng.normal(scale=sigma, size=x.shape)


def _shot_noise(x, photons, rng):
    return rng.poisson(x * photons) / photons


def _blur(x, sigma):
    """keras.ops.image.gaussian_blur on a reflect-padded batch (its own padding is zeros: dark borders)."""
    import keras
    import tensorflow as tf

    sigma = sigma * min(x.shape[1:3]) / 32
    radius = max(1, int(np.ceil(3 * sigma)))
    padded = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    blurred = keras.ops.image.gaussian_blur(padded, (2 * radius + 1,) * 2, (sigma, sigma), "channels_last")
    return np.asarray(blurred)[:, radius:-radius, radius:-radius]


def _gaussian_blur(x, sigma, rng):
    return _blur(x, sigma)


def _defocus_blur(x, parameter, rng):
    """The average over a disk (a lens out of focus), then a slight Gaussian blur, as CIFAR-10-C."""
    import tensorflow as tf

    radius, sigma = parameter
    radius *= min(x.shape[1:3]) / 32
    reach = int(np.ceil(radius))
    offsets = np.arange(-reach, reach + 1)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.float32)
    kernel = np.repeat((disk / disk.sum())[:, :, None, None], x.shape[-1], axis=2)
    if reach:
        x = tf.pad(x, [[0, 0], [reach, reach], [reach, reach], [0, 0]], mode="REFLECT")
        x = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID").numpy()
    return _blur(x, sigma)


def _brightness(x, delta, rng):
    import tensorflow as tf

    hsv = tf.image.rgb_to_hsv(x)
    value = tf.clip_by_value(hsv[..., 2:] + delta, 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.concat([hsv[..., :2], value], axis=-1)).numpy()


def _contrast(x, factor, rng):
    import tensorflow as tf

    return tf.image.adjust_contrast(x, factor).numpy()


def _jpeg(x, quality, rng):
    from PIL import Image

    def recompress(image):
        buffer = io.BytesIO()
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer), dtype=np.float32) / 255.0

    return np.stack([recompress(image) for image in x])


def _pixelate(x, factor, rng):
    """Down to `factor` of the size and up again with Pillow's BOX filter, as CIFAR-10-C."""
    from PIL import Image

    height, width = x.shape[1:3]
    coarse = (max(1, int(width * factor)), max(1, int(height * factor)))

    def pixelate(image):
        small = Image.fromarray(np.round(image * 255).astype(np.uint8)).resize(coarse, Image.Resampling.BOX)
        return np.asarray(small.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255.0

    return np.stack([pixelate(image) for image in x])


_FUNCTIONS = {"gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "gaussian_blur": _gaussian_blur,
              "defocus_blur": _defocus_blur, "brightness": _brightness, "contrast": _contrast, "jpeg": _jpeg,
              "pixelate": _pixelate}


@dataclasses.dataclass
class Robustness:
    """Accuracy (%) on clean and corrupted images; `to_dict()` is what metrics.json holds."""

    artifact: str
    num_examples: int
    clean_accuracy_pct: float
    accuracy_pct: dict  # corruption -> [accuracy at severity 1, ..., 5]
    mean_corruption_accuracy_pct: float
    seed: int
    seconds: float

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        severities = len(next(iter(self.accuracy_pct.values())))
        lines = [f"{self.artifact}: {self.num_examples} images, clean accuracy {self.clean_accuracy_pct:.2f}%, "
                 f"mean corruption accuracy {self.mean_corruption_accuracy_pct:.2f}% ({self.seconds:.0f} s)", "",
                 f"{'corruption':<16}" + "".join(f"{f'sev {s}':>8}" for s in range(1, severities + 1)) + f"{'mean':>8}"]
        for name, row in self.accuracy_pct.items():
            lines.append(f"{name:<16}" + "".join(f"{a:>8.2f}" for a in row) + f"{np.mean(row):>8.2f}")
        return "\n".join(lines)


def robustness(artifact, x, y, corruptions=CORRUPTIONS, severities=SEVERITIES, seed=0):
    """Accuracy of a `keras_cnn.artifacts.prediction.Artifact` on `x` (float32 [0, 255]) under each corruption and
    severity; images are corrupted and predicted `_CHUNK` at a time, each chunk seeded by (seed, start)."""
    for corruption in corruptions:
        for severity in severities:
            check(corruption, severity)
    if x.shape[-1] != 3:
        corrupt(x[:1], corruptions[0], severities[0])  # the one-line error about gray images
    start_time = time.perf_counter()
    progress = Progress(1 + len(corruptions) * len(severities), f"corruptions: {len(x)} images")
    clean = _accuracy(artifact, x, y, lambda chunk, start: chunk)
    progress.step("clean")
    table = {}
    for name in corruptions:
        table[name] = []
        for s in severities:
            table[name].append(_accuracy(artifact, x, y, lambda chunk, start: corrupt(chunk, name, s, (seed, start))))
            progress.step(f"{name} {s}")
    mean = float(np.mean([a for row in table.values() for a in row]))
    return Robustness(str(artifact.path), int(len(x)), clean, table, round(mean, 3), seed,
                      round(time.perf_counter() - start_time, 1))


def _accuracy(artifact, x, y, transform):
    correct = sum(int(np.sum(artifact.probabilities(transform(x[i:i + _CHUNK], i)).argmax(1) == y[i:i + _CHUNK]))
                  for i in range(0, len(x), _CHUNK))
    return round(100.0 * correct / len(x), 3)
