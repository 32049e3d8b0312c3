"""The zoo's trained weights: shipped checkpoints by name, their figures, and weights from a path, a URL or the Hub."""
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

import keras_cnn
from keras_cnn.models import checkpoints

DIGITS = sorted(model for model, by_dataset in checkpoints.manifest().items() if "digits" in by_dataset)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """A Keras cache of this test's own, where checkpoint run folders and downloads go."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """The manifest and small:digits' file copied to a folder of this test's own, which it may damage."""
    folder = tmp_path / "weights"
    folder.mkdir()
    checkpoint = checkpoints.find("small", "digits")
    shutil.copy(checkpoint.path, folder / checkpoint.file)
    shutil.copy(checkpoints.MANIFEST_FILE, folder / "manifest.json")
    monkeypatch.setattr(checkpoints, "WEIGHTS_DIR", str(folder))
    monkeypatch.setattr(checkpoints, "MANIFEST_FILE", str(folder / "manifest.json"))
    checkpoints.manifest.cache_clear()
    yield folder / checkpoint.file
    checkpoints.manifest.cache_clear()


def test_the_manifest_ships_the_promised_checkpoints_within_the_budget():
    shipped = {(c.model, c.dataset) for by_dataset in checkpoints.manifest().values() for c in by_dataset.values()}
    assert {("small", "digits"), ("lenet", "digits"), ("mnist_cnn", "digits")} <= shipped
    assert {("airbench", "cifar10"), ("small", "cifar10"), ("deeper", "cifar10"), ("compact", "cifar10"),
            ("lenet", "cifar10")} <= shipped
    total = 0
    for model, dataset in shipped:
        checkpoint = checkpoints.find(model, dataset)
        assert checkpoints.sha256(checkpoint.path) == checkpoint.sha256, checkpoint.file
        assert checkpoint.command.startswith(f"keras-cnn train {model} ")
        assert checkpoint.storage in ("float16", "float32")
        assert checkpoint.preprocessing.startswith("raw ") and "[0, 255]" in checkpoint.preprocessing
        total += os.path.getsize(checkpoint.path)
    assert total <= 20 * 2**20  # the stated budget: docs/zoo.md
    assert keras_cnn.list_models(pretrained=True) == sorted({model for model, _ in shipped})
    assert "resnet18" not in keras_cnn.list_models(pretrained=True)


@pytest.mark.parametrize("model", DIGITS)
def test_a_digits_checkpoint_scores_its_table_figure(model, digits):
    checkpoint = checkpoints.find(model, "digits")
    report = keras_cnn.evaluate(keras_cnn.build(model, weights="digits"), digits, tta="flip+translate")
    assert report.tta_accuracy["none"] == pytest.approx(checkpoint.accuracy, abs=0.001)
    for level, accuracy in checkpoint.accuracy_tta.items():
        assert report.tta_accuracy[level] == pytest.approx(accuracy, abs=0.001), level
    assert checkpoint.accuracy > 0.9
    assert keras_cnn.model_info(model)["weights"]["digits"]["accuracy"] == checkpoint.accuracy


def test_overrides_that_keep_the_weights_shapes_are_allowed_and_others_refused():
    trained = keras_cnn.build("small", weights="digits")
    variant = keras_cnn.build("small", weights="digits", dropout=0.5)
    assert variant.get_layer("head_dropout").rate == 0.5
    for a, b in zip(trained.get_layer("predictions").get_weights(), variant.get_layer("predictions").get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"do not fit layer .* Received: filters=\(16, 32\)"):
        keras_cnn.build("small", weights="digits", filters=(16, 32))
    with pytest.raises(ValueError, match=r"do not fit layer 'stage1_conv'.* Received: input_shape=\(8, 8, 3\)"):
        keras_cnn.build("small", weights="digits", input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match=r"classify 10 classes; for 3 .*include_top=False.* Received: num_classes=3"):
        keras_cnn.build("small", weights="digits", num_classes=3)
    with pytest.raises(ValueError, match=r"small has no 'mnist' weights: it has weights for: .*digits"):
        keras_cnn.build("small", weights="mnist")
    with pytest.raises(ValueError, match=r"resnet18 has no 'cifar10' weights: it has no trained weights"):
        keras_cnn.build("resnet18", weights="cifar10")


def test_include_top_false_is_a_trained_feature_extractor(digits):
    trained = keras_cnn.build("small", weights="digits")
    features = keras_cnn.build("small", weights="digits", include_top=False, pooling="avg", num_classes=3)
    assert "predictions" not in [layer.name for layer in features.layers]
    for layer in (layer for layer in features.layers if layer.weights):
        for a, b in zip(layer.get_weights(), trained.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    x, _ = digits.arrays("test", image_shape=trained.input_shape[1:])
    assert features.predict(x[:4], verbose=0).shape == (4, features.output_shape[-1])


def test_a_damaged_checkpoint_is_refused_with_how_to_restore_it(shipped_copy):
    with open(shipped_copy, "r+b") as handle:
        handle.seek(4000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match=r"does not match its sha256 .*pip install --force-reinstall keras-cnn.*"
                                         r"keras-cnn train small --data digits"):
        keras_cnn.build("small", weights="digits")
    os.remove(shipped_copy)
    with pytest.raises(FileNotFoundError, match="weights file .* is missing"):
        keras_cnn.build("small", weights="digits")


def test_truncated_or_foreign_weights_files_get_one_line(tmp_path):
    path = tmp_path / "cut.weights.h5"
    path.write_bytes(open(checkpoints.find("small", "digits").path, "rb").read()[:5000])
    with pytest.raises(ValueError, match=r"cannot load weights from .* into small"):
        keras_cnn.build("small", input_shape=(8, 8, 1), weights=str(path))
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*Received: weights="):
        keras_cnn.build("small", weights=str(tmp_path / "missing.weights.h5"))


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving `tmp_path/www`; yields its base URL."""
    folder = tmp_path / "www"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


def test_weights_from_a_url_are_downloaded_once_and_checked(server, keras_home):
    url, folder = server
    checkpoint = checkpoints.find("small", "digits")
    shutil.copy(checkpoint.path, folder / "small.weights.h5")
    weights = f"{url}/small.weights.h5#sha256={checkpoint.sha256}"
    model = keras_cnn.build("small", input_shape=(8, 8, 1), weights=weights)
    expected = keras_cnn.build("small", weights="digits")
    np.testing.assert_array_equal(model.get_layer("predictions").get_weights()[0],
                                  expected.get_layer("predictions").get_weights()[0])
    assert os.path.isfile(keras_home / "models" / "keras_cnn" / "small.weights.h5")
    (folder / "other.weights.h5").write_bytes(b"not the file")
    with pytest.raises(OSError, match=r"cannot download weights from .*other.weights.h5"):
        keras_cnn.build("small", input_shape=(8, 8, 1), weights=f"{url}/other.weights.h5#sha256={checkpoint.sha256}")


def test_an_unreachable_url_or_hub_fails_in_seconds_with_one_line(keras_home, monkeypatch):
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    started = time.monotonic()
    with pytest.raises(OSError, match=r"cannot download weights from http://127.0.0.1:\d+/x.weights.h5: cannot reach"):
        keras_cnn.build("small", weights=f"http://127.0.0.1:{port}/x.weights.h5")
    monkeypatch.setattr(checkpoints, "HF_HOST", f"127.0.0.1:{port}")
    with pytest.raises(OSError, match=r"cannot download model.weights.h5 from the Hugging Face Hub \(org/name\)"):
        keras_cnn.build("small", weights="hf://org/name")
    assert time.monotonic() - started < 10


def test_hf_weights_come_from_the_hub_client(monkeypatch, tmp_path):
    calls = []
    checkpoint = checkpoints.find("small", "digits")

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return checkpoint.path

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the client answers from its cache: no probe of the host
    model = keras_cnn.build("small", input_shape=(8, 8, 1), weights="hf://someone/small-digits")
    keras_cnn.build("small", input_shape=(8, 8, 1), weights="hf://someone/small-digits/other.weights.h5")
    assert calls == [("someone/small-digits", "model.weights.h5"), ("someone/small-digits", "other.weights.h5")]
    assert model.get_layer("predictions").get_weights()[0].shape == (128, 10)
    with pytest.raises(ValueError, match="hf://org/name or hf://org/name/file.weights.h5"):
        keras_cnn.build("small", weights="hf://justone")


def test_a_checkpoint_is_a_run_for_predict_and_evaluate(keras_home, tmp_path, digits, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)  # evaluate writes saved_models/small-digits/
    x, _ = digits.arrays("test")
    Image.fromarray(x[0][..., 0].astype(np.uint8)).save("digit.png")
    expected = keras_cnn.build("small", weights="digits").predict(x[:1], verbose=0).argmax()
    [result] = keras_cnn.predict("small:digits", ["digit.png"])
    assert result.top[0][0] == checkpoints.find("small", "digits").class_names[expected] and not result.error
    report = keras_cnn.evaluate("small:digits")
    assert report.accuracy == pytest.approx(checkpoints.find("small", "digits").accuracy, abs=0.001)
    run = keras_cnn.load("small:digits")
    assert run.class_names == list(checkpoints.find("small", "digits").class_names)
    assert run.out_folder == os.path.join("saved_models", "small-digits")
    assert os.path.isfile(os.path.join("saved_models", "small-digits", "metrics.json"))


def test_fine_tuning_from_a_checkpoint_starts_a_new_head_on_other_classes(tmp_path, digits):
    x, y = digits.arrays("train")
    keep = y < 3
    run = keras_cnn.train("small", (x[keep], y[keep]), weights="digits", epochs=1, out=str(tmp_path / "run"),
                          verbose=0)
    assert run.model.output_shape[-1] == 3
    assert run.config["arguments"]["weights"] == "digits"


def _load_in_fresh_process(path, backend):
    code = ("import keras_cnn, keras, sys; m = keras.saving.load_model(sys.argv[1]); "
            "print(keras.backend.backend(), m.output_shape[-1], type(m.get_layer('stage1_conv')).__module__)")
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_import_keras_cnn_is_enough_for_keras_to_load_a_run(run_dir, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    done = _load_in_fresh_process(os.path.join(run_dir, "model.keras"), backend)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [backend, "10", "keras_cnn.models.layers"]


CIFAR10 = sorted(model for model, by_dataset in checkpoints.manifest().items() if "cifar10" in by_dataset)
SHARED_CIFAR10 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                              "cifar10-jpg.tar.gz")


def _cifar10(tmp_path_factory, members):
    """The CIFAR-10 JPEG copy: ~/.cache/cifar10-jpg where unpacked, else the `members` (a path prefix) of the shared
    archive unpacked here; skipped where there is neither."""
    import tarfile

    cached = os.path.expanduser("~/.cache/cifar10-jpg")
    if os.path.isdir(os.path.join(cached, "test")):
        return cached
    if not os.path.isfile(SHARED_CIFAR10):
        pytest.skip("no CIFAR-10 copy (~/.cache/cifar10-jpg or ../shared/data/cifar10-jpg.tar.gz)")
    folder = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(SHARED_CIFAR10) as archive:
        archive.extractall(folder, members=[m for m in archive if m.name.lstrip("./").startswith(members)],
                           filter="data")
    return str(folder)


@pytest.fixture(scope="module")
def cifar10_test_sample(tmp_path_factory):
    """(images, labels, class names): the first 50 test images of each class, as sorted file names give them."""
    from keras_cnn.data.loading import read_image

    root = os.path.join(_cifar10(tmp_path_factory, "test/"), "test")
    class_names = sorted(os.listdir(root))
    images, labels = [], []
    for label, name in enumerate(class_names):
        for file in sorted(os.listdir(os.path.join(root, name)))[:50]:
            images.append(read_image(os.path.join(root, name, file), (32, 32, 3)))
            labels.append(label)
    return np.stack(images), np.array(labels), class_names


@pytest.mark.parametrize("model", CIFAR10)
def test_a_cifar10_checkpoint_scores_its_table_figure_on_a_sample(model, cifar10_test_sample):
    x, y, class_names = cifar10_test_sample
    checkpoint = checkpoints.find(model, "cifar10")
    assert list(checkpoint.class_names) == class_names
    accuracy = np.mean(keras_cnn.build(model, weights="cifar10").predict(x, verbose=0).argmax(1) == y)
    noise = np.sqrt(checkpoint.accuracy * (1 - checkpoint.accuracy) / len(y))  # binomial, of a 500-image sample
    assert abs(accuracy - checkpoint.accuracy) < 4 * noise, (accuracy, checkpoint.accuracy)


@pytest.mark.slow
@pytest.mark.parametrize("model", CIFAR10)
def test_a_cifar10_checkpoint_scores_its_table_figure_on_the_whole_test_set(model, tmp_path_factory):
    data = keras_cnn.load_data(f"folder:{_cifar10(tmp_path_factory, ('train/', 'test/'))}", val_fraction=0.0)
    report = keras_cnn.evaluate(keras_cnn.build(model, weights="cifar10"), data, tta="flip+translate")
    checkpoint = checkpoints.find(model, "cifar10")
    assert report.tta_accuracy["none"] == pytest.approx(checkpoint.accuracy, abs=0.001)
    for level, accuracy in checkpoint.accuracy_tta.items():
        assert report.tta_accuracy[level] == pytest.approx(accuracy, abs=0.001), level
    if model == "airbench":
        assert checkpoint.accuracy >= 0.90 and checkpoint.accuracy_tta["flip+translate"] >= 0.91


def test_an_unknown_checkpoint_is_one_line_with_a_suggestion(capsys, keras_home):
    from keras_cnn import cli

    assert cli.main(["evaluate", "smal:digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'small:digits'" in err and "Received: source='smal:digits'" in err
    assert cli.main(["predict", "small:mnist", "x.png"]) == 2
    assert "small has no 'mnist' weights: it has weights for: cifar10, digits" in capsys.readouterr().err
