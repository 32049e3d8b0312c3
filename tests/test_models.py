"""Every registered model, built for real: the model contract, training, saving, every override.

Parametrized over `list_models()`, so a newly registered model is tested without a new test.
Models are built small (`width`) and at small inputs to keep the suite fast.
"""
import functools

import keras
import numpy as np
import pytest

import keras_cnn
from keras_cnn.models import registry
from keras_cnn.models.layers import GELU

MODELS = keras_cnn.list_models()
SMALL = {"resnet18": {"width": 0.125}, "resnet34": {"width": 0.125}, "deeper": {"width": 0.25},
         "airbench": {"width": 0.25}}
# resnet34 is resnet18 with more blocks, and the keras.applications backbones are large (tests/test_transfer.py
# covers them quickly at small sizes): their generic tests here run with `pytest -m slow`.
HEAVY = {"resnet34", *keras_cnn.list_models("*_transfer")}


def each_model(names=MODELS):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def tiny(name, **overrides):
    """A fast variant of `name`: narrow, at a small input that still passes the shape check."""
    side = max(keras_cnn.model_info(name, **overrides)["smallest_input"][0], 12)
    return keras_cnn.build(name, input_shape=(side, side + 2, 3), **{**SMALL.get(name, {}), **overrides})


def images(model, n=4, seed=0):
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


@pytest.mark.parametrize("name", each_model())
def test_default_build_follows_the_contract(name):
    model = keras_cnn.build(name)
    info = keras_cnn.model_info(name)
    assert isinstance(model, keras.Model) and model.__class__.__name__ == "Functional"
    assert tuple(model.input_shape[1:]) == info["input_shape"]
    assert model.output_shape == (None, 10)
    assert model.layers[1].name == "preprocess"
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    out = model(images(model, 2), training=False)
    np.testing.assert_allclose(np.sum(out, axis=1), 1.0, rtol=1e-5)  # softmax


@pytest.mark.parametrize("name", each_model())
def test_spatial_plan_matches_the_built_layers(name):
    """The pure-Python shape check walks the same layers, with the same sizes, as the real model."""
    model = tiny(name)
    config = registry.resolve(name, SMALL.get(name, {}))
    height = model.input_shape[1]
    from keras_cnn.models.shapes import output_size

    for op in registry.family_of(name).spatial_ops(config):
        height = output_size(height, op)
        assert model.get_layer(op.name).output.shape[1] == height, op.name


@pytest.mark.parametrize("name", each_model())
def test_non_default_shape_trains_one_step(name):
    model = tiny(name, augment="basic")
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    x = images(model)
    y = keras.utils.to_categorical(np.arange(4) % 10, 10)
    loss = model.train_on_batch(x, y, return_dict=True)["loss"]
    assert np.isfinite(loss)


@pytest.mark.parametrize("name", each_model())
def test_keras_file_round_trip_in_safe_mode(name, tmp_path):
    model = tiny(name, augment="strong")
    x = images(model)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


@pytest.mark.parametrize("name", each_model())
def test_config_round_trip(name):
    model = tiny(name)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = images(model)
    np.testing.assert_allclose(clone(x, training=False), model(x, training=False), atol=1e-6)


@pytest.mark.parametrize("name", each_model())
def test_weights_file_loads_into_the_same_architecture_only(name, tmp_path):
    model = tiny(name)
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    side = model.input_shape[1]
    again = keras_cnn.build(name, input_shape=model.input_shape[1:], weights=path, **SMALL.get(name, {}))
    x = images(model)
    np.testing.assert_allclose(again(x, training=False), model(x, training=False), atol=1e-6)
    with pytest.raises(ValueError, match=f"cannot load weights from .* into {name}"):
        keras_cnn.build(name, input_shape=(side, side, 3), weights=path, num_classes=3, **SMALL.get(name, {}))


def alternatives(name):
    """One non-default value for every option the model takes."""
    config = registry.resolve(name)
    picks = {
        "batchnorm": not config.get("batchnorm"),
        "dropout": 0.3,
        "head": "gmp" if config.get("head") != "gmp" else "flatten",
        "activation": "gelu",
        "filters": [4] * len(config["stage_filters"]),
        "stages": len(config["stage_filters"]) + 1,
        "width": 0.5,
        "kernel_size": 5 if config.get("kernel_size") != 5 else 3,
        "downsample": "avgpool" if config.get("downsample") != "avgpool" else "stride",
        "augment": "cutout",
        "flip": False,
        "padding": "valid" if config.get("padding") == "same" else "same",
        "stem": 8,
        "dense": [16],
        "dense_activation": "leaky_relu",
        "bn_after_activation": not config.get("bn_after_activation"),
        "pool_last": not config.get("pool_last"),
        "blocks": [1] * len(config["stage_filters"]),
        "bn_scale": not config.get("bn_scale", True),
        "bn_momentum": 0.5,
        "bn_epsilon": 1e-3,
        "head_scale": 0.5,
        "head_bias": not config.get("head_bias", True),
        "head_init": "unit_uniform",
        "stem_offset": True,
        "kernel_initializer": "dirac",
        "stem_init": "whitening",
    }
    options = registry.valid_options(name)
    assert set(options) <= set(picks), f"no test value for {set(options) - set(picks)}"
    return [(option, picks[option]) for option in sorted(options)]


# Options that act only together with another one: the partner that makes them matter.
PARTNERS = {"flip": {"augment": "basic"}, "dense_activation": {"dense": [16]}, "bn_after_activation": {"batchnorm": True},
            "stem_offset": {"stem_init": "whitening"}}


@functools.cache
def baseline_config(name, partner_items):
    return tiny(name, **dict(partner_items)).get_config()


@pytest.mark.parametrize(
    "name, option, value",
    [pytest.param(n, o, v, marks=[pytest.mark.slow] if n in HEAVY else []) for n in MODELS for o, v in alternatives(n)],
)
def test_every_override_changes_the_architecture(name, option, value):
    partner = PARTNERS.get(option, {})
    model = tiny(name, **partner, **{option: value})
    assert model.output_shape == (None, 10)
    assert model.get_config() != baseline_config(name, tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                                                    for k, v in partner.items())))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"flip": False}, "small: `flip` has no effect without augmentation"),
        ({"dense_activation": "gelu", "dense": []}, "small: `dense_activation` has no effect without dense layers"),
        ({"bn_after_activation": True, "batchnorm": False}, "small: `bn_after_activation` has no effect without"),
    ],
)
def test_overrides_without_effect_are_refused(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        keras_cnn.build("small", **overrides)


def layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


def test_overrides_do_what_they_say():
    assert not any("BatchNormalization" in t for t in layer_types(keras_cnn.build("small", batchnorm=False)))
    assert "FusedBatchNormalization" in layer_types(keras_cnn.build("small"))
    assert "GlobalAveragePooling2D" in layer_types(keras_cnn.build("small", head="gap"))
    assert keras_cnn.build("small", dropout=0.5).get_layer("head_dropout").rate == 0.5
    assert type(keras_cnn.build("small", activation="gelu").get_layer("stage1_act")) is GELU
    assert keras_cnn.build("small", filters=[8, 16]).get_layer("stage2_conv").filters == 16
    assert keras_cnn.build("small", width=0.5).get_layer("stage2_conv").filters == 32
    assert keras_cnn.build("small", kernel_size=5).get_layer("stage1_conv").kernel_size == (5, 5)
    strided = keras_cnn.build("small", downsample="stride")
    assert strided.get_layer("stage1_conv").strides == (2, 2) and "MaxPooling2D" not in layer_types(strided)
    assert "AveragePooling2D" in layer_types(keras_cnn.build("small", downsample="avgpool"))
    assert keras_cnn.build("small", augment="basic").layers[2].name == "augment"
    assert len(keras_cnn.build("resnet18", stages=2, width=0.125).get_layer("stage2_block2_conv2").output.shape) == 4


def test_seed_architectures_have_the_seeds_parameter_counts():
    """Counted by hand from the seeds' PyTorch definitions (Keras adds 2 BN statistics per channel)."""
    lenet = 3 * 25 * 6 + 6 + 6 * 25 * 16 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10
    assert keras_cnn.build("lenet").count_params() == lenet == 62006
    mnist = 9 * 32 + 32 + 9 * 32 * 64 + 64 + 1600 * 128 + 128 + 128 * 10 + 10
    assert keras_cnn.build("mnist_cnn").count_params() == mnist
    simple = 27 * 16 + 16 + 9 * 16 * 32 + 32 + 32 * 16 * 16 * 128 + 128 + 1290
    assert keras_cnn.build("simple").count_params() == simple
    # SmallCNN without the conv biases that BatchNorm cancels: 4 BN values per channel.
    small = 27 * 32 + 4 * 32 + 9 * 32 * 64 + 4 * 64 + 64 * 8 * 8 * 128 + 128 + 1290
    assert keras_cnn.build("small").count_params() == small
    deeper = 27 * 64 + 9 * 64 * 64 + 9 * 64 * 128 + 9 * 128 * 256 + 4 * (64 + 64 + 128 + 256) + 256 * 10 + 10
    assert keras_cnn.build("deeper").count_params() == deeper


def test_airbench_pools_before_normalising_and_costs_a_fifth_of_resnet18():
    names = [layer.name for layer in keras_cnn.build("airbench").layers]
    for stage in ("stage1", "stage2", "stage3"):
        order = [names.index(f"{stage}_{part}") for part in ("conv1", "pool", "bn1", "act1", "conv2", "bn2", "act2")]
        assert order == sorted(order)
    macs = keras_cnn.describe("airbench").total_macs
    assert 115e6 < macs < 121e6 and 0.19 < macs / keras_cnn.describe("resnet18").total_macs < 0.23


def _in_seed_order(model):
    """The plain model's layers as the seed orders them: each `_act` back in front of its `_pool`."""
    layers = list(model.layers[1:])
    for i, layer in enumerate(layers):
        if layer.name.endswith("_act") and layers[i - 1].name == layer.name.replace("_act", "_pool"):
            layers[i - 1], layers[i] = layer, layers[i - 1]
    return layers


@pytest.mark.parametrize("name, activation", [("small", "relu"), ("deeper", "leaky_relu"), ("lenet", "relu")])
def test_activation_after_max_pool_computes_the_seed_order_function(name, activation):
    """ReLU runs after the max pool (a quarter of the elements): the outputs and every gradient must equal
    the seed's conv -> [BN] -> act -> pool computed by the very same layers."""
    import tensorflow as tf

    model = keras_cnn.build(name, input_shape=(16, 16, 3), dropout=0.0, activation=activation, num_classes=10)
    names = [layer.name for layer in model.layers]
    assert names.index("stage1_pool") < names.index("stage1_act")
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")

    def loss_and_gradients(apply):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(apply()))
        return loss, tape.gradient(loss, model.trainable_weights)

    def seed_order():
        h = x
        for layer in _in_seed_order(model):
            h = layer(h, training=True)
        return h

    ours, ours_grads = loss_and_gradients(lambda: model(x, training=True))
    seed, seed_grads = loss_and_gradients(seed_order)
    np.testing.assert_allclose(ours, seed, rtol=1e-5)
    for a, b in zip(ours_grads, seed_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_activation_stays_before_pools_it_does_not_commute_with():
    for overrides in ({"activation": "gelu"}, {"downsample": "avgpool"}):
        names = [layer.name for layer in keras_cnn.build("small", **overrides).layers]
        assert names.index("stage1_act") < names.index("stage1_pool"), overrides
    names = [layer.name for layer in keras_cnn.build("compact").layers]  # BN after the activation
    assert names.index("stage1_act") < names.index("stage1_bn") < names.index("stage1_pool")


def test_binary_and_logit_heads():
    binary = keras_cnn.build("small", num_classes=1)
    assert binary.output_shape == (None, 1)
    assert binary.get_layer("predictions").get_config()["activation"] == "sigmoid"
    logits = keras_cnn.build("small", classifier_activation=None)
    out = logits(images(logits, 2), training=False)
    assert not np.allclose(np.sum(out, axis=1), 1.0)


def test_predictions_stay_float32_under_mixed_precision():
    previous = keras.mixed_precision.dtype_policy()
    try:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        model = keras_cnn.build("small", input_shape=(16, 16, 3))
        assert model.get_layer("stage1_conv").compute_dtype == "bfloat16"
        assert model(images(model, 2), training=False).dtype == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def top_input(model):
    """The tensor a model's head starts from: the input of its `head_pool` or `head_flatten` layer."""
    names = {layer.name for layer in model.layers}
    return model.get_layer("head_pool" if "head_pool" in names else "head_flatten").input


@pytest.mark.parametrize("name", each_model())
def test_without_its_top_a_model_is_a_feature_extractor(name):
    """include_top=False, pooling=None / "avg" / "max" as keras.applications: the layers up to the head, same names."""
    full = tiny(name)
    side = full.input_shape[1:]
    headless = keras_cnn.build(name, input_shape=side, include_top=False, **SMALL.get(name, {}))
    assert headless.output_shape == tuple(top_input(full).shape)
    assert [layer.name for layer in headless.layers] == [layer.name for layer in full.layers][:len(headless.layers)]
    channels = headless.output_shape[-1]
    for pooling, layer in (("avg", "avg_pool"), ("max", "max_pool")):
        pooled = keras_cnn.build(name, input_shape=side, include_top=False, pooling=pooling, **SMALL.get(name, {}))
        assert pooled.output_shape == (None, channels) and pooled.layers[-1].name == layer
    headless.set_weights(full.get_weights()[:len(headless.get_weights())])  # the same weights, in the same order
    x = images(full)
    np.testing.assert_allclose(headless(x, training=False), keras.Model(full.input, top_input(full))(x, training=False),
                               rtol=1e-5, atol=1e-5)


def test_resnet18_without_its_top_gives_512_features():
    assert keras_cnn.build("resnet18", include_top=False, pooling="avg").output_shape == (None, 512)


@pytest.mark.parametrize("arguments, fragment", [
    (dict(pooling="avg"), "`pooling` applies to a model without its top (include_top=False). Received: pooling='avg'"),
    (dict(include_top=False, pooling="mean"), "Received: pooling='mean'"),
    (dict(include_top="no"), "Received: include_top='no'"),
])
def test_bad_top_arguments_fail_in_one_line(arguments, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        keras_cnn.build("small", **arguments)
