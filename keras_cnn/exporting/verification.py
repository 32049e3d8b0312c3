"""How `keras_cnn.exporting.pipeline` checks each artifact before anything is installed: every artifact measured on the
same held-out images against the float32 rebuild (size, top-1, agreement, max |difference|, latency), float32
parity, MediaPipe's `ImageClassifier` on each `.tflite`, and the flag on quantized models that lose accuracy.

It takes artifacts already loaded (`keras_cnn.artifacts.artifact`, the one loader) and only runs them (`Artifact`
methods): `test_set`, then `verify_all`, then `flag`."""
import dataclasses
import os

import numpy as np

from keras_cnn.artifacts import mobile_client
from keras_cnn.artifacts.artifact import Artifact, keras_artifact
from keras_cnn.exporting.tflite import ExportError
from keras_cnn.utils.progress import Progress

PARITY_TOLERANCE = 1e-4  # max |probability difference| of a float32 artifact from the float32 rebuild
CLIENT_AGREEMENT = 99.0  # min top-1 agreement (%) of MediaPipe's ImageClassifier with LiteRT on a float32 file


@dataclasses.dataclass
class TestSet:
    """The held-out images every artifact is measured on, with the float32 rebuild's probabilities on them."""

    x: np.ndarray
    y: np.ndarray
    expected: np.ndarray
    latency_runs: int
    rgb_expected: np.ndarray = None  # a gray model's mobile rebuild (RGB in) on the images repeated into RGB

    def _rgb(self, artifact):
        return artifact.input_shape[-1] == 3 and self.x.shape[-1] == 1

    def images_for(self, artifact):
        """The test images as `artifact` takes them: gray ones repeated into RGB for a mobile (RGB) file."""
        return np.repeat(self.x, 3, axis=-1) if self._rgb(artifact) else self.x

    def expected_for(self, artifact):
        return self.rgb_expected if self._rgb(artifact) else self.expected


def test_set(x, y, latency_runs, rebuild, source, precision, phone=None):
    """(`TestSet`, the source model's top-1 agreement % with the rebuild) from the loaded Keras artifacts: the
    float32 rebuild's probabilities on the test images `x`, and, given the loaded mobile rebuild `phone` of a gray
    model, its probabilities on them in RGB. A float32 source must match its rebuild (`ExportError` otherwise)."""
    expected = rebuild.probabilities(x)
    agreement_pct = _check_rebuild(source, expected, x, precision)
    return TestSet(x, y, expected, latency_runs, None if phone is None else rgb_expected(phone, x)), agreement_pct


def rgb_expected(phone, x):
    """What the mobile rebuild of a gray model (`tflite_export.mobile_model`; the model or its loaded `Artifact`)
    gives for the gray images repeated into RGB (luma weights sum to 0.9999, so the pixels it sees are not exactly
    the gray ones)."""
    phone = phone if isinstance(phone, Artifact) else keras_artifact(phone)
    return phone.probabilities(np.repeat(x, 3, axis=-1))


def _check_rebuild(source, expected, x, precision):
    """Top-1 agreement (%) of the source model (loaded) with its float32 rebuild; a float32 source must match
    exactly."""
    original = source.probabilities(x)
    difference = float(np.abs(original - expected).max())
    if precision == "float32" and difference > PARITY_TOLERANCE:
        raise ExportError(f"the float32 rebuild of {source.path} differs from the model by {difference:.2e}; "
                          "its layers do not rebuild from their configs")
    return agreement(original, expected)


def verify_all(reference, artifacts, test, class_names, reference_path=None):
    """The report's rows: the loaded Keras rebuild `reference` measured (its file `reference_path`, if any), then
    each of `artifacts` ([(artifact, format, quantization)]) `verify`-ed, with progress."""
    rows = [measure(reference, "keras", "float32", test, reference_path)]
    progress = Progress(len(artifacts), f"verifying {len(artifacts)} artifacts on {len(test.x)} images")
    for artifact, fmt, quantization in artifacts:
        rows.append(verify(artifact, fmt, quantization, test, artifact.path, class_names))
        progress.step(os.path.basename(artifact.path))
    return rows


def measure(artifact, fmt, quantization, test, path, timed=True):
    """One report row: size, top-1 accuracy, calibration error (a quantized model may grow over-confident),
    agreement and max |difference| against the rebuild, latency."""
    from keras_cnn.evaluation.calibration import expected_calibration_error

    x, expected = test.images_for(artifact), test.expected_for(artifact)
    probabilities = artifact.probabilities(x)
    return {
        "artifact": os.path.basename(path) if path else artifact.path,
        "format": fmt,
        "quantization": quantization,
        "size_kb": round(_size_kb(path), 1) if path and os.path.exists(path) else None,
        "accuracy_pct": None if test.y is None else round(float(np.mean(probabilities.argmax(1) == test.y) * 100), 3),
        "ece_pct": None if test.y is None else round(100 * expected_calibration_error(probabilities, test.y), 3),
        "agreement_pct": agreement(probabilities, expected),
        "max_abs_diff": float(np.abs(probabilities - expected).max()),
        "latency_ms": round(artifact.latency_ms(x[0], test.latency_runs), 4) if timed else None,
        "accuracy_drop_pts": None,
        "flagged": False,
    }


def verify(artifact, fmt, quantization, test, path, class_names):
    """`_measure`, then the checks that fail an export: float32 parity and, for TFLite, MediaPipe's client."""
    row = measure(artifact, fmt, quantization, test, path)
    _check_parity(row, len(test.x))
    if fmt == "tflite":
        images = np.clip(np.round(test.images_for(artifact)), 0, 255)  # what a camera gives: 8-bit pixels
        ours = artifact.probabilities(images).argmax(1)
        row["client"] = mobile_client.check(path, images, ours, class_names, artifact.tensors["input"]["dtype"])
        _check_client(row)
    return row


def _check_parity(row, count):
    if row["quantization"] == "float32" and not row["max_abs_diff"] <= PARITY_TOLERANCE:
        raise ExportError(f"{row['artifact']} does not match the Keras model: its probabilities differ by up to "
                          f"{row['max_abs_diff']:.2e} (tolerance {PARITY_TOLERANCE:g}) on {count} test images; "
                          "nothing was written")


def _check_client(row):
    client = row["client"]
    if client["status"] != "ok":
        return
    if not client["names_match"]:
        raise ExportError(f"{row['artifact']}: MediaPipe's ImageClassifier names the classes differently from "
                          "labels.txt; nothing was written")
    if row["quantization"] == "float32" and client["agreement_pct"] < CLIENT_AGREEMENT:
        raise ExportError(f"{row['artifact']}: MediaPipe's ImageClassifier agrees with LiteRT on only "
                          f"{client['agreement_pct']:.2f}% of the test images (at least {CLIENT_AGREEMENT:g}% "
                          "needed); nothing was written")


def flag(rows, max_accuracy_drop):
    """Mark quantized rows whose top-1 accuracy is more than `max_accuracy_drop` points below Keras's."""
    keras_accuracy = rows[0]["accuracy_pct"]
    for row in rows[1:]:
        if keras_accuracy is not None and row["quantization"] != "float32":
            row["accuracy_drop_pts"] = round(keras_accuracy - row["accuracy_pct"], 3)
            row["flagged"] = row["accuracy_drop_pts"] > max_accuracy_drop


def agreement(probabilities, expected):
    return round(float(np.mean(probabilities.argmax(1) == expected.argmax(1)) * 100), 3)


def _size_kb(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 1024
    return os.path.getsize(path) / 1024
