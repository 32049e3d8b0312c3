"""The package as it installs: its package list, and (slow) the built wheel, checkpoints included, working in a
fresh environment outside the repository."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _packages_on_disk():
    """Every package the repository holds, by its installed name (tuning/ installs as keras_cnn.tuning)."""
    names = set()
    for top, installed_as in (("keras_cnn", "keras_cnn"), ("tuning", "keras_cnn.tuning")):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            names.add(".".join((installed_as, *parts)))
    return names


def test_pyproject_lists_every_package_and_maps_tuning():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted(_packages_on_disk())
    assert setuptools["package-dir"] == {"keras_cnn.tuning": "tuning"}


def test_the_old_top_level_name_is_not_installed(tmp_path):
    code = "import importlib.util; print(importlib.util.find_spec('tuning'))"
    installed_only = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # not the checkout
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env=installed_only)
    assert result.stdout.strip() == "None", result.stderr


def _run(command, **kwargs):
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=1800, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_built_wheel_works_in_a_fresh_environment_outside_the_checkout(tmp_path):
    """Build the sdist and, from it, the wheel; install the wheel (dependencies from the package index or pip's
    cache) into a new venv and use it from a folder outside the checkout, with nothing of the checkout on the path."""
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, ROOT])  # the wheel is built from the sdist
    assert len(list(dist.glob("keras_cnn-*.tar.gz"))) == 1
    [wheel] = dist.glob("keras_cnn-*-py3-none-any.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python, cli = venv / "bin" / "python", venv / "bin" / "keras-cnn"
    _run([python, "-m", "pip", "install", "--quiet", wheel])
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "work"
    work.mkdir()

    assert "small" in _run([cli, "list"], cwd=work, env=env)
    _run([cli, "train", "small", "--epochs", "1", "--out", work / "run"], cwd=work, env=env)
    assert (work / "run" / "config.json").is_file()
    imported = _run([python, "-c", "import importlib.util, keras_cnn; from keras_cnn.tuning import search; "
                     "print(keras_cnn.__file__); print(importlib.util.find_spec('tuning'))"], cwd=work, env=env)
    installed_at, old_name = imported.split()
    assert pathlib.Path(installed_at).is_relative_to(venv) and old_name == "None"
    trained = _run([python, "-c", "import keras_cnn, keras; m = keras_cnn.build('small', weights='digits'); "
                    "print(keras_cnn.list_models(pretrained=True)); m.save('small.keras'); "
                    "print(keras.saving.load_model('small.keras').count_params())"], cwd=work, env=env)
    assert "'airbench'" in trained and trained.split()[-1] == "53290"  # shipped weights, loaded by plain Keras
    assert "airbench:cifar10" in _run([cli, "list", "--pretrained"], cwd=work, env=env)
