"""Tests for keras_cnn.data.loading: every source, the pipeline contract and every error path (offline, tiny data)."""

import logging
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_cnn.data import loading as data_module
from keras_cnn.data.loading import load_data, shuffle_buffer
from keras_cnn.utils import network


def _save(path, size=(12, 10), mode="RGB", seed=0):
    """Write a random image of ``size`` (H, W) in PIL ``mode``; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.fixture
def flat_folder(tmp_path):
    """PATH/<class>/*: 3 classes x 5 images, mixed formats and sizes (12x10 most common), gray + RGB."""
    root = tmp_path / "pets"
    specs = {"cat": ("L", ["png", "jpg", "bmp", "gif", "png"]), "dog": ("RGB", ["jpg", "png", "bmp", "jpeg", "gif"]),
             "owl": ("RGB", ["png"] * 5)}
    for c, (mode, formats) in specs.items():
        for i, fmt in enumerate(formats):
            _save(root / c / f"{i}.{fmt}", size=(7, 9) if i == 4 else (12, 10), mode=mode, seed=i)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x01")
    return root


@pytest.fixture
def split_folder(tmp_path):
    """PATH/train/<class>/* (4 per class) and PATH/test/<class>/* (2 per class), 8x8 grayscale PNGs."""
    root = tmp_path / "shapes"
    for split, n in (("train", 4), ("test", 2)):
        for c in ("circle", "square"):
            for i in range(n):
                _save(root / split / c / f"{i}.png", size=(8, 8), mode="L", seed=i)
    return root


# ---------------------------------------------------------------- digits
def test_digits_shapes_range_and_stratified_split():
    data = load_data("digits")
    assert (data.name, data.image_shape, data.num_classes) == ("digits", (8, 8, 1), 10)
    assert data.class_names == [str(d) for d in range(10)]
    assert sum(data.sizes.values()) == 1797
    per_class = np.bincount(np.concatenate([data.arrays(s)[1] for s in ("train", "val", "test")]))
    for split, fraction in (("val", 0.1), ("test", 0.2)):
        x, y = data.arrays(split)
        assert x.dtype == np.float32 and x.shape == (data.sizes[split], 8, 8, 1)
        assert np.all(np.abs(np.bincount(y, minlength=10) - per_class * fraction) <= 1)  # stratified
    x, _ = data.arrays("train")
    assert x.min() == 0 and x.max() == 255  # 0-16 scaled to 0-255


def test_digits_split_is_deterministic_given_the_seed():
    first, again, other = (load_data("digits", seed=s).arrays("test") for s in (0, 0, 1))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert {img.tobytes() for img in first[0]} != {img.tobytes() for img in other[0]}  # other images, not order


# ---------------------------------------------------------------- pipeline
def test_pipeline_batches_one_hot_in_order():
    data = load_data("digits")
    batches = _batches(data.pipeline("val", batch_size=64))
    x_ref, y_ref = data.arrays("val")
    assert [len(x) for x, _ in batches] == [64, 64, data.sizes["val"] - 128]
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape == (data.sizes["val"], 10)
    np.testing.assert_array_equal(y.sum(axis=1), 1.0)
    np.testing.assert_array_equal(y.argmax(axis=1), y_ref)
    np.testing.assert_array_equal(x, x_ref)


def test_pipeline_resizes_gray_to_rgb_and_logs_once(caplog):
    data = load_data("digits")
    caplog.set_level(logging.INFO, logger="keras_cnn")
    x, y = next(iter(data.pipeline("train", batch_size=16, image_shape=(16, 16, 3))))
    adapt_logs = [r for r in caplog.records if "adapting" in r.getMessage()]
    assert len(adapt_logs) == 1 and "(16, 16, 3)" in adapt_logs[0].getMessage()
    assert x.shape == (16, 16, 16, 3) and y.shape == (16, 10)
    x = x.numpy()
    assert x.min() >= 0 and 200 < x.max() <= 255
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # gray replicated into RGB
    caplog.clear()
    next(iter(data.pipeline("train", image_shape=(8, 8, 1))))
    assert not [r for r in caplog.records if "adapting" in r.getMessage()]


def test_pipeline_rgb_to_grayscale():
    x = np.random.default_rng(0).integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    data = load_data((x, np.arange(20) % 2))
    assert data.image_shape == (6, 6, 3)
    gray, _ = data.arrays("train", image_shape=(6, 6, 1))
    assert gray.shape == (data.sizes["train"], 6, 6, 1) and gray.max() <= 255


def test_training_shuffle_is_seeded_and_reshuffles_each_epoch():
    data = load_data("digits")

    def epochs(seed):
        ds = data.pipeline("train", batch_size=2000, training=True, seed=seed)
        return [np.argmax(y, axis=1) for _, y in ds.repeat(2)]

    first, again, other = epochs(1), epochs(1), epochs(2)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])  # reshuffled each epoch
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], data.arrays("train")[1])  # training=True shuffles at all


@pytest.mark.parametrize("split_fits", [True, False])
def test_a_split_that_fits_is_reshuffled_whole_each_epoch(monkeypatch, split_fits):
    """Where the split's images fit in memory (CIFAR-10's 50,000 do), any image can open an epoch, as with a new
    permutation each epoch; otherwise the buffer is a window over the stored order (here 4 images)."""
    assert shuffle_buffer(50_000, 32 * 32 * 3) == 50_000 and shuffle_buffer(1_281_167, 224 * 224 * 3) == 10_000
    monkeypatch.setattr(data_module, "_SHUFFLE_BUFFER", 4)
    monkeypatch.setattr(data_module, "_SHUFFLE_BYTES", 2**20 if split_fits else 0)
    numbers = np.arange(125, dtype=np.uint8)  # each image's pixels hold its number
    data = load_data((np.broadcast_to(numbers[:, None, None, None], (125, 2, 2, 1)).copy(), numbers % 2),
                     val_fraction=0, test_fraction=0.2)
    stored = list(data.arrays("train")[0][:, 0, 0, 0])
    first_batch, _ = next(iter(data.pipeline("train", batch_size=8, training=True)))
    furthest = max(stored.index(image[0, 0, 0]) for image in first_batch.numpy())
    assert furthest >= 4 + 8 if split_fits else furthest < 4 + 8  # a window of 4 reaches 8 + 4 images deep


def test_pipeline_file_cache(tmp_path):
    data = load_data("digits")
    ds = data.pipeline("test", cache=str(tmp_path / "digits-test"))
    assert sum(len(x) for x, _ in ds) == data.sizes["test"]
    assert list(tmp_path.glob("digits-test*"))


# ---------------------------------------------------------------- arrays
def test_arrays_spec_grayscale_nhw():
    x = np.random.default_rng(0).integers(0, 256, (60, 5, 7), dtype=np.uint8)
    y = np.repeat([0, 1, 2], 20)
    data = load_data((x, y), val_fraction=0.25, test_fraction=0.25, class_names=["a", "b", "c"])
    assert (data.name, data.image_shape, data.class_names) == ("arrays", (5, 7, 1), ["a", "b", "c"])
    assert data.sizes == {"train": 30, "val": 15, "test": 15}
    xs, ys = data.arrays("val")
    assert xs.dtype == np.float32 and xs.shape == (15, 5, 7, 1) and np.bincount(ys).tolist() == [5, 5, 5]
    original = {tuple(img.ravel()) for img in x.astype(np.float32)}
    assert all(tuple(img.ravel()) in original for img in xs)  # pixels untouched


def test_arrays_spec_image_size_and_color_mode_at_load():
    x = np.full((10, 4, 4), 255, dtype=np.uint8)
    data = load_data((x, np.arange(10) % 2), image_size=6, color_mode="rgb", test_fraction=0, val_fraction=0)
    assert data.image_shape == (6, 6, 3) and data.sizes == {"train": 10, "val": 0, "test": 0}
    xs, _ = data.arrays("train")
    assert xs.shape == (10, 6, 6, 3) and np.all(xs == 255)


def test_class_weights_balanced():
    y = np.array([0] * 30 + [1] * 10)
    data = load_data((np.zeros((40, 4, 4)), y), val_fraction=0, test_fraction=0)
    weights = data.class_weights()
    assert weights == pytest.approx({0: 40 / (2 * 30), 1: 40 / (2 * 10)})


# ---------------------------------------------------------------- folder
@pytest.mark.parametrize("classes, units, fits", [(3, 3, True), (2, 1, True), (3, 2, False), (2, 3, False)])
def test_check_fits_takes_a_model_whose_outputs_match_the_classes(classes, units, fits):
    x, y = np.zeros((classes * 4, 8, 8, 1), np.uint8), np.repeat(np.arange(classes), 4)
    data = load_data((x, y), val_fraction=0.25, test_fraction=0.25)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(units)])
    if fits:
        data.check_fits(model)
    else:
        with pytest.raises(ValueError, match=f"predicts {units} classes but arrays has {classes} .* "
                                             f"Received: num_classes={units}$"):
            data.check_fits(model)


def test_folder_flat_mixed_sizes_and_modes(flat_folder, caplog):
    caplog.set_level(logging.INFO, logger="keras_cnn")
    data = load_data(f"folder:{flat_folder}", val_fraction=0.2, test_fraction=0.2)
    assert (data.name, data.class_names) == ("pets", ["cat", "dog", "owl"])
    assert data.image_shape == (12, 10, 3)  # most common size; rgb because some images are color
    assert data.sizes == {"train": 9, "val": 3, "test": 3}
    assert any("skipped 2 files" in r.getMessage() for r in caplog.records)
    x, y = data.arrays("train")
    assert x.shape == (9, 12, 10, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    assert np.bincount(y).tolist() == [3, 3, 3]
    owl_files = sorted((flat_folder / "owl").glob("[0-3].png"))  # 12x10 lossless RGB: decoded exactly
    owls = {np.asarray(Image.open(f), dtype=np.float32).tobytes() for f in owl_files}
    assert sum(img.tobytes() in owls for img in x[y == 2]) >= 2
    cats = x[y == 0]
    np.testing.assert_array_equal(cats[..., 0], cats[..., 1])  # grayscale files decoded to equal channels
    xb, yb = next(iter(data.pipeline("train", batch_size=4, training=True)))
    assert xb.shape == (4, 12, 10, 3) and yb.shape == (4, 3)


def test_folder_image_size_and_color_mode(flat_folder):
    data = load_data(f"folder:{flat_folder}", image_size=(6, 5), color_mode="grayscale")
    assert data.image_shape == (6, 5, 1)
    x, _ = data.arrays("train")
    assert x.shape == (data.sizes["train"], 6, 5, 1)


def test_folder_with_split_folders_carves_val_from_train(split_folder):
    data = load_data(f"folder:{split_folder}", val_fraction=0.25, test_fraction=0.5)
    assert data.image_shape == (8, 8, 1)  # all grayscale
    assert data.sizes == {"train": 6, "val": 2, "test": 4}  # test comes from test/, not the fraction
    assert np.bincount(data.arrays("test")[1]).tolist() == [2, 2]


def test_folder_with_val_folder(split_folder):
    for c in ("circle", "square"):
        _save(split_folder / "val" / c / "v.jpg", size=(8, 8), mode="RGB")
    data = load_data(f"folder:{split_folder}")
    assert data.sizes == {"train": 8, "val": 2, "test": 4}
    assert data.image_shape == (8, 8, 3)  # the val images are color


def test_folder_drops_undecodable_body(split_folder):
    good = (split_folder / "test" / "circle" / "0.png").read_bytes()
    (split_folder / "test" / "circle" / "truncated.png").write_bytes(good[:60])  # valid header, broken body
    data = load_data(f"folder:{split_folder}")
    assert data.sizes["test"] == 5
    assert len(data.arrays("test")[0]) == 4


# ---------------------------------------------------------------- tfds
def _write_mnist_metadata(root, **split_sizes):
    """What a prepared tfds data_dir holds besides the records: dataset_info.json and features.json."""
    builder = tfds.builder("mnist", data_dir=str(root))
    splits = [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s, n in split_sizes.items()]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)


def _fake_as_dataset(self, split, **kwargs):
    """Like mock_data's generator, but with as many examples as the metadata says the (sliced) split has."""
    n = self.info.splits[split].num_examples
    images = np.random.default_rng(n).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(n) % 10})


def test_tfds_with_mock_data(tmp_path):
    _write_mnist_metadata(tmp_path, train=50, test=20)
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES):
        data = load_data("tfds:mnist", data_dir=str(tmp_path))
        x, y = next(iter(data.pipeline("train", batch_size=32)))
    assert (data.name, data.image_shape, data.class_names) == ("mnist", (28, 28, 1), [str(d) for d in range(10)])
    assert data.sizes == {"train": 12, "val": 12, "test": 12}  # mock_data yields num_examples for any split
    assert x.shape == (12, 28, 28, 1) and x.dtype == tf.float32 and y.shape == (12, 10)
    assert 0 <= x.numpy().min() and x.numpy().max() <= 255


@pytest.mark.parametrize("metadata, sizes", [
    ({"train": 50, "test": 20}, {"train": 45, "val": 5, "test": 20}),  # val carved from train
    ({"train": 50, "validation": 8, "test": 20}, {"train": 50, "val": 8, "test": 20}),
    ({"train": 50}, {"train": 40, "val": 5, "test": 5}),  # no test split: carved too
])
def test_tfds_split_mapping(tmp_path, metadata, sizes):
    _write_mnist_metadata(tmp_path, **metadata)
    with tfds.testing.mock_data(data_dir=str(tmp_path), as_dataset_fn=_fake_as_dataset,
                                policy=tfds.testing.MockPolicy.USE_FILES):
        data = load_data("tfds:mnist", data_dir=str(tmp_path), test_fraction=0.1, image_size=8, color_mode="rgb")
        x, _ = next(iter(data.pipeline("val", batch_size=4)))
        weights = data.class_weights()
    assert data.sizes == sizes
    assert data.image_shape == (8, 8, 3) and x.shape == (4, 8, 8, 3)
    assert sorted(weights) == list(range(10))


class _SupervisedTfDataBuilder(tfds.dataset_builders.TfDataBuilder, skip_registration=True):
    """TfDataBuilder with (image, label) supervised keys, to prepare a real tfds data set offline."""

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=self._feature_spec, supervised_keys=("image", "label"))


def test_tfds_reads_a_prepared_dataset_from_disk(tmp_path):
    _SupervisedTfDataBuilder(name="tiny_shapes", version="1.0.0", features=_tiny_shapes_features(),
                             data_dir=str(tmp_path), split_datasets={"train": _tiny_split(20), "test": _tiny_split(6)}
                             ).download_and_prepare()
    data = load_data("tfds:tiny_shapes", data_dir=str(tmp_path))
    assert (data.class_names, data.image_shape, data.sizes) == (["a", "b"], (6, 6, 1), {"train": 18, "val": 2, "test": 6})
    x, y = data.arrays("train")
    np.testing.assert_array_equal(y, x[:, 0, 0, 0] / 10 % 2)  # images travel with their labels
    weights = data.class_weights()
    assert weights == pytest.approx({c: 18 / (2 * np.sum(y == c)) for c in (0, 1)})
    assert load_data("tfds:tiny_shapes", data_dir=str(tmp_path), val_fraction=0).sizes["val"] == 0


def _tiny_shapes_features():
    return tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(6, 6, 1)),
                                       "label": tfds.features.ClassLabel(names=["a", "b"])})


def _tiny_split(n):
    images = np.repeat(np.arange(n, dtype=np.uint8) * 10, 36).reshape(n, 6, 6, 1)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(n) % 2})


class _DownloadableBuilder(_SupervisedTfDataBuilder, skip_registration=True):
    """A tfds builder that says where it downloads from, and prepares itself offline when asked to."""

    url_infos = {"https://data.example.org/tiny_shapes.tar.gz": None}
    prepared_by_tfds = 0

    def download_and_prepare(self, **kwargs):
        type(self).prepared_by_tfds += 1
        super().download_and_prepare(**kwargs)


@pytest.fixture
def downloadable(tmp_path, monkeypatch):
    """`tfds:tiny_shapes` as a data set not yet prepared in tmp_path, whose host the probe reports reachable."""
    probed = []
    monkeypatch.setattr(network, "unreachable", lambda host, timeout: probed.append(host))
    monkeypatch.setattr(_DownloadableBuilder, "prepared_by_tfds", 0)
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: _DownloadableBuilder(
        name=name, version="1.0.0", features=_tiny_shapes_features(), data_dir=data_dir,
        split_datasets={"train": _tiny_split(20), "test": _tiny_split(6)}))
    return probed


def test_tfds_downloads_and_prepares_when_its_host_answers(downloadable, tmp_path):
    data = load_data("tfds:tiny_shapes", data_dir=str(tmp_path))
    assert downloadable == ["data.example.org"] and _DownloadableBuilder.prepared_by_tfds == 1
    assert data.sizes == {"train": 18, "val": 2, "test": 6}
    load_data("tfds:tiny_shapes", data_dir=str(tmp_path))
    assert _DownloadableBuilder.prepared_by_tfds == 1  # prepared once, then read from data_dir


def test_data_download_prepares_ahead_of_time(downloadable, tmp_path, capsys):
    from keras_cnn import cli

    assert cli.main(["data", "download", "tfds:tiny_shapes", "--data-dir", str(tmp_path)]) == 0
    assert _DownloadableBuilder.prepared_by_tfds == 1
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "tiny_shapes" / "1.0.0")  # after tfds's own


def test_tfds_not_prepared_fails_fast_when_its_host_does_not_answer(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(network, "unreachable",
                        lambda host, timeout: probed.append(host) or f"cannot reach {host}: no network")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"not downloaded/prepared.*cannot reach .*: no network.*keras-cnn data "
                                         r"download tfds:mnist.*folder:PATH.*Received: spec='tfds:mnist'"):
        load_data("tfds:mnist", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10 and len(probed) == 1
    assert not (tmp_path / "downloads").exists()


def test_tfds_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown tfds dataset 'no_such_dataset_xyz'"):
        load_data("tfds:no_such_dataset_xyz")


# ---------------------------------------------------------------- errors
_X = np.zeros((6, 4, 4), dtype=np.uint8)
_Y = np.array([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("spec, kwargs, message", [
    ("s3:bucket", {}, r"expected 'digits', 'tfds:NAME\[:CONFIG\]', 'folder:PATH'.*Received: spec='s3:bucket'"),
    (42, {}, "Received: spec=<int>"),
    (np.zeros((2, 3)), {}, "Received: spec=<ndarray>"),
    ("digits", {"image_size": (8.5, 8)}, r"Received: image_size=\(8.5, 8\)"),
    ("digits", {"val_fraction": 1.2}, "Received: val_fraction=1.2"),
    ("digits", {"val_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
    ("digits", {"color_mode": "cmyk"}, "Received: color_mode='cmyk'"),
    ("digits", {"image_size": (0, 4)}, r"Received: image_size=\(0, 4\)"),
    ("digits", {"class_names": ["a"]}, "only used with an \\(x, y\\) spec"),
    ((_X[:, 0], _Y), {}, r"Received: x.shape=\(6, 4\)"),
    ((_X, _Y[:5]), {}, r"one label per image.*Received: x.shape=\(6, 4, 4, 1\), y.shape=\(5,\)"),
    ((_X, _Y - 1), {}, r"must be >= 0. Received: min\(y\)=-1"),
    ((_X, _Y * 2), {"class_names": ["a", "b"]}, r"out of range.*Received: max\(y\)=2"),
    ((_X, _Y * 0.5), {}, "Received: y.dtype=float64"),
    ((_X + 300.0, _Y), {}, r"\[0, 255\]"),
    ((_X, _Y * 0), {}, "at least 2 classes"),
])
def test_bad_arguments(spec, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_data(spec, **kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda d: d.pipeline("validation"), "Received: split='validation'"),
    (lambda d: d.pipeline("train", image_shape=(8, 8, 2)), r"Received: image_shape=\(8, 8, 2\)"),
    (lambda d: d.pipeline("train", batch_size=0), "Received: batch_size=0"),
    (lambda d: d.arrays("val"), "'val' split of 'arrays' is empty"),
    (lambda d: d.arrays("train", limit=0), "Received: limit=0"),
])
def test_bad_split_arguments(call, message):
    data = load_data((np.zeros((20, 4, 4)), np.arange(20) % 2), val_fraction=0)
    with pytest.raises(ValueError, match=message):
        call(data)


def test_folder_errors(tmp_path, split_folder):
    with pytest.raises(FileNotFoundError, match="Image folder not found"):
        load_data(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No class sub-folders"):
        load_data(f"folder:{tmp_path / 'empty'}")
    _save(tmp_path / "one" / "only" / "0.png")
    with pytest.raises(ValueError, match="at least 2 classes, found only 'only'"):
        load_data(f"folder:{tmp_path / 'one'}")
    (split_folder / "test" / "triangle").mkdir()
    with pytest.raises(ValueError, match="triangle is not one of the train classes"):
        load_data(f"folder:{split_folder}")
    (split_folder / "test" / "triangle").rmdir()
    (split_folder / "train" / "circle" / "fake.jpg").write_text("<html>not found</html>")
    with pytest.raises(ValueError, match=r"circle/fake.jpg is not a JPEG/PNG/BMP/GIF image"):
        load_data(f"folder:{split_folder}")


def test_folder_class_without_images(flat_folder):
    for image in (flat_folder / "cat").glob("*.*"):
        if image.suffix != ".txt":
            image.unlink()
    with pytest.raises(ValueError, match=r"Class folder .*cat has no images"):
        load_data(f"folder:{flat_folder}")
