"""Run a trained or exported model on image files: `predict(artifact, images, top=3)`.

The artifact (a run folder or `model.keras`, a SavedModel folder, a `.tflite` file, a `.onnx` file) is loaded
by `keras_cnn.artifacts.artifact.load_artifact`, the loader `keras_cnn.exporting.pipeline` verifies every
artifact through, so what the export report measures is what `predict` and the CLI run. `load_artifact`,
`keras_artifact`, `sidecar_path` and `SIGNATURE` are importable from here too.

Image files get the training pipeline's handling (`keras_cnn.data.loading`): decoded
by TensorFlow as RGB, converted to grayscale when the model takes one channel,
resized with `tf.image.resize` (antialiased) to the model's H, W and rounded
back to 8 bits. A missing or undecodable file becomes a one-line error in that
image's result; the other images are still predicted.
"""
import dataclasses
import os

import numpy as np

from keras_cnn.artifacts.artifact import SIGNATURE, keras_artifact, sidecar_path  # noqa: F401  loaders, by name
from keras_cnn.artifacts.artifact import WARMUP, Artifact, load_artifact
from keras_cnn.models import options
from keras_cnn.utils.timing import median_seconds


@dataclasses.dataclass
class Prediction:
    """The top-k (label, probability) pairs for one image, or the one-line error (naming it) that stopped it."""

    image: str
    top: list
    error: str = None

    def __str__(self):
        if self.error:
            return f"error: {self.error}"
        return f"{self.image}: " + ", ".join(f"{label} {probability:.3f}" for label, probability in self.top)




def predict(artifact, images, top=3, client=None):
    """Top-`top` (label, probability) per image, as a list of `Prediction` in the order given.

    `artifact` is a run folder (or the `Run` `keras_cnn.train` returns, or a shipped checkpoint "model:dataset"),
    a `.keras` file, a SavedModel folder, a `.tflite` or `.onnx` file (or an `Artifact` from `load_artifact`);
    `images` is one path or a list of paths and/or numpy images in [0, 255]. Bad images are reported in their
    `Prediction.error`; nothing is raised for them.
    `client="mediapipe"` classifies a `.tflite` file with MediaPipe Tasks' `ImageClassifier` instead of
    LiteRT, reading the normalization and class names from the file's metadata alone (images are decoded
    and resized as for the other paths, then handed over as RGB frames).
    """
    from keras_cnn.data.loading import read_image

    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be a positive integer. Received: top={top!r}")
    if client not in options.CLIENTS:
        raise ValueError(f"client must be 'mediapipe' or None. Received: client={client!r}")
    if client:
        from keras_cnn.artifacts import mobile_client

        loaded = mobile_client.artifact(artifact)
    else:
        loaded = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    images = [images] if isinstance(images, (str, os.PathLike, np.ndarray)) else list(images)
    names = [str(image) if not isinstance(image, np.ndarray) else f"<array {i}>" for i, image in enumerate(images)]
    results, batch, positions = [], [], []
    for i, (name, image) in enumerate(zip(names, images)):
        try:
            batch.append(read_image(image, loaded.input_shape))
            positions.append(i)
            results.append(None)
        except ValueError as error:
            results.append(Prediction(name, [], str(error)))
    if batch:
        probabilities = loaded.probabilities(np.stack(batch))
        for i, row in zip(positions, probabilities):
            best = np.argsort(-row, kind="stable")[:top]
            results[i] = Prediction(names[i], [(loaded.class_names[k], float(row[k])) for k in best])
    return results


def latency_ms(artifact, image, runs):
    """Median wall time in ms of `runs` batch-1 calls of `artifact` on one image, after a warm-up
    (`Artifact.latency_ms`)."""
    return artifact.latency_ms(image, runs)


def median_ms(call, runs):
    """Median wall time in ms of `runs` calls of `call()`, after a few warm-up calls."""
    return median_seconds(call, runs, warmup=WARMUP) * 1000
