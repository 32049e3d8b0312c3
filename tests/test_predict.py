"""predict: run folders, .keras files, SavedModels and .tflite files give the same answers on image files.

A SmallCNN (8x8x1) trained for two epochs on the digits is exported once (SavedModel, float32 and int8
TFLite); the images are digits written as PNG files, plus a larger colour JPEG that must be handled
as training handles it (grayscale conversion, antialiased resize).
"""
import importlib
import os

import numpy as np
import pytest

import keras_cnn
from keras_cnn import export, predict  # the package's functions, resolved before the module below
from keras_cnn.data.loading import read_image

predict_module = importlib.import_module("keras_cnn.artifacts.prediction")
SHAPE = (8, 8, 1)
CLASS_NAMES = [f"d{i}" for i in range(10)]


@pytest.fixture(scope="module")
def run_dir(run_dir):
    """conftest's trained run folder, exported to SavedModel and float32 / int8 TFLite."""
    export(run_dir, formats=("saved_model", "tflite"), quantize=("float32", "int8"), latency_runs=1, verbose=False)
    return run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory, digits):
    """Twelve test digits as 8x8 grayscale PNG files."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("images")
    x, _ = digits.arrays("test", limit=12)
    paths = []
    for i, image in enumerate(x):
        paths.append(str(folder / f"digit{i}.png"))
        tf.io.write_file(paths[-1], tf.io.encode_png(np.round(image).astype(np.uint8)))
    return paths


def artifacts(run_dir):
    out = run_dir / "export"
    return [run_dir, run_dir / "model.keras", out / "saved_model", out / "small_float32.tflite"]


def test_every_artifact_kind_gives_the_same_top1(run_dir, images):
    results = [predict(path, images, top=3) for path in artifacts(run_dir)]
    labels = [[p.top[0][0] for p in result] for result in results]
    assert all(label == labels[0] for label in labels) and set(labels[0]) <= set(CLASS_NAMES)
    keras_probabilities = np.array([[prob for _, prob in p.top] for p in results[0]])
    for result in results[1:]:
        np.testing.assert_allclose([[prob for _, prob in p.top] for p in result], keras_probabilities, atol=1e-4)
    int8 = predict(run_dir / "export" / "small_int8.tflite", images)
    assert np.mean([a.top[0][0] == b.top[0][0] for a, b in zip(int8, results[0])]) >= 0.8


def test_top_k_is_sorted_and_bounded(run_dir, images):
    (result,) = predict(run_dir / "export" / "small_float32.tflite", images[0], top=3)
    probabilities = [prob for _, prob in result.top]
    assert len(result.top) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1 + 1e-6 and result.error is None
    assert str(result).startswith(f"{images[0]}: {result.top[0][0]} ")
    (everything,) = predict(run_dir / "export" / "small_float32.tflite", images[0], top=50)
    assert len(everything.top) == 10
    with pytest.raises(ValueError, match="Received: top=0"):
        predict(run_dir, images[0], top=0)


def test_bad_images_are_reported_one_line_each_and_the_others_still_predicted(run_dir, images, tmp_path):
    missing, text = str(tmp_path / "missing.png"), tmp_path / "notes.png"
    text.write_text("not an image\n")
    results = predict(run_dir / "export" / "small_float32.tflite", [images[0], missing, str(text), images[1]])
    assert [r.image for r in results] == [images[0], missing, str(text), images[1]]
    assert results[0].top and results[3].top
    assert results[1].error == f"{missing}: file not found" and not results[1].top
    assert results[2].error.startswith(f"{text}: not a readable image")
    assert all("\n" not in str(r) for r in results) and str(results[1]).startswith("error: ")


def test_images_get_the_training_resize_and_channel_handling(tmp_path):
    """A 20x16 colour JPEG predicted by an 8x8x1 model sees what the folder loader gives training."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for split, name in (("train", "a"), ("train", "b"), ("test", "a")):
        os.makedirs(tmp_path / split / name)
        image = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
        tf.io.write_file(str(tmp_path / split / name / "x.jpg"), tf.io.encode_jpeg(image))
    data = keras_cnn.load_data(f"folder:{tmp_path}", image_size=8, color_mode="grayscale")
    trained_on, _ = data.arrays("test")
    seen = read_image(tmp_path / "test" / "a" / "x.jpg", SHAPE)
    assert seen.shape == SHAPE and seen.dtype == np.float32
    np.testing.assert_array_equal(seen, trained_on[0])


def test_numpy_images_are_accepted(run_dir, digits):
    x, _ = digits.arrays("test", limit=2)
    by_array = predict(run_dir / "export" / "small_float32.tflite", [x[0][..., 0], x[1]])
    assert [p.image for p in by_array] == ["<array 0>", "<array 1>"] and all(p.top for p in by_array)


def test_class_names_come_from_the_sidecar_then_labels_txt(run_dir, tmp_path):
    import shutil

    shutil.copy(run_dir / "export" / "small_float32.tflite", tmp_path / "alone.tflite")
    assert predict_module.load_artifact(tmp_path / "alone.tflite").class_names == [str(i) for i in range(10)]
    (tmp_path / "labels.txt").write_text("".join(f"L{i}\n" for i in range(10)))
    assert predict_module.load_artifact(tmp_path / "alone.tflite").class_names[:2] == ["L0", "L1"]
    assert predict_module.load_artifact(run_dir / "export" / "saved_model").class_names == CLASS_NAMES


def test_unknown_or_missing_artifacts_are_clear_errors(tmp_path, images):
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"cannot tell what .*model.bin is.*Received: artifact="):
        predict(tmp_path / "model.bin", images)
    with pytest.raises(FileNotFoundError, match="artifact not found"):
        predict(tmp_path / "nothing.tflite", images)


def test_package_exposes_the_functions():
    assert keras_cnn.predict is predict and keras_cnn.export is export


@pytest.mark.parametrize("quantization", ["float32", "int8"])
def test_mediapipe_client_gives_the_same_top_k_as_litert(run_dir, images, quantization):
    path = run_dir / "export" / f"small_{quantization}.tflite"
    ours = predict(path, images, top=3)
    client = predict(path, images, top=3, client="mediapipe")
    assert [p.image for p in client] == [p.image for p in ours] and not any(p.error for p in client)
    assert [p.top[0][0] for p in client] == [p.top[0][0] for p in ours]
    if quantization == "float32":
        assert [[label for label, _ in p.top] for p in client] == [[label for label, _ in p.top] for p in ours]
        for mine, theirs in zip(ours, client):
            np.testing.assert_allclose([s for _, s in theirs.top], [s for _, s in mine.top], atol=1e-5)


def test_mediapipe_client_reports_a_bad_image_and_predicts_the_others(run_dir, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    results = predict(run_dir / "export" / "small_float32.tflite", [images[0], str(broken)], client="mediapipe")
    assert results[0].error is None and "broken.png" in results[1].error


def test_cli_predict_with_the_client_prints_what_litert_prints(run_dir, images, capsys):
    from keras_cnn import cli

    path = str(run_dir / "export" / "small_float32.tflite")
    assert cli.main(["predict", path, *images[:3], "--top", "1"]) == 0
    ours = capsys.readouterr().out
    assert cli.main(["predict", path, *images[:3], "--top", "1", "--client", "mediapipe"]) == 0
    assert capsys.readouterr().out == ours and len(ours.splitlines()) == 3
