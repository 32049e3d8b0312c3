"""Initialisers of airbench's recipe: identity (Dirac) convolutions and the data-dependent whitening stem.

`Dirac` starts a convolution as the identity on its first `min(in, out)` channels, as PyTorch's
`torch.nn.init.dirac_` on airbench's convolutions: a deep stack then starts close to the identity map and
trains from the first step at high learning rates. The other filters keep the base initialiser's values
(airbench: PyTorch's default, uniform in +-1 / sqrt(fan_in)).

`whitening_filters` computes airbench's frozen stem from the training images: the covariance of their 2x2
patches, its eigenvectors scaled by 1 / sqrt(eigenvalue + eps), each filter once with each sign (so a
following ReLU or GELU keeps both halves of every component). On patches of the images it was computed from,
the first half of its outputs have covariance diag(eigenvalue / (eigenvalue + eps)): about the identity for
every component above the noise floor `eps`. Unlike airbench, which normalises the images first and then
takes the uncentred second moment, the patches here are centred and the offset that centres them is the
filters' bias, so the stem takes the model's [0, 1] pixels directly.
"""
import keras
import numpy as np

# airbench's eps on images normalised to unit variance; here it is scaled by the pixels' own variance.
WHITENING_EPS = 5e-4
WHITENING_IMAGES = 5000  # airbench whitens with the first 5,000 training images


@keras.saving.register_keras_serializable(package="keras_cnn")
class Dirac(keras.initializers.Initializer):
    """A conv kernel (kh, kw, in, out) whose first min(in, out) filters are the identity (a 1 at the centre
    tap of their own channel), the rest drawn from `base` (default PyTorch's conv initialiser)."""

    def __init__(self, base=None, seed=None):
        self.base = base or {"class_name": "VarianceScaling", "config": {
            "scale": 1 / 3, "mode": "fan_in", "distribution": "uniform", "seed": seed}}
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kernel = keras.ops.convert_to_numpy(keras.initializers.get(self.base)(shape, dtype="float32"))
        height, width, inputs, outputs = shape
        identity = min(inputs, outputs)
        kernel[..., :identity] = 0.0
        kernel[height // 2, width // 2, np.arange(identity), np.arange(identity)] = 1.0
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {"base": self.base, "seed": self.seed}


def patches(images, size=2):
    """Every size x size patch of `images` (N, H, W, C) as rows of length size * size * C, in the order of a
    Keras kernel's (kh, kw, C) axes."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))  # N, H', W', C, kh, kw
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * images.shape[-1])


def whitening_filters(images, size=2, eps=WHITENING_EPS):
    """(kernel (size, size, C, 2 * size * size * C), bias) of a valid `size` x `size` convolution that whitens
    the patches of `images` (N, H, W, C; float, the scale the layer sees): eigenvectors of the patch covariance
    in decreasing order of eigenvalue, scaled by 1 / sqrt(eigenvalue + eps * pixel variance), then the same
    filters negated; the bias centres the patches."""
    rows = patches(np.asarray(images, dtype=np.float64), size)
    mean = rows.mean(axis=0)
    centred = rows - mean
    covariance = centred.T @ centred / len(rows)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    floor = eps * float(np.mean(np.diag(covariance)))
    filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + floor)
    filters = np.concatenate([filters, -filters], axis=1)
    kernel = filters.reshape(size, size, images.shape[-1], -1)
    return kernel.astype(np.float32), (-mean @ filters).astype(np.float32)
