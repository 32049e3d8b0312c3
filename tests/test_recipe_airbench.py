"""airbench's recipe as general features: the weights' moving average, the airbench recipe (Nesterov SGD, its lr and
weight-decay scaling, label smoothing, lookahead), fractional epochs, batch-norm options, Dirac initialisation, the
logit scale, the whitening stem, and the timed kernel gradients kept to CPUs."""
import json
import math
import os
from unittest import mock

import numpy as np
import pytest

import keras_cnn
from keras_cnn.training import recipes

TINY = dict(width=0.125, precision="float32", verbose=0)


def _digits_rgb(n=256, seed=0):
    """`n` random 12x12 RGB images in 3 classes (whitening and 2x2 stems want colour and a few pixels)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 12, 12, 3)).astype("uint8")
    return x, np.arange(n) % 3


def test_ema_weights_differ_from_raw_and_are_the_ones_saved_and_exported(tmp_path, digits):
    """The checkpoint (and so the test metrics and export) holds the optimizer's moving average, not the raw
    weights training ended with; the backup for --resume holds the raw weights and the average."""
    import keras

    from keras_cnn.exporting.pipeline import inference_model
    from keras_cnn.training.callbacks import averaged_weights

    raw = {}

    class KeepRaw(keras.callbacks.Callback):  # the raw weights at the end of the last epoch, before fit ends
        def on_epoch_end(self, epoch, logs=None):
            raw.update({w.path: w.numpy().copy() for w in self.model.trainable_weights})
            with averaged_weights(self.model):
                raw["averaged"] = {w.path: w.numpy().copy() for w in self.model.trainable_weights}

    run = keras_cnn.train("small", digits, epochs=2, batch_size=64, ema=0.9, out=tmp_path / "run",
                          callbacks=[KeepRaw()], **TINY)
    saved = {w.path: w.numpy() for w in keras_cnn.load(run.path).model.trainable_weights}
    kernel = next(path for path in saved if path.endswith("kernel"))
    assert not np.allclose(raw[kernel], raw["averaged"][kernel])
    np.testing.assert_allclose(saved[kernel], raw["averaged"][kernel], rtol=1e-6)
    exported = {w.path: w.numpy() for w in inference_model(keras_cnn.load(run.path).model).trainable_weights}
    np.testing.assert_allclose(exported[kernel], raw["averaged"][kernel], rtol=1e-6)


def test_ema_survives_resume(tmp_path, digits, stop_after):
    """A killed run keeps its moving average in the backup: the resumed optimizer starts from it."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        keras_cnn.train("small", digits, epochs=3, batch_size=64, ema=0.9, out=out, callbacks=[stop_after(1)], **TINY)
    resumed = keras_cnn.train("small", digits, epochs=3, batch_size=64, ema=0.9, out=out, resume=True, **TINY)
    assert len(resumed.history["loss"]) == 3
    assert json.load(open(os.path.join(out, "config.json")))["arguments"]["ema"] == 0.9


def test_bad_ema_is_one_line():
    with pytest.raises(ValueError, match=r"Received: ema=1.5"):
        recipes.optimizer("sgd", total_steps=10, ema=1.5)


def test_airbench_recipe_scales_lr_with_batch_and_keeps_decay_per_step():
    """airbench's decoupled rate: the Keras rate (of a batch-mean loss) grows with the batch; lr * l2 (the decay per
    step) does not depend on the batch or on the rate; offsets train 64x faster with the same decay."""
    small = recipes.optimizer("airbench", total_steps=100, batch_size=512)
    large = recipes.optimizer("airbench", total_steps=100, batch_size=1024)
    peak = lambda opt: float(opt._learning_rate.peak)  # noqa: E731
    assert peak(large) == pytest.approx(2 * peak(small))
    assert peak(large) == pytest.approx(11.5 / (1 + 1 / 0.15))
    assert peak(large) * large.l2 == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)))
    assert (large.nesterov, large.momentum, large.bias_lr_scale) == (True, 0.85, 64.0)
    other = recipes.optimizer("airbench", total_steps=100, batch_size=1024, learning_rate=5.75)
    assert peak(other) * other.l2 == pytest.approx(peak(large) * large.l2)


def test_airbench_schedule_warms_up_then_decays_linearly():
    schedule = recipes.optimizer("airbench", total_steps=100)._learning_rate
    values = [float(schedule(step)) / schedule.peak for step in (0, 23, 100)]
    assert values == pytest.approx([0.2, 1.0, 0.07])


def test_sgd_recipe_unchanged():
    opt = recipes.optimizer("sgd", total_steps=1000)
    assert (opt.momentum, opt.l2, opt.nesterov, opt.bias_lr_scale, opt.use_ema) == (0.9, 5e-4, False, 1.0, False)


def test_nesterov_step_matches_torch():
    """Nesterov with coupled L2, as torch.optim.SGD(nesterov=True): buf = m*buf + g; w -= lr * (g + m*buf)."""
    import keras

    from keras_cnn.training.optimizers import TorchSGD

    w = keras.Variable(np.array([1.0, -2.0], dtype="float32"))
    opt = TorchSGD(0.1, momentum=0.5, l2=0.1, nesterov=True)
    buf, expected = np.zeros(2), np.array([1.0, -2.0])
    for grad in ([0.5, 0.5], [1.0, -1.0]):
        opt.apply([np.array(grad, dtype="float32")], [w])
        g = np.array(grad) + 0.1 * expected
        buf = 0.5 * buf + g
        expected = expected - 0.1 * (g + 0.5 * buf)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)


def test_recipe_defaults_fill_only_what_is_unset():
    assert recipes.defaults("airbench", epochs=None, batch_size=256, tta=None) == {
        "epochs": 9.9, "batch_size": 256, "tta": "flip+translate"}
    assert recipes.defaults("sgd", epochs=None, label_smoothing=None) == {"epochs": 30, "label_smoothing": 0.0}


def test_fractional_epochs_stop_at_the_fraction(tmp_path, digits):
    """1.5 epochs: two epochs logged, the optimizer stopped at ceil(1.5 * steps per epoch) steps, also when Keras
    runs several steps per call (they then divide the last epoch's steps)."""
    import keras

    steps = []

    class Steps(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            steps.extend([int(self.model.optimizer.iterations.numpy()), self.model.steps_per_execution])

    run = keras_cnn.train("small", digits, epochs=1.5, batch_size=256, out=tmp_path / "run", callbacks=[Steps()],
                          **TINY)
    per_epoch = math.ceil(digits.sizes["train"] / 256)
    assert len(run.history["loss"]) == 2
    taken, per_call = steps
    assert taken == math.ceil(1.5 * per_epoch) and per_call > 1


def test_batchnorm_options_dirac_and_head_scale():
    import keras

    model = keras_cnn.build("airbench", input_shape=(16, 16, 3), width=0.125, kernel_initializer="dirac",
                            bn_scale=False, bn_momentum=0.6, bn_epsilon=1e-12, head="gmp", head_scale=1 / 9)
    bn = model.get_layer("stage1_bn1")
    assert (bn.scale, bn.momentum, bn.epsilon, bn.gamma) == (False, 0.6, 1e-12, None)
    assert type(bn).__name__ == "FusedBatchNormalization"
    kernel = model.get_layer("stage2_conv2").kernel.numpy()  # 3x3, 32 -> 32 channels at width 1/8
    np.testing.assert_array_equal(kernel[1, 1], np.eye(kernel.shape[2]))
    assert not kernel[0].any() and not kernel[2].any()
    assert model.get_layer("head_scale").scale == pytest.approx(1 / 9)
    reloaded = keras.models.model_from_json(model.to_json())
    assert reloaded.get_layer("stage1_bn1").scale is False


def test_a_dirac_model_loads_in_a_new_process(tmp_path):
    """The saved config names `keras_cnn>Dirac` and airbench's augmentation layers: `keras_cnn.utils.io.load_model`
    registers them before loading."""
    import subprocess
    import sys

    from keras_cnn.utils import io

    path = str(tmp_path / "dirac.keras")
    model = keras_cnn.build("airbench", input_shape=(16, 16, 3), width=0.125, kernel_initializer="dirac",
                            augment="flip_translate")
    io.save_model(model, path)
    code = (f"from keras_cnn.utils import io; m = io.load_model({path!r}); "
            "print(*[type(layer).__name__ for layer in m.get_layer('augment').layers], "
            "m.get_layer('stage1_conv1').kernel.numpy().sum())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-500:]
    expected = float(model.get_layer("stage1_conv1").kernel.numpy().sum())
    assert result.stdout.split()[-3:-1] == ["AlternatingFlip", "RandomShift"]
    assert float(result.stdout.split()[-1]) == pytest.approx(expected)


def test_dirac_keeps_extra_filters_random():
    from keras_cnn.models.initializers import Dirac

    kernel = np.asarray(Dirac(seed=1)((3, 3, 2, 4)))
    np.testing.assert_array_equal(kernel[1, 1, :, :2], np.eye(2))
    assert np.abs(kernel[..., 2:]).max() > 0 and np.abs(kernel[..., 2:]).max() <= 1 / math.sqrt(18) + 1e-6


def test_whitening_filters_whiten_the_training_patches():
    """Outputs of the first half of the filters on the images' own 2x2 patches: covariance
    diag(eigenvalue / (eigenvalue + eps)), i.e. the identity on every component above the noise floor."""
    from keras_cnn.models.initializers import patches, whitening_filters

    rng = np.random.default_rng(0)
    smooth = rng.random((200, 9, 9, 3)).cumsum(axis=1).cumsum(axis=2)  # strongly correlated neighbours
    images = smooth / smooth.max()
    kernel, bias = whitening_filters(images)
    assert kernel.shape == (2, 2, 3, 24)
    outputs = patches(images) @ kernel.reshape(12, 24) + bias
    np.testing.assert_allclose(outputs.mean(axis=0), 0, atol=1e-4)
    covariance = np.cov(outputs[:, :12], rowvar=False, bias=True)
    off_diagonal = covariance - np.diag(np.diag(covariance))
    assert np.abs(off_diagonal).max() < 1e-3
    assert np.all(np.diag(covariance) <= 1 + 1e-4) and np.all(np.diag(covariance)[:6] > 0.9)
    np.testing.assert_allclose(outputs[:, 12:], -outputs[:, :12], atol=1e-4)


def test_whitening_stem_is_computed_from_the_runs_data_frozen_and_saved(tmp_path):
    from keras_cnn.models.initializers import whitening_filters

    x, y = _digits_rgb()
    run = keras_cnn.train("airbench", (x, y), stem_init="whitening", epochs=1, batch_size=64, out=tmp_path / "run",
                          **TINY)
    stem = keras_cnn.load(run.path).model.get_layer("stem_conv")
    assert not stem.trainable
    train_images, _ = keras_cnn.load_data((x, y), seed=0).arrays("train", limit=5000)
    kernel, bias = whitening_filters(train_images / 255.0)
    np.testing.assert_allclose(stem.kernel.numpy(), kernel, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stem.bias.numpy(), bias, rtol=1e-4, atol=1e-4)


def test_whitening_stem_sees_float32_pixels_in_mixed_precision():
    """In mixed bfloat16 the pixels reach the whitening stem in float32: its output matches the float32
    computation, where bfloat16 pixels and weights are off by far more (the weakest components are amplified)."""
    import keras

    from keras_cnn.models.initializers import patches, whitening_filters

    rng = np.random.default_rng(0)
    smooth = rng.random((64, 12, 12, 3)).cumsum(axis=1).cumsum(axis=2)
    pixels = np.round(255 * smooth / smooth.max()).astype("float32")
    kernel, bias = whitening_filters(pixels / 255.0)
    expected = (patches(pixels / 255.0) @ kernel.reshape(12, 24) + bias).reshape(64, 11, 11, 24)
    policy = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = keras_cnn.build("airbench", input_shape=(12, 12, 3), stem_init="whitening", width=0.125)
        model.get_layer("stem_conv").set_weights([kernel, bias])
        stem = keras.Model(model.input, model.get_layer("stem_conv").output)
        assert model.get_layer("stage1_conv1").compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy(policy)
    bfloat16 = keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(pixels / 255.0, "bfloat16"), "float32"))
    rounded = (patches(bfloat16) @ kernel.reshape(12, 24) + bias).reshape(64, 11, 11, 24)
    error = np.abs(np.asarray(stem(pixels)) - expected).max()
    assert error < 1e-3 < np.abs(rounded - expected).max()


def test_options_without_effect_are_refused():
    with pytest.raises(ValueError, match=r"Received: stem=16"):
        keras_cnn.build("airbench", stem=16, stem_init="whitening")
    with pytest.raises(ValueError, match=r"without batch norm .*Received: bn_momentum=0.5"):
        keras_cnn.build("airbench", batchnorm=False, bn_momentum=0.5)


def test_airbench_recipe_brings_its_network_options_unless_given(tmp_path):
    """`train airbench --recipe airbench`: GELU, the whitening stem, Dirac convs, scale-free BN with momentum 0.6, the
    1/9 max-pool head and airbench's augmentation, with 9.9 epochs, batch 1024 and flip+translate TTA as defaults."""
    from keras_cnn.training.config import TrainConfig

    def overrides(model, **given):
        return TrainConfig(model, recipe="airbench", overrides=given).overrides

    options = overrides("airbench", bn_momentum=0.5)
    assert options["bn_momentum"] == 0.5
    assert {key: options[key] for key in ("activation", "stem_init", "kernel_initializer", "head", "augment")} == {
        "activation": "gelu", "stem_init": "whitening", "kernel_initializer": "dirac", "head": "gmp",
        "augment": "flip_translate"}
    assert overrides("small").get("stem_init") is None  # small has none
    assert "bn_momentum" not in overrides("airbench", batchnorm=False)


def test_cli_short_command_takes_the_recipe_defaults():
    from keras_cnn.cli_parser import parser

    args = parser().parse_args(["train", "airbench", "--recipe", "airbench", "--epochs", "9.9"])
    assert (args.epochs, args.batch_size, args.tta) == (9.9, None, None)  # None: train takes the recipe's
    assert parser().parse_args(["train", "small", "--epochs", "3"]).epochs == 3


def test_timed_kernel_gradients_only_on_cpu():
    """The kernel-gradient methods were measured on CPUs only: a GPU placement (mocked) never takes them."""
    from keras_cnn.models import layers

    conv = layers.Conv2D(8, 3, padding="same")
    conv.build((None, 4, 4, 128))
    shape = (2, 4, 4, 128)
    with mock.patch("tensorflow.config.list_logical_devices", return_value=[]):
        assert conv.times_kernel_gradient(shape)
    with mock.patch("tensorflow.config.list_logical_devices", return_value=["/device:GPU:0"]):
        assert not conv.times_kernel_gradient(shape)
        assert conv.times_kernel_gradient(shape, "/job:localhost/replica:0/task:0/device:CPU:0")
    assert not conv.times_kernel_gradient(shape, "/device:GPU:0")


def test_the_airbench_recipes_train_on_every_training_image_unless_asked(tmp_path):
    run = keras_cnn.train("small", "digits", recipe="airbench", epochs=1, batch_size=256, out=tmp_path / "all",
                          **TINY)
    assert run.config["data_options"]["val_fraction"] == 0.0 and not run.history.get("val_accuracy")
    asked = keras_cnn.train("small", "digits", recipe="airbench", epochs=1, batch_size=256, out=tmp_path / "split",
                            data_options={"val_fraction": 0.1}, **TINY)
    assert asked.config["data_options"]["val_fraction"] == 0.1 and len(asked.history["val_accuracy"]) == 1
