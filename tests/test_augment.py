"""Tests for keras_cnn.models.augment: shapes, inference identity, per-image randomness,
the `basic` shift geometry, the custom RandomResizedCrop, and .keras round trips."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_cnn.models.augment import PRESETS, AlternatingFlip, RandomResizedCrop, augmentation

ACTIVE = [p for p in PRESETS if p != "none"]
SHAPES = [(32, 32, 3), (8, 8, 1)]
REPO = Path(__file__).resolve().parents[1]


def identical_batch(shape, n=64, seed=0):
    """n copies of one random image: any variation in the output is the augmentation's."""
    image = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return np.repeat(image[None], n, axis=0)


def n_distinct(batch):
    return len(np.unique(np.asarray(batch).reshape(len(batch), -1).round(5), axis=0))


def test_none_is_no_augmentation():
    assert augmentation("none", image_shape=(32, 32, 3)) is None


def test_bad_preset_message():
    with pytest.raises(ValueError, match=r"'none', 'basic', 'strong', 'cutout'.*Received: augment='xyz'$"):
        augmentation("xyz", image_shape=(32, 32, 3))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("preset", ACTIVE)
def test_shapes_identity_and_per_image_randomness(preset, shape):
    aug = augmentation(preset, image_shape=shape, seed=1, name="aug")
    assert isinstance(aug, keras.Sequential) and aug.name == "aug"
    x = identical_batch(shape)
    inferred = np.asarray(aug(x, training=False))
    np.testing.assert_array_equal(inferred, x)  # inference is exactly the identity
    trained = np.asarray(aug(x, training=True))
    assert trained.shape == x.shape
    assert n_distinct(trained) > len(x) // 4  # identical inputs, many different outputs
    # Each layer on its own must draw per image: one draw per batch gives 1 distinct output. (AlternatingFlip is
    # derandomised: identical images are flipped alike.)
    for layer in [layer for layer in aug.layers if not isinstance(layer, AlternatingFlip)]:
        assert n_distinct(layer(x, training=True)) >= 2, layer.name


def test_strong_colour_layers_depend_on_channels():
    rgb = augmentation("strong", image_shape=(32, 32, 3))
    gray = augmentation("strong", image_shape=(8, 8, 1))
    assert any(isinstance(layer, keras.layers.RandomGrayscale) for layer in rgb.layers)
    assert not any(isinstance(layer, keras.layers.RandomGrayscale) for layer in gray.layers)
    (jitter,) = [layer for layer in gray.layers if isinstance(layer, keras.layers.RandomColorJitter)]
    assert jitter.saturation_factor is None and jitter.hue_factor is None
    assert jitter.brightness_factor is not None and jitter.contrast_factor is not None


def test_strong_contrast_goes_both_ways():
    # RandomContrast(0.2) would only ever raise contrast; the preset must also lower it.
    (jitter,) = [layer for layer in augmentation("strong", image_shape=(32, 32, 3)).layers
                 if isinstance(layer, keras.layers.RandomColorJitter)]
    assert jitter.random_contrast.factor == (0.2, 0.2)


def test_basic_shifts_whole_pixels_with_black_fill_and_flips():
    aug = augmentation("basic", image_shape=(32, 32, 3), seed=3)
    # One bright pixel at row 10, column 5: unflipped it lands in columns 1..9,
    # flipped (column 31 - c) in 22..30, so both cases are told apart.
    dot = np.zeros((256, 32, 32, 3), np.float32)
    dot[:, 10, 5, :] = 1.0
    out = np.asarray(aug(dot, training=True))
    rows, cols, flips = [], [], []
    for image in out:
        assert np.array_equal(np.unique(image), [0.0, 1.0])  # moved whole, not interpolated
        (r, c), = np.argwhere(image.any(-1))
        rows.append(r - 10)
        cols.append((31 - c if c >= 16 else c) - 5)
        flips.append(c >= 16)
    assert max(map(abs, rows)) == 4 and max(map(abs, cols)) == 4
    assert len(set(rows)) == 9 and len(set(cols)) == 9  # every shift in -4..4 occurs
    assert 0.3 < np.mean(flips) < 0.7
    # A white image shows the fill: a black border around a white rectangle of
    # (32 - |dy|) x (32 - |dx|) pixels, never reflected or blended.
    out = np.asarray(aug(np.ones((64, 32, 32, 3), np.float32), training=True))
    assert set(np.unique(out)) <= {0.0, 1.0}
    for image in out[..., 0]:
        white_rows, white_cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
        assert 28 <= len(white_rows) and 28 <= len(white_cols)
        assert image.sum() == len(white_rows) * len(white_cols)
    assert (out == 0).any()


def test_cutout_always_erases_a_half_side_square():
    aug = augmentation("cutout", image_shape=(32, 32, 3), flip=False, seed=0)
    out = np.asarray(aug(np.ones((64, 32, 32, 3), np.float32), training=True))
    corners = []
    for image in out:
        erased = np.argwhere(np.all(image == 0.5, axis=-1))  # mid-grey fill, all channels
        assert len(erased) == 16 * 16 and np.ptp(erased, axis=0).tolist() == [15, 15]
        assert np.all(image[image != 0.5] == 1.0)
        corners.append(tuple(erased.min(0)))
    assert len(set(corners)) > 16  # a different place for each image


def test_flip_false_has_no_flip_layer():
    for preset in ACTIVE:
        layers = augmentation(preset, image_shape=(32, 32, 3), flip=False).layers
        assert layers and not any(isinstance(layer, keras.layers.RandomFlip) for layer in layers), preset
        assert any(isinstance(layer, keras.layers.RandomFlip)
                   for layer in augmentation(preset, image_shape=(32, 32, 3)).layers), preset


def test_same_seed_same_draws():
    x = identical_batch((32, 32, 3), n=8)
    a, b = (augmentation("strong", image_shape=(32, 32, 3), seed=7) for _ in range(2))
    np.testing.assert_array_equal(a(x, training=True), b(x, training=True))


def test_random_resized_crop_geometry():
    # Channel 0 holds the column index, channel 1 the row index: a crop resized by
    # bilinear interpolation keeps them linear, slope = box side / image side.
    # The image is not square so the pixel aspect ratio is checked, as torchvision defines it.
    height, width = 24, 32
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    image = np.stack([cols, rows, np.zeros_like(cols)], -1).astype(np.float32)
    out = np.asarray(RandomResizedCrop(seed=0)(np.repeat(image[None], 128, 0), training=True))
    box_w = np.diff(out[:, 5, 1:-1, 0], axis=1).mean(1)  # skip edge pixels (clamped)
    box_h = np.diff(out[:, 1:-1, 5, 1], axis=1).mean(1)
    x0 = out[:, 5, 1, 0] - box_w - 0.5 * (box_w - 1)  # where output pixel 1 samples, see the layer
    y0 = out[:, 1, 5, 1] - box_h - 0.5 * (box_h - 1)
    pixel_ratio = box_w * width / (box_h * height)
    eps = 1e-3
    assert np.all((0.6 - eps <= box_w * box_h) & (box_w * box_h <= 1 + eps))  # area scale
    assert np.all((3 / 4 - eps <= pixel_ratio) & (pixel_ratio <= 4 / 3 + eps))  # w / h in pixels
    assert np.all(x0 >= -eps) and np.all(x0 + box_w * width <= width + eps)  # inside the image
    assert np.all(y0 >= -eps) and np.all(y0 + box_h * height <= height + eps)
    assert np.ptp(box_w * box_h) > 0.3 and np.ptp(x0) > 1 and np.ptp(y0) > 1  # per image
    layer = RandomResizedCrop(scale=(0.3, 0.5), ratio=(1, 2), seed=5, name="rrc")
    clone = RandomResizedCrop.from_config(layer.get_config())
    assert (clone.scale, clone.ratio, clone.seed, clone.name) == ((0.3, 0.5), (1, 2), 5, "rrc")
    np.testing.assert_allclose(  # the full box is the identity
        RandomResizedCrop(scale=(1, 1), ratio=(1, 1))(image[None], training=True)[0], image, atol=1e-4)


LOADER = textwrap.dedent("""
    import json, sys
    import keras, numpy as np
    import keras_cnn.models.augment  # registers keras_cnn>RandomResizedCrop
    folder, presets = sys.argv[1], sys.argv[2:]
    x = np.load(f"{folder}/x.npy")
    result = {}
    for preset in presets:
        model = keras.saving.load_model(f"{folder}/{preset}.keras", safe_mode=True)
        np.save(f"{folder}/{preset}_reloaded.npy", model.predict(x, verbose=0))
        trained = np.asarray(model(x, training=True))
        result[preset] = {"config": model.get_layer("augment").get_config(),
                          "augments": bool(np.abs(trained - model(x, training=False)).max() > 0)}
    print(json.dumps(result))
""")


def test_model_saves_and_reloads_in_fresh_process(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for preset in ACTIVE:
        inputs = keras.Input((32, 32, 3))
        h = keras.layers.Rescaling(1 / 255, name="preprocess")(inputs)
        h = augmentation(preset, image_shape=(32, 32, 3), seed=0)(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, keras.layers.Dense(3)(h))
        model.compile("sgd", "mse")
        model.fit(x, np.zeros((16, 3)), batch_size=8, epochs=1, verbose=0)  # graph-mode training path
        predicted = model.predict(x, verbose=0)
        np.testing.assert_array_equal(predicted, model(x, training=False))  # deterministic inference
        aug = model.get_layer("augment")
        assert keras.Sequential.from_config(aug.get_config()).get_config() == aug.get_config()
        model.save(tmp_path / f"{preset}.keras")
        expected[preset] = (predicted, aug.get_config())
    run = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path), *ACTIVE],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    reloaded = json.loads(run.stdout.strip().splitlines()[-1])
    for preset, (predicted, config) in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{preset}_reloaded.npy"), predicted)
        assert reloaded[preset]["config"] == json.loads(json.dumps(config)), preset
        assert reloaded[preset]["augments"], preset
