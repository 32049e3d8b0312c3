"""Shared test set-up: quiet TensorFlow, a fixed seed, no network access needed."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_and_clean():
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()
