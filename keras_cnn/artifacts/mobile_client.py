"""MediaPipe Tasks' `ImageClassifier`: the standard on-device client, run here on the CPU through its Python API.

The export loads every `.tflite` with it, from the file alone, to prove that an app needs nothing else
(`keras_cnn.exporting.pipeline`); `keras-cnn predict FILE.tflite IMAGE --client mediapipe` classifies with it.
"""
import os

import numpy as np

from keras_cnn.artifacts import metadata as tflite_metadata
from keras_cnn.utils.io import LABELS_FILE, first_line

NAME = "mediapipe"
INPUT_TYPES = ("uint8", "float32")  # what ImageClassifier accepts as the model's input tensor


def version():
    from importlib.metadata import version as installed

    return f"{NAME} {installed(NAME)}"


class Classifier:
    """MediaPipe's `ImageClassifier` on one `.tflite` file, which must carry image-classifier metadata."""

    def __init__(self, path):
        tflite_metadata.mediapipe_modules()  # MediaPipe is installed, and its metadata module importable
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core import base_options

        options = vision.ImageClassifierOptions(base_options=base_options.BaseOptions(model_asset_path=str(path)))
        try:
            self._classifier = vision.ImageClassifier.create_from_options(options)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"MediaPipe's ImageClassifier cannot load {path}: {first_line(error)}. "
                             f"Received: artifact={str(path)!r}") from error
        self.path = str(path)

    def classify(self, image):
        """[(category name, score, index)] for one RGB (H, W, 3) image in [0, 255], best first, every class."""
        import mediapipe as mp

        pixels = np.ascontiguousarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
        if pixels.shape[-1] == 1:
            pixels = np.ascontiguousarray(np.repeat(pixels, 3, axis=-1))
        result = self._classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
        return [(category.category_name, category.score, category.index)
                for category in result.classifications[0].categories]

    def top1(self, images):
        """(indices, names) of the best class of each image."""
        best = [self.classify(image)[0] for image in images]
        return np.array([index for _, _, index in best]), [name for name, _, _ in best]

    def close(self):
        self._classifier.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check(path, images, expected, class_names, input_dtype):
    """The report's `client` cell for one `.tflite`: MediaPipe's top-1 agreement (%) with `expected` (our LiteRT
    top-1 on the same uint8 images) and whether its category names are `class_names`."""
    if not tflite_metadata.available():
        return {"client": NAME, "status": "not installed (pip install -e \".[mobile]\")"}
    if input_dtype not in INPUT_TYPES:
        return {"client": version(), "status": f"not loadable: {input_dtype} input (MediaPipe takes uint8 or float32)"}
    with Classifier(path) as classifier:
        indices, names = classifier.top1(images)
    agreement = round(float(np.mean(indices == expected) * 100), 3)
    names_match = all(name == class_names[index] for name, index in zip(names, indices))
    return {"client": version(), "status": "ok", "agreement_pct": agreement, "names_match": names_match}



def artifact(path):
    """A `.tflite` file as a `keras_cnn.artifacts.prediction.Artifact` that classifies through MediaPipe, with the class
    names packed in the file: what `predict(..., client="mediapipe")` runs."""
    from keras_cnn.artifacts.artifact import Artifact, interpreter

    path = str(path)
    received = f"Received: artifact={path!r}"
    if not path.endswith(".tflite") or not os.path.isfile(path):
        raise ValueError(f"the MediaPipe client runs .tflite files: {path} is not one. {received}")
    with open(path, "rb") as handle:
        metadata, files = tflite_metadata.read_metadata(handle.read())
    labels = files.get(LABELS_FILE)
    if metadata is None or labels is None:
        raise ValueError(f"{path} has no image-classifier metadata with packed labels, which MediaPipe needs; "
                         f"export it again with `keras-cnn export` (it writes the metadata). {received}")
    class_names = labels.decode("utf-8").splitlines()
    runtime = interpreter(path)
    _, height, width, channels = runtime.get_input_details()[0]["shape"]
    outputs = int(runtime.get_output_details()[0]["shape"][-1])
    if len(class_names) != outputs:
        raise ValueError(f"{path}'s metadata packs {len(class_names)} labels for a model of {outputs} outputs: it "
                         f"was written for another model; export it again. {received}")
    classifier = Classifier(path)

    def run(images):
        scores = np.zeros((len(images), len(class_names)), np.float32)
        for row, image in zip(scores, images):
            for _, score, index in classifier.classify(image):
                row[index] = score
        return scores

    return Artifact(path, NAME, (int(height), int(width), int(channels)), class_names, run)
