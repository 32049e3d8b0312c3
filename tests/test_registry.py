"""The registry's pure-Python side: names, wildcards, validation and shape arithmetic."""
import dataclasses
import os
import shutil
import subprocess
import sys

import pytest

import keras_cnn
from keras_cnn.models import registry, shapes
from keras_cnn.models.family import Family
from keras_cnn.models.shapes import Op

SEED_MODELS = {"lenet", "mnist_cnn", "simple", "small", "deeper", "compact", "resnet18", "resnet34"}


def test_catalogue_has_every_seed_architecture_sorted():
    names = keras_cnn.list_models()
    assert SEED_MODELS <= set(names)
    assert names == sorted(names)


def test_list_models_wildcards():
    assert keras_cnn.list_models("resnet??") == ["resnet18", "resnet34"]
    assert keras_cnn.list_models("*net") == ["lenet"]
    assert set(keras_cnn.list_models("res*")) >= {"resnet18", "resnet34"}
    assert keras_cnn.list_models("nothing*") == []


def test_registering_a_name_twice_is_an_error():
    def small():
        """A second model called small."""

    with pytest.raises(ValueError, match="already registered"):
        registry.register_model(small)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"Did you mean 'small'.*keras-cnn list.*Received: name='smal'"):
        keras_cnn.build("smal")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"dropout": 1.5}, "Received: dropout=1.5"),
        ({"dropout": -0.1}, "Received: dropout=-0.1"),
        ({"dropout": "high"}, "Received: dropout='high'"),
        ({"batchnorm": 1}, "Received: batchnorm=1"),
        ({"head": "avg"}, "Received: head='avg'"),
        ({"activation": "tanh"}, "Received: activation='tanh'"),
        ({"filters": []}, "Received: filters=[]"),
        ({"filters": [32, 0]}, "Received: filters=[32, 0]"),
        ({"filters": 32}, "Received: filters=32"),
        ({"stages": 0}, "Received: stages=0"),
        ({"width": 0}, "Received: width=0"),
        ({"kernel_size": 0}, "Received: kernel_size=0"),
        ({"downsample": "conv"}, "Received: downsample='conv'"),
        ({"augment": "heavy"}, "Received: augment='heavy'"),
        ({"bogus": 1}, "small does not take the option 'bogus'; it takes: activation, augment"),
        ({"filters": [8, 16, 32], "stages": 2}, "Received: filters=(8, 16, 32), stages=2"),
    ],
)
def test_invalid_overrides_fail_before_building(overrides, fragment):
    with pytest.raises(ValueError) as info:
        registry.resolve("small", overrides)
    assert fragment in str(info.value)


def test_family_specific_option_is_refused_elsewhere():
    with pytest.raises(ValueError, match="resnet18 does not take the option 'padding'"):
        registry.resolve("resnet18", {"padding": "valid"})
    with pytest.raises(ValueError, match="Received: blocks=\\(1, 1\\)"):
        registry.resolve("resnet18", {"blocks": [1, 1]})


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"input_shape": (32, 32)}, "Received: input_shape=\\(32, 32\\)"),
        ({"input_shape": (1, 32, 32, 3)}, "Received: input_shape=\\(1, 32, 32, 3\\)"),
        ({"input_shape": (0, 32, 3)}, "Received: input_shape=\\(0, 32, 3\\)"),
        ({"input_shape": (-4, 32, 3)}, "Received: input_shape=\\(-4, 32, 3\\)"),
        ({"num_classes": 0}, "Received: num_classes=0"),
        ({"classifier_activation": "relu"}, "Received: classifier_activation='relu'"),
    ],
)
def test_invalid_builder_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        keras_cnn.build("small", **kwargs)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        keras_cnn.build("small", weights=str(tmp_path / "nope.weights.h5"))


def test_collapsing_feature_map_names_layer_numbers_and_smallest_input():
    with pytest.raises(ValueError) as info:
        keras_cnn.build("lenet", input_shape=(12, 12, 3))
    message = str(info.value)
    # 12 -> conv 5x5 -> 8 -> pool -> 4 -> conv 5x5 -> 0
    assert message.startswith("lenet: stage2_conv would output 0x0 from 4x4 with a 5x5 kernel")
    assert "the smallest input is 16x16" in message
    assert message.endswith("Received: input_shape=(12, 12, 3)")


@pytest.mark.parametrize("name", sorted(SEED_MODELS))
def test_smallest_input_is_exact(name):
    info = keras_cnn.model_info(name)
    side = info["smallest_input"][0]
    ops = registry.family_of(name).spatial_ops(info["config"])
    assert shapes.collapses(side, ops) is None
    if side > 1:
        assert shapes.collapses(side - 1, ops) is not None


def test_output_size_follows_keras_rules():
    assert shapes.output_size(7, Op("c", 3, 2, "valid")) == 3  # seed 004: (7 - 3) / 2 + 1
    assert shapes.output_size(7, Op("c", 3, 5, "valid")) == 1  # 1.8 floors to 1 (pixels dropped)
    assert shapes.output_size(7, Op("c", 3, 2, "same")) == 4
    assert shapes.output_size(2, Op("c", 3, 1, "valid")) == 0


def test_stages_extend_and_truncate_filters():
    assert registry.resolve("small", {"stages": 3})["stage_filters"] == (32, 64, 128)
    assert registry.resolve("deeper", {"stages": 1})["stage_filters"] == (64,)
    assert registry.resolve("small", {"width": 0.5})["stage_filters"] == (16, 32)
    assert registry.resolve("resnet18", {"stages": 2})["stage_blocks"] == (2, 2)


def test_import_registers_the_keras_objects_and_the_command_line_stays_light():
    code = ("import sys, keras_cnn, keras; keras_cnn.list_models(); "
            "print(keras.saving.get_registered_object('keras_cnn>Conv2D') is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True"]  # `import keras_cnn` is enough for keras.saving.load_model
    command = shutil.which("keras-cnn", path=os.path.dirname(sys.executable)) or shutil.which("keras-cnn")
    listed = subprocess.run([command, "list"], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in listed.stderr.splitlines() if "|" in line}
    assert "keras_cnn.cli" in imported and "small" in listed.stdout
    assert "tensorflow" not in imported and "keras" not in imported


def test_every_model_declares_a_frozen_family_with_the_required_parts():
    families = {registry.family_of(name) for name in keras_cnn.list_models()}
    assert {family.name for family in families} == {"plain", "resnet", "fast", "transfer"}
    for family in families:
        assert isinstance(family, Family) and all(map(callable, (family.resolve, family.spatial_ops, family.build)))
        with pytest.raises(dataclasses.FrozenInstanceError):
            family.build = None
    hooks = {family.name: {hook for hook in ("preferred_input", "initialize_from_data", "fine_tune")
                           if getattr(family, hook) is not None} for family in families}
    assert hooks == {"plain": set(), "resnet": set(), "fast": {"initialize_from_data"},
                     "transfer": {"preferred_input", "fine_tune"}}
    assert registry.family_of("no_such_model") is None


def test_a_built_model_carries_what_it_was_built_from(tmp_path):
    model = keras_cnn.build("small", input_shape=(20, 20, 1), width=0.5)
    zoo = model.zoo_config
    assert (zoo.name, zoo.family.name, zoo.weights) == ("small", "plain", None)
    assert zoo.config["stage_filters"] == (16, 32) and zoo.config["input_shape"] == (20, 20, 1)
    with pytest.raises(TypeError):
        zoo.config["width"] = 1.0  # read-only, like the dataclass around it
    keras_cnn.build("small", input_shape=(20, 20, 1), width=0.5).save_weights(tmp_path / "small.weights.h5")
    from_file = keras_cnn.build("small", input_shape=(20, 20, 1), width=0.5, weights=tmp_path / "small.weights.h5")
    assert from_file.zoo_config.weights == str(tmp_path / "small.weights.h5")


def test_a_model_built_with_shipped_weights_names_its_data_set():
    assert keras_cnn.build("small", weights="digits").zoo_config.weights == "digits"
    head = keras_cnn.build("small", weights="digits", include_top=False, pooling="avg")  # built, then copied
    assert (head.zoo_config.weights, head.zoo_config.config["stage_filters"]) == ("digits", (32, 64))
