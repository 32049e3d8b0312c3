"""Grad-CAM: the map finds a planted cue, works through the nested backbones of transfer models, in mixed
precision and at any input size the model takes, and `keras-cnn show --cam` draws it."""
import keras
import numpy as np
import pytest

import keras_cnn
from keras_cnn import cli
from keras_cnn.evaluation.explaining import explain, spatial_layer_names

CUE = 4  # side of the bright square


def cue_images(n, seed=0):
    """16x16 gray noise; class 1 has a bright square in the top-left corner, class 0 in another corner."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, (n, 16, 16, 1)).astype("float32")
    y = np.arange(n) % 2
    corners = [(0, 0), (0, 16 - CUE), (16 - CUE, 0), (16 - CUE, 16 - CUE)]
    for image, label in zip(x, y):
        top, left = corners[0] if label else corners[rng.integers(1, 4)]
        image[top:top + CUE, left:left + CUE] = 255
    return x, y


def conv_net(input_shape, head="flatten", classes=2):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = (keras.layers.Flatten() if head == "flatten" else keras.layers.GlobalAveragePooling2D())(x)
    outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def cue_model():
    keras.utils.set_random_seed(0)
    model = conv_net((16, 16, 1))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*cue_images(512), epochs=6, batch_size=64, verbose=0)
    return model


def test_the_map_peaks_on_the_planted_cue(cue_model):
    x, y = cue_images(40, seed=1)
    assert np.mean(cue_model.predict(x, verbose=0).argmax(1) == y) > 0.95  # it learned the cue
    cued = x[y == 1]
    explanation = explain(cue_model, cued, class_index=1)
    assert explanation.layer == "conv2"  # the last spatial layer (Flatten is not)
    assert explanation.heatmaps.shape == (len(cued), 16, 16)
    assert explanation.heatmaps.min() >= 0 and explanation.heatmaps.max() <= 1  # scaled per map, then resized
    assert (explanation.heatmaps.max(axis=(1, 2)) > 0.5).all()
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in explanation.heatmaps]
    in_corner = [row < 8 and column < 8 for row, column in peaks]
    assert np.mean(in_corner) >= 0.9, peaks
    # the mass of the map is in the cue's quarter, not spread over the image
    assert np.mean([m[:8, :8].sum() / m.sum() for m in explanation.heatmaps]) > 0.5


def test_default_class_is_the_top_class_and_a_named_layer_is_used(cue_model):
    x, _ = cue_images(6, seed=2)
    explanation = explain(cue_model, x, layer="conv1")
    assert explanation.layer == "conv1"
    assert (explanation.class_indices == cue_model.predict(x, verbose=0).argmax(1)).all()
    assert explanation.images.shape == x.shape


@pytest.mark.parametrize("name, options", [("resnet18_transfer", {"width": 0.125}),
                                           ("mobilenetv2_transfer", {"width": 0.35})])
def test_transfer_models_are_explained_inside_their_nested_backbone(name, options):
    model = keras_cnn.build(name, input_shape=(32, 32, 3), num_classes=4, weights=None, **options)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    explanation = explain(model, x)
    backbone = model.get_layer("backbone")
    assert explanation.layer.startswith("backbone/")  # found from the structure, inside the nested model
    assert explanation.layer.split("/")[1] == [lay.name for lay in backbone.layers
                                               if len(lay.output.shape) == 4][-1]
    assert explanation.heatmaps.shape == (2, 32, 32) and np.isfinite(explanation.heatmaps).all()
    assert explanation.probabilities.shape == (2, 4)


def test_a_named_layer_inside_the_backbone():
    model = keras_cnn.build("resnet18_transfer", input_shape=(32, 32, 3), num_classes=3, weights=None, width=0.125)
    inner = [name for name in spatial_layer_names(model) if name.startswith("backbone/stage3")][-1]
    explanation = explain(model, np.full((1, 32, 32, 3), 100.0, "float32"), layer=inner.split("/")[1])
    assert explanation.layer == inner and explanation.heatmaps.shape == (1, 32, 32)


def test_mixed_precision_gives_the_float32_map():
    x, _ = cue_images(4, seed=3)
    keras.utils.set_random_seed(1)
    reference = conv_net((16, 16, 1))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = conv_net((16, 16, 1))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(reference.get_weights())
    assert mixed.get_layer("conv2").compute_dtype == "bfloat16"
    got, want = explain(mixed, x, class_index=0), explain(reference, x, class_index=0)
    assert got.heatmaps.dtype == np.float32 and np.isfinite(got.heatmaps).all()
    assert np.abs(got.heatmaps - want.heatmaps).mean() < 0.1  # bfloat16 has 8 bits of mantissa


def test_any_input_size_the_model_takes():
    model = conv_net((None, None, 3), head="gap", classes=3)
    for shape in ((24, 20, 3), (9, 13, 3)):
        explanation = explain(model, np.random.default_rng(0).uniform(0, 255, (1, *shape)).astype("float32"))
        assert explanation.heatmaps.shape == (1, *shape[:2])


def test_the_package_entry_point_stays_the_function():
    import keras_cnn.evaluation.explaining  # noqa: F401  a submodule import must not shadow keras_cnn.explain

    assert keras_cnn.explain is explain


def test_show_cam_writes_the_overlay(run_dir, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "seven.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(image)
    assert cli.main(["show", str(run_dir), "--image", str(image), "--cam", "--out", str(tmp_path / "out")]) == 0
    written = tmp_path / "out" / "cam" / "seven.png"
    assert capsys.readouterr().out.strip() == str(written)
    assert Image.open(written).format == "PNG"
