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


@pytest.mark.parametrize("script", ["plain_family.py", "resnet_family.py"])
def test_example_runs(script):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parameters" in result.stdout
