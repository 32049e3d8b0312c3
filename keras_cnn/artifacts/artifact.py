"""A loaded model in its own runtime (`Artifact`), and the LiteRT interpreter that runs TFLite files.

Shared by `keras_cnn.artifacts.prediction` (one loader per kind of file) and `keras_cnn.artifacts.mobile_client` (MediaPipe).
"""
import dataclasses
from typing import Callable

import numpy as np

_BATCH = 256  # images per runtime call when predicting many at once


@dataclasses.dataclass
class Artifact:
    """A loaded model in its own runtime: float32 (N, H, W, C) images in [0, 255] -> probabilities."""

    path: str
    kind: str  # "keras", "saved_model", "tflite" or "onnx"
    input_shape: tuple  # (H, W, C)
    class_names: list
    run: Callable = dataclasses.field(repr=False)  # one batch -> raw outputs, dequantized
    tensors: dict = dataclasses.field(default_factory=dict)  # {"input"/"output": name, shape, dtype, quantization}

    def probabilities(self, images):
        """Class probabilities for a float32 batch, in chunks; one sigmoid unit becomes [1 - p, p]."""
        images = np.asarray(images, dtype=np.float32)
        outputs = np.concatenate([self.run(images[i:i + _BATCH]) for i in range(0, len(images), _BATCH)])
        return np.concatenate([1.0 - outputs, outputs], axis=1) if outputs.shape[1] == 1 else outputs


def interpreter(model_path=None, model_content=None):
    """The LiteRT interpreter (`ai_edge_litert`), or TensorFlow's deprecated one when LiteRT is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    return Interpreter(model_path=model_path, model_content=model_content)
