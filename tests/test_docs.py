"""The README's generated parts stay in sync, and the examples run."""
import pathlib
import re
import subprocess
import sys

import pytest

from keras_cnn import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_model_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- models:start -->\n(.*?)\n<!-- models:end -->", readme, re.S).group(1)
    assert table == registry.markdown_table(), "regenerate with `keras-cnn list --markdown`"


# Each example with arguments that keep it quick and what its output must say.
EXAMPLES = {
    "plain_family.py": ([], "parameters"),
    "resnet_family.py": ([], "receptive field"),
    "parameter_count.py": ([], "760 parameters (seed 004: 760)"),
    "manual_convolution.py": ([], "Keras Conv2D agrees: True"),
    "edge_detection.py": (["--out", "{tmp}/edges.png"], "Keras Conv2D equals the cross-correlation: True"),
    "train_digits.py": (["--epochs", "3", "--out", "{tmp}/run"], "accuracy per epoch"),
    "export_tflite.py": (["--epochs", "2", "--out", "{tmp}/run"], "small_int8.tflite"),
    "tuning_search.py": (["--trials", "2", "--epochs", "1", "--out", "{tmp}/tune"], "retrained best"),
    "transfer_learning.py": ([], "transferred"),
}
# About 50 s each, longer than the default suite can afford; test_transfer.py covers their mechanics.
SLOW_EXAMPLES = {"transfer_learning.py"}


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("script", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_EXAMPLES else name
                                    for name in sorted(EXAMPLES)])
def test_example_runs(script, tmp_path):
    arguments, expected = EXAMPLES[script]
    command = [sys.executable, str(ROOT / "examples" / script), *(a.format(tmp=tmp_path) for a in arguments)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
