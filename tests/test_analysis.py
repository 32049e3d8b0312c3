"""`describe`: the seeds' worked numbers, totals that match Keras, receptive fields and dropped pixels."""
import keras
import pytest

import keras_cnn
from keras_cnn.analysis import architecture as analysis
from keras_cnn.analysis import reference


def rows(summary):
    return {row.name: row for row in summary.rows}


def test_seed_004_ten_5x5x3_filters_have_760_parameters():
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(10, 5, padding="same", name="conv")])
    row = rows(keras_cnn.describe(model))["conv"]
    assert row.params == 760 and row.output_shape == (32, 32, 10)
    assert row.macs == 32 * 32 * 10 * 5 * 5 * 3


def test_seed_001_mnist_cnn_shapes():
    summary = rows(keras_cnn.describe("mnist_cnn"))
    shapes = [summary[n].output_shape for n in ("stage1_conv", "stage1_pool", "stage2_conv", "stage2_pool", "head_flatten")]
    assert shapes == [(26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (1600,)]


@pytest.mark.parametrize("size, kernel, stride, padding", [(32, 3, 1, 0), (7, 3, 2, 0), (28, 5, 2, 0), (9, 3, 3, 0)])
def test_output_sizes_follow_the_seed_003_formula(size, kernel, stride, padding):
    model = keras.Sequential([keras.Input((size, size, 1)), keras.layers.Conv2D(1, kernel, strides=stride, name="c")])
    expected = (size + 2 * padding - (kernel - 1) - 1) // stride + 1
    assert rows(keras_cnn.describe(model))["c"].output_shape[0] == expected == reference.output_size(size, kernel, stride)


def test_receptive_field_of_four_stacked_3x3_stride_2_convs():
    """Seed 003 section 12: 3, 7, 15, 31."""
    layers = [keras.layers.Conv2D(1, 3, strides=2, padding="same", name=f"c{i}") for i in range(1, 5)]
    summary = rows(keras_cnn.describe(keras.Sequential([keras.Input((32, 32, 1)), *layers])))
    assert [summary[f"c{i}"].receptive_field for i in range(1, 5)] == [3, 7, 15, 31]
    assert [summary[f"c{i}"].jump for i in range(1, 5)] == [2, 4, 8, 16]
    assert [summary[f"c{i}"].output_shape[0] for i in range(1, 5)] == [16, 8, 4, 2]


def test_dropped_pixels_are_reported():
    """Seed 004: input 7, filter 3, stride 5 does not fit; the last pixel rows are never seen."""
    model = keras.Sequential([keras.Input((7, 7, 1)), keras.layers.Conv2D(1, 3, strides=5, name="c")])
    row = rows(keras_cnn.describe(model))["c"]
    assert row.output_shape[0] == 1
    assert "does not divide evenly: the last 4 row(s) and 4 column(s) are never seen" in row.note
    fits = keras.Sequential([keras.Input((7, 7, 1)), keras.layers.Conv2D(1, 3, strides=2, name="c")])
    assert rows(keras_cnn.describe(fits))["c"].note == ""


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.endswith("_transfer") else n
                                  for n in keras_cnn.list_models()])
def test_totals_match_keras(name):
    overrides = {"width": 0.125} if "width" in keras_cnn.model_info(name)["options"] and "resnet" in name else {}
    model = keras_cnn.build(name, **overrides)
    summary = keras_cnn.describe(model)
    assert summary.total_params == model.count_params() == sum(r.params for r in summary.rows)
    assert summary.trainable_params == sum(int(w.numpy().size) for w in model.trainable_weights)
    assert summary.total_macs > 0
    as_dict = summary.to_dict()
    assert as_dict["model"] == name and len(as_dict["rows"]) == len(summary.rows)
    first = ("backbone",) if name.endswith("_transfer") else ("stem_conv", "stage1_conv")  # the first layer we name
    assert name in str(summary) and any(layer in str(summary) for layer in first)


def test_model_macs_include_nested_models():
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same")], name="backbone")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inner(inputs))))
    conv, dense = 8 * 8 * 4 * (3 * 3 * 3), (8 * 8 * 4) * 2
    assert analysis.model_macs(model) == conv + dense
    assert keras_cnn.describe(model).total_macs == dense  # the table stops at the nested model


def test_residual_add_keeps_the_larger_receptive_field():
    summary = rows(keras_cnn.describe("resnet18", width=0.125))
    block = ("stage2_block1_conv2", "stage2_block1_shortcut_conv", "stage2_block1_add")
    conv, shortcut, add = (summary[n].receptive_field for n in block)
    assert add == max(conv, shortcut) == conv > shortcut


def test_augmentation_does_not_break_the_receptive_field_chain():
    plain, augmented = rows(keras_cnn.describe("small")), rows(keras_cnn.describe("small", augment="basic"))
    assert augmented["stage2_pool"].receptive_field == plain["stage2_pool"].receptive_field == 10
