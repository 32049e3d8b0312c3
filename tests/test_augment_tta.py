"""airbench's augmentation and test-time augmentation as general features: translate with reflection, alternating
flips across epochs, RandAugment / AugMix presets kept out of the export, and the TTA levels."""
from collections import Counter

import numpy as np
import pytest

import keras_cnn
from keras_cnn.models.augment import AlternatingFlip, RandomShift, augmentation
from keras_cnn.utils import compat


def _unique_pixels(n=64, side=16):
    """`n` copies of a one-channel image whose pixels all differ: every output pixel names its source."""
    image = (np.arange(side * side, dtype=np.float32) / (side * side)).reshape(side, side, 1)
    return np.repeat(image[None], n, axis=0)


@pytest.mark.parametrize("pixels", [1, 2])
def test_translate_moves_pixels_by_at_most_n_with_reflection(pixels):
    x = _unique_pixels()
    side = x.shape[1]
    aug = augmentation("flip_translate", image_shape=x.shape[1:], flip=False, seed=3, translate=pixels)
    out = np.asarray(aug(x, training=True))
    sources = np.rint(out * side * side).astype(int)  # each output pixel's source index
    rows, cols = np.divmod(sources[..., 0], side)
    grid_rows, grid_cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    moved = np.maximum(np.abs(rows - grid_rows), np.abs(cols - grid_cols))
    assert moved.max() == pixels  # at most N, and N is reached
    assert np.isin(out, x[0]).all()  # whole pixels, the edge filled from the image itself (no constant fill)
    centre = out[:, pixels:-pixels, pixels:-pixels, 0]
    shifts = {tuple(np.argwhere(x[0, :, :, 0] == image[0, 0])[0] - pixels) for image in centre}
    assert len(shifts) > 4  # per-image shifts


def test_shifts_are_uniform_and_padded_as_the_test_time_views():
    """Every image comes out as one of the (2N + 1)^2 whole-pixel shifts of itself, about equally often, padded
    by reflection about the edge pixel (NumPy's and PyTorch's "reflect", as the flip+translate views)."""
    x = _unique_pixels(n=2500)
    padded = np.pad(x[0], [(2, 2), (2, 2), (0, 0)], mode="reflect")
    views = {padded[2 + dy:18 + dy, 2 + dx:18 + dx].tobytes(): (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    out = np.asarray(RandomShift(2, seed=0)(x, training=True))
    counts = Counter(views.get(image.tobytes(), "not a shift") for image in out)
    assert set(counts) == set(views.values())
    assert 0.6 * 100 < min(counts.values()) and max(counts.values()) < 1.4 * 100  # 100 each if uniform
    np.testing.assert_array_equal(np.asarray(RandomShift(2)(x, training=False)), x)


@pytest.mark.parametrize("preset", ["basic", "flip_translate"])
@pytest.mark.parametrize("side", [1, 2])
def test_shifting_presets_work_on_images_smaller_than_the_shift(preset, side):
    """A 1- or 2-pixel image cannot move 4 (or 2) pixels: the shift shrinks to what fits instead of failing."""
    x = np.random.default_rng(0).random((8, side, side, 3)).astype(np.float32)
    out = np.asarray(augmentation(preset, image_shape=(side, side, 3), flip=False, seed=0)(x, training=True))
    assert out.shape == x.shape and np.isin(out, np.append(x, 0.0)).all()


def test_alternating_flips_mirror_every_image_in_every_other_epoch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 3)).astype(np.float32) / 255
    layer = AlternatingFlip()
    mirrored = x[:, :, ::-1]
    first = np.asarray(layer(x, training=True))
    flipped = np.all(first == mirrored, axis=(1, 2, 3))
    assert 10 < flipped.sum() < 54  # about half start mirrored
    np.testing.assert_array_equal(np.asarray(layer(x, training=True)), first)  # fixed within an epoch
    layer.epoch.assign(1)
    second = np.asarray(layer(x, training=True))
    np.testing.assert_array_equal(second[flipped], x[flipped])
    np.testing.assert_array_equal(second[~flipped], mirrored[~flipped])
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


def test_training_advances_the_flip_epoch(tmp_path, digits):
    import keras

    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(int(self.model.get_layer("augment").get_layer("augment_flip").epoch.numpy()))

    keras_cnn.train("small", digits, epochs=2, batch_size=256, augment="flip_translate", width=0.125,
                    precision="float32", verbose=0, out=tmp_path / "run", callbacks=[Record()])
    assert seen[0] == 0 and seen[-1] == 1


@pytest.mark.parametrize("preset", ["randaugment", "augmix"])
def test_randaugment_and_augmix_are_absent_from_the_exported_graph(preset):
    import keras

    from keras_cnn.exporting.pipeline import inference_model

    model = keras_cnn.build("small", input_shape=(16, 16, 3), width=0.125, augment=preset)
    kinds = {"randaugment": keras.layers.RandAugment, "augmix": keras.layers.AugMix}
    assert any(isinstance(layer, kinds[preset]) for layer in compat.nested_layers(model))
    exported = inference_model(model)
    assert not any(isinstance(layer, kinds[preset]) for layer in compat.nested_layers(exported))
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(exported(x), model(x, training=False), atol=1e-5)


class _ViewRecorder:
    """A stand-in model: its 'probabilities' are a few pixels of each image, so every view gives different ones."""

    def __init__(self):
        self.calls = 0

    def predict(self, dataset, verbose=0):
        self.calls += 1
        return np.concatenate([np.asarray(x)[:, 0, :3, 0] for x in dataset])


def _numpy_view(x, flip, shift):
    if shift:
        padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")  # PyTorch's / TF's reflect
        start = 1 - shift
        x = padded[:, start:start + x.shape[1], start:start + x.shape[2]]
    return x[:, :, ::-1] if flip else x


def test_tta_level_2_averages_exactly_the_listed_views():
    """airbench's level 2: 1/4 the image, 1/4 its mirror, 1/8 each of the image shifted by one pixel down-right and
    up-left and of their mirrors; level 1 the image and its mirror; each view predicted once."""
    import tensorflow as tf

    from keras_cnn.evaluation.evaluate import predict_levels

    x = np.random.default_rng(0).random((10, 6, 6, 1)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(10) % 3]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model = _ViewRecorder()
    levels, labels = predict_levels(model, dataset, "flip+translate")
    f = lambda flip, shift: _numpy_view(x, flip, shift)[:, 0, :3, 0]  # noqa: E731
    expected = (f(False, 0) + f(True, 0)) / 4 + (f(False, 1) + f(True, 1) + f(False, -1) + f(True, -1)) / 8
    np.testing.assert_allclose(levels["flip+translate"], expected, rtol=1e-6)
    np.testing.assert_allclose(levels["flip"], (f(False, 0) + f(True, 0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(levels[None], f(False, 0), rtol=1e-6)
    assert model.calls == 6 and list(labels) == list(np.arange(10) % 3)


def test_evaluate_keeps_every_level_in_the_report(digits):
    from keras_cnn.evaluation.evaluate import evaluate

    model = keras_cnn.build("small", input_shape=(8, 8, 1), width=0.125)
    result = evaluate(model, digits, tta="flip+translate")
    assert list(result.tta_accuracy) == ["none", "flip", "flip+translate"]
    assert result.accuracy == result.tta_accuracy["flip+translate"]
    assert "tta_accuracy" in result.to_dict()
    assert evaluate(model, digits, tta="none").tta_accuracy is None
    with pytest.raises(ValueError, match=r"Received: tta='mirror'"):
        evaluate(model, digits, tta="mirror")


def test_a_run_is_evaluated_at_its_own_level_and_keeps_its_metrics(tmp_path, digits):
    import json

    from keras_cnn.evaluation.evaluate import evaluate

    run = keras_cnn.train("small", digits, epochs=1, batch_size=256, tta="flip", width=0.125, precision="float32",
                          verbose=0, out=tmp_path / "run")
    written = json.load(open(tmp_path / "run" / "metrics.json"))
    assert written["tta"] == "flip" and list(written["tta_accuracy"]) == ["none", "flip"]
    assert evaluate(run.path).tta == "flip"
    plain = evaluate(run.path, tta="none")
    assert plain.tta is None and plain.accuracy == written["tta_accuracy"]["none"]
    assert json.load(open(tmp_path / "run" / "metrics.json"))["tta"] == "flip"  # left as training wrote it


def test_cli_evaluate_and_train_take_the_levels():
    from keras_cnn.cli_parser import parser

    assert parser().parse_args(["evaluate", "RUN", "--tta", "flip+translate"]).tta == "flip+translate"
    assert parser().parse_args(["train", "small", "--tta", "flip"]).tta == "flip"
