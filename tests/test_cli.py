"""The `keras-cnn` command line: fast listing, describe, one-line errors."""
import json
import subprocess
import sys

import pytest

import keras_cnn
from keras_cnn import cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "keras_cnn.cli", *args], capture_output=True, text=True)


def test_list_prints_every_model_with_its_input_shape(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(keras_cnn.list_models()) and lines[0].startswith("airbench") and "32x32x3" in lines[0]
    assert any(line.startswith("mnist_cnn") and "28x28x1" in line for line in lines)


def test_list_filters_and_json(capsys):
    assert cli.main(["list", "resnet??", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in info] == ["resnet18", "resnet34"]
    assert info[0]["smallest_input"] == [1, 1]


def test_describe_with_overrides(capsys):
    assert cli.main(["describe", "small", "--input-shape", "16", "16", "1", "--set", "filters=[8,16]",
                     "--set", "head=gap"]) == 0
    out = capsys.readouterr().out
    assert "stage2_conv" in out and "8x8x16" in out and "GlobalAveragePooling2D" in out
    assert "small: input 16x16x1" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["describe", "smal"], "Unknown model 'smal'. Did you mean 'small'"),
        (["describe", "lenet", "--input-shape", "8", "8", "3"], "the smallest input is 16x16"),
        (["describe", "small", "--set", "dropout=1.5"], "Received: dropout=1.5"),
        (["describe", "small", "--set", "dropout"], "--set takes key=value"),
        (["list", "zz*"], "no model matches 'zz*'"),
        (["data", "download", "cifar10"], "Received: spec='cifar10'"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(args, fragment, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err


def test_the_installed_command_exits_with_status_2_and_one_line():
    result = run("describe", "smal")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = run("--debug", "describe", "smal")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0 and "list" in result.stdout and "describe" in result.stdout


def test_a_bug_is_not_shown_as_a_user_error(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setitem(cli.HANDLERS, "list", broken)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("keras-cnn: internal error: RuntimeError: an internal invariant broke")
    assert "--debug" in err and err.count("\n") == 1
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "list"])


def test_a_diverged_run_is_a_one_line_user_error(monkeypatch, capsys):
    import functools

    from keras_cnn.training import trainer as training

    @functools.wraps(training.train)  # the same signature, which the options' defaults are read from
    def diverged(*args, **kwargs):
        raise training.TrainingDiverged("training diverged (the loss became NaN or infinite)")

    monkeypatch.setattr(training, "train", diverged)
    assert cli.main(["train", "small"]) == 2
    assert capsys.readouterr().err == "keras-cnn: error: training diverged (the loss became NaN or infinite)\n"


def test_a_value_error_raised_inside_a_library_is_a_bug_not_the_users(monkeypatch, capsys):
    import keras

    from keras_cnn.models import registry

    def broken(*args, **kwargs):
        keras.layers.Dense(-1)  # Keras itself raises the ValueError

    monkeypatch.setattr(registry, "list_models", broken)
    assert cli.main(["list"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("keras-cnn: internal error: ValueError: ") and "rerun with --debug" in error


def test_debug_shows_the_cause_behind_a_one_line_error(tmp_path, capsys):
    import zipfile

    damaged = tmp_path / "model.keras"
    with zipfile.ZipFile(damaged, "w") as archive:  # a zip archive, but not Keras's
        archive.writestr("notes.txt", "no config.json here")
    assert cli.main(["show", str(damaged), "--filters"]) == 2
    assert capsys.readouterr().err.startswith(f"keras-cnn: error: cannot load {damaged}")
    with pytest.raises(ValueError, match="cannot load") as raised:
        cli.main(["--debug", "show", str(damaged), "--filters"])
    assert raised.value.__cause__ is not None  # what Keras or zipfile said, kept for the traceback


def test_train_options_are_the_librarys_choices_and_defaults():
    import inspect

    from keras_cnn import cli_parser
    from keras_cnn.models import options
    from keras_cnn.training import precision, recipes
    from keras_cnn.training.trainer import train

    train_options = cli_parser.train_options()
    assert set(train_options) <= set(inspect.signature(train).parameters)
    assert train_options["recipe"][1]["choices"] == recipes.ALL_RECIPES
    assert train_options["precision"][1]["choices"] == precision.PRECISIONS
    defaults = inspect.signature(train).parameters
    for name in ("recipe", "precision", "seed"):
        assert f"(default {defaults[name].default})" in train_options[name][1]["help"]
    for name in ("epochs", "batch_size"):  # None in train: the recipe's
        assert f"else {recipes.TRAIN_DEFAULTS[name]})" in train_options[name][1]["help"]
    help_text = run("train", "--help").stdout
    assert all(preset in help_text for preset in options.AUGMENT_PRESETS)


def test_export_prints_only_keras_cnns_own_lines_unless_verbose(run_dir, tmp_path):
    quiet = run("export", run_dir, "--quantize", "int8", "--out", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    lines = (quiet.stdout + quiet.stderr).splitlines()
    assert any(line.startswith("small_int8.tflite") for line in lines)  # the report is there
    progress = [line for line in quiet.stderr.splitlines() if line.startswith("verifying 2 artifacts")]
    assert [line.split(": ")[1] for line in progress] == ["1/2 saved_model", "2/2 small_int8.tflite"]  # not a TTY
    assert not [line for line in lines if cli.NATIVE_LOG.match(line)]
    assert not [line for line in lines if any(word in line for word in ("XNNPACK", "fully_quantize", "I0000",
                                                                         "WARNING:absl", "WARNING:tensorflow"))]
    verbose = run("-v", "export", run_dir, "--quantize", "int8", "--out", str(tmp_path / "verbose"))
    assert verbose.returncode == 0 and "fully_quantize: " in verbose.stderr  # the converter's own line


def test_the_native_log_filter_keeps_every_other_line():
    for native in ("I0000 00:00:1796418437.962233   20962 port.cc:153] oneDNN custom operations are on.",
                   "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                   "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
                   "2026-12-04 20:00:00.123456: I tensorflow/core/platform/cpu_feature_guard.cc:210] This",
                   "fully_quantize: 0, inference_type: 6, input_inference_type: UINT8"):
        assert cli.NATIVE_LOG.match(native), native
    for ours in ("keras-cnn: error: cannot load x. Received: path='x'", "small: test accuracy 98.05%",
                 "Epoch 1/10", "UserWarning: Your input ran out of data"):
        assert not cli.NATIVE_LOG.match(ours), ours
