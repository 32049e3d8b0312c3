"""CIFAR-10-C-style corruptions: each changes the image and keeps its shape and dtype, is deterministic for a
seed, and moves further from the clean image with the severity; the accuracy table of `evaluate`."""
import io
import json
import logging
import sys

import keras
import numpy as np
import pytest

import keras_cnn
from keras_cnn.artifacts.prediction import keras_artifact
from keras_cnn.evaluation import corruptions
from keras_cnn.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt

NOISY = ("gaussian_noise", "shot_noise")


def photos(n, size=32, seed=0):
    """Images with a photograph's spectrum (amplitude ~ 1/frequency, random phase), uint8-valued float32."""
    rng = np.random.default_rng(seed)
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    frequency[0, 0] = 1
    spectrum = rng.normal(size=(n, size, size, 3)) + 1j * rng.normal(size=(n, size, size, 3))
    image = np.real(np.fft.ifft2(spectrum / frequency[None, :, :, None], axes=(1, 2)))
    image = (image - image.mean(axis=(1, 2, 3), keepdims=True)) / image.std(axis=(1, 2, 3), keepdims=True)
    return np.clip(np.round(128 + 40 * image), 0, 255).astype("float32")


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_changes_the_image_and_keeps_shape_and_dtype(name):
    batch = photos(4)
    for images in (batch, batch.astype(np.uint8), batch[0]):
        corrupted = corrupt(images, name, 3)
        assert corrupted.shape == images.shape and corrupted.dtype == images.dtype
        assert not np.array_equal(corrupted, images)
        assert corrupted.min() >= 0 and corrupted.max() <= 255
        assert np.array_equal(corrupted, np.round(corrupted))  # whole pixel values, as an 8-bit photo


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_is_deterministic_for_a_seed(name):
    images = photos(3)
    assert np.array_equal(corrupt(images, name, 2, seed=7), corrupt(images, name, 2, seed=7))
    if name in NOISY:
        assert not np.array_equal(corrupt(images, name, 2, seed=7), corrupt(images, name, 2, seed=8))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_increases_the_distance_from_the_clean_image(name):
    images = photos(8, seed=1)
    distances = [np.abs(corrupt(images, name, severity) - images).mean() for severity in SEVERITIES]
    assert all(np.diff(distances) > 0), distances


def test_bigger_images_are_blurred_in_proportion():
    small, big = photos(2, 32), photos(2, 64, seed=1)
    upsampled = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    # blurring the 2x upsampled image changes it about as much as blurring the original
    for name in ("gaussian_blur", "defocus_blur"):
        change = [np.abs(corrupt(images, name, 5) - images).mean() for images in (upsampled, small)]
        ratio = change[0] / change[1]
        assert 0.5 < ratio < 1.5, (name, ratio)
    assert corrupt(big, "gaussian_blur", 1).shape == big.shape


@pytest.fixture(scope="module")
def colour_model():
    """A tiny RGB classifier of the photos' mean brightness (2 classes), and its data."""
    keras.utils.set_random_seed(0)
    x = photos(96, 16, seed=2) * np.linspace(0.4, 1.0, 96)[:, None, None, None].astype("float32")
    x = np.round(x).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > np.median(x.mean(axis=(1, 2, 3)))).astype(int)
    data = keras_cnn.load_data((x, y), test_fraction=0.5, val_fraction=0.1, class_names=["dark", "bright"])
    model = keras_cnn.build("small", input_shape=(16, 16, 3), num_classes=2, width=0.25)
    model.compile("adam", "categorical_crossentropy")
    model.fit(data.pipeline("train", batch_size=16), epochs=3, verbose=0)
    return model, data


def test_robustness_table(colour_model):
    model, data = colour_model
    x, y = data.arrays("test")
    artifact = keras_artifact(model, data.class_names, "model.keras")
    result = corruptions.robustness(artifact, x, y, ("contrast", "jpeg"), (1, 5), seed=3)
    clean = 100 * np.mean(model.predict(x, verbose=0).argmax(1) == y)
    assert result.clean_accuracy_pct == pytest.approx(clean, abs=1e-3)  # rounded to 3 decimals
    assert list(result.accuracy_pct) == ["contrast", "jpeg"] and all(len(r) == 2 for r in result.accuracy_pct.values())
    expected = 100 * np.mean(model.predict(corrupt(x, "contrast", 5, (3, 0)), verbose=0).argmax(1) == y)
    assert result.accuracy_pct["contrast"][1] == pytest.approx(expected, abs=1e-3)
    assert result.mean_corruption_accuracy_pct == pytest.approx(np.mean(list(result.accuracy_pct.values())), abs=1e-3)
    assert "mean corruption accuracy" in str(result)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_corruption_passes_show_progress_on_a_terminal_and_log_lines_elsewhere(colour_model, monkeypatch,
                                                                                     caplog):
    model, data = colour_model
    x, y = data.arrays("test")
    artifact = keras_artifact(model, data.class_names, "model.keras")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    corruptions.robustness(artifact, x, y, ("contrast", "jpeg"), (1, 5), seed=3)
    shown = terminal.getvalue()
    assert shown.startswith(f"corruptions: {len(x)} images") and "5/5" in shown  # Keras's Progbar, 1 + 2 x 2 passes
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal: one log line per pass
    with caplog.at_level(logging.INFO, logger="keras_cnn"):
        corruptions.robustness(artifact, x, y, ("contrast",), (1,), seed=3)
    assert [r.getMessage() for r in caplog.records] == [f"corruptions: {len(x)} images: 1/2 clean",
                                                        f"corruptions: {len(x)} images: 2/2 contrast 1"]


def test_evaluate_with_corruptions_writes_the_table_and_the_picture(colour_model, tmp_path):
    model, data = colour_model
    result = keras_cnn.evaluate(model, data, out=str(tmp_path), corruptions=["brightness"], severities=[2, 4])
    table = result.corruptions["model.keras"]
    assert list(table["accuracy_pct"]) == ["brightness"] and len(table["accuracy_pct"]["brightness"]) == 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["corruptions"]["model.keras"] == table
    assert (tmp_path / "corruptions.png").read_bytes()[:4] == b"\x89PNG"
    # a later evaluation keeps the table; another artifact's table is added next to it
    keras_cnn.evaluate(model, data, out=str(tmp_path))
    assert json.loads((tmp_path / "metrics.json").read_text())["corruptions"] == {"model.keras": table}


def test_corruptions_of_an_exported_tflite_file(colour_model, tmp_path):
    model, data = colour_model
    report = keras_cnn.export(model, tmp_path / "export", formats=("tflite",), quantize=("float32",), data=data,
                              latency_runs=1, verbose=False)
    tflite = tmp_path / "export" / report.rows[1]["artifact"]
    keras_cnn.evaluate(model, data, out=str(tmp_path), corruptions=["jpeg"], severities=[3])
    result = keras_cnn.evaluate(model, data, out=str(tmp_path), corruptions=["jpeg"], severities=[3],
                                artifact=str(tflite))
    saved = json.loads((tmp_path / "metrics.json").read_text())["corruptions"]
    assert set(saved) == {"model.keras", tflite.name} and list(result.corruptions) == ["model.keras", tflite.name]
    assert saved[tflite.name]["accuracy_pct"] == saved["model.keras"]["accuracy_pct"]  # float32: same answers

