"""Shared test set-up: quiet TensorFlow, a fixed seed, no network access needed, and a small trained run."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

RUN_SHAPE = (8, 8, 1)  # the run_dir model's input
RUN_CLASS_NAMES = [f"d{i}" for i in range(10)]


@pytest.fixture(autouse=True)
def _seeded_and_clean():
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def digits():
    import keras_cnn

    return keras_cnn.load_data("digits")


@pytest.fixture
def stop_after():
    """`stop_after(n)`: a Keras callback that interrupts training after `n` finished epochs, as a kill would."""
    import keras

    class StopAfter(keras.callbacks.Callback):
        def __init__(self, epochs):
            super().__init__()
            self.epochs = epochs

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == self.epochs:
                raise KeyboardInterrupt

    return StopAfter


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits):
    """A run folder as keras_cnn.train writes it (model.keras, config.json, labels.txt), holding a SmallCNN
    (8x8x1, a quarter of the width, classes d0-d9) trained for two epochs on the digits."""
    import keras

    import keras_cnn
    from keras_cnn.artifacts import runs
    from keras_cnn.utils.io import save_model

    keras.utils.set_random_seed(0)
    model = keras_cnn.build("small", input_shape=RUN_SHAPE, width=0.25, num_classes=10)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(*digits.arrays("train", image_shape=RUN_SHAPE), epochs=2, batch_size=64, verbose=0)
    folder = tmp_path_factory.mktemp("run")
    run = runs.Run(folder, config={"model": "small", "data": "digits", "data_options": {},
                                   "input_shape": list(RUN_SHAPE), "class_names": RUN_CLASS_NAMES,
                                   "precision": "float32"})
    save_model(model, run.model_path)
    run.write_config()
    run.write_labels(RUN_CLASS_NAMES)
    return folder
