"""Pictures: feature maps from the inference graph, filters, receptive-field chart, and the `show` command."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_cnn
from keras_cnn.analysis import viz


def png(path):
    image = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert image.std() > 5, f"{path} looks blank"
    return image


@pytest.fixture(scope="module")
def model():
    return keras_cnn.build("small", input_shape=(12, 12, 1), width=0.25, augment="strong")


def test_feature_maps_come_from_the_inference_graph(model, tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (12, 12, 1)).astype("float32")
    first = png(viz.save(viz.feature_maps(model, x, ["stage1_conv"]), tmp_path / "a.png"))
    second = png(viz.save(viz.feature_maps(model, x, ["stage1_conv"]), tmp_path / "b.png"))
    np.testing.assert_array_equal(first, second)  # no augmentation, BatchNorm in inference mode
    probe = keras.Model(model.input, model.get_layer("stage1_conv").output)
    expected = probe(x[None], training=False)
    assert expected.shape == (1, 12, 12, 8)


def test_every_stage_gets_a_labelled_block(model, tmp_path):
    figure = viz.feature_maps(model, np.zeros((12, 12, 1)))
    titles = [sub.get_suptitle() for sub in figure.subfigs]
    assert titles == ["stage1_conv: 8 maps of 12x12", "stage1_pool: 8 maps of 6x6", "stage2_conv: 16 maps of 6x6",
                      "stage2_pool: 16 maps of 3x3"]
    image = png(viz.save(figure, tmp_path / "all.png"))
    width, height = figure.get_size_inches() * 100
    assert image.shape == (round(height), round(width)) and image.shape[1] == 1200  # 12 inches at 100 dpi


def test_many_channels_are_capped_with_a_note():
    wide = keras_cnn.build("small", input_shape=(8, 8, 1))
    figure = viz.feature_maps(wide, np.zeros((8, 8, 1)), ["stage2_conv"], max_channels=16)
    assert figure.get_suptitle() == "stage2_conv: 64 maps of 4x4 (first 16 of 64 channels)"


def test_unknown_layer_is_a_clear_error(model):
    with pytest.raises(ValueError, match="has no layer 'conv9'.*stage1_conv"):
        viz.feature_maps(model, np.zeros((12, 12, 1)), ["conv9"])
    with pytest.raises(ValueError, match="'head_dense1' is not a Conv2D layer"):
        viz.filters(model, "head_dense1")


@pytest.mark.parametrize("channels", [1, 3])
def test_filters(channels, tmp_path):
    model = keras_cnn.build("lenet", input_shape=(32, 32, channels))
    figure = viz.filters(model)
    assert figure.get_suptitle().startswith(f"lenet stage1_conv: 6 filters of 5x5x{channels}")
    assert len([a for a in figure.axes if a.images]) == 6
    png(viz.save(figure, tmp_path / "filters.png"))


def test_receptive_field_chart_has_both_curves(tmp_path):
    figure = viz.receptive_field("deeper")
    lines = figure.axes[0].get_lines()
    assert list(lines[0].get_ydata()) == [3, 5, 6, 10, 12, 20, 24]
    assert list(lines[1].get_ydata()) == [32, 32, 16, 16, 8, 8, 4]
    png(viz.save(figure, tmp_path / "rf.png"))


def test_show_and_describe_plot_commands(tmp_path):
    model = keras_cnn.build("small", input_shape=(8, 8, 1), width=0.25)
    model.save(tmp_path / "m.keras")
    Image.fromarray(np.tile(np.arange(8, dtype=np.uint8) * 30, (8, 1))).save(tmp_path / "ramp.png")
    cli = [sys.executable, "-m", "keras_cnn.cli"]
    result = subprocess.run([*cli, "show", str(tmp_path / "m.keras"), "--image", str(tmp_path / "ramp.png"),
                             "--filters", "--out", str(tmp_path / "pics")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(os.listdir(tmp_path / "pics" / "feature_maps"))
    assert written == ["ramp_stage1_conv.png", "ramp_stage1_pool.png", "ramp_stage2_conv.png", "ramp_stage2_pool.png"]
    png(tmp_path / "pics" / "filters.png")
    result = subprocess.run([*cli, "describe", "lenet", "--plot", "--plot-out", str(tmp_path / "rf.png")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and os.path.isfile(tmp_path / "rf.png")
    result = subprocess.run([*cli, "show", str(tmp_path / "m.keras")], capture_output=True, text=True)
    assert result.returncode == 2 and "--image IMAGE" in result.stderr
