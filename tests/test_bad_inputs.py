"""The bad-input corpus: one row per bad input, with the call (API) or command (CLI) and the error it gives.

API rows must raise the documented exception type with a one-line message holding the fragment. CLI rows run
`keras_cnn.cli.main` in this process and must exit with the given status, print exactly one line on stderr
holding the fragment, and no traceback. No row may leave its output folder (`{out}`) behind. Rows marked
`# was:` gave a traceback, a vague or multi-line message, or no error before this corpus was written.
Odd images that are valid (CMYK, 16-bit, animated, 1x1) are read as documented, at the end.
"""
import json
import os
import types

import numpy as np
import pytest
from PIL import Image

import keras_cnn
from keras_cnn import cli
from keras_cnn.artifacts import runs
from keras_cnn.data.loading import read_image

X = np.zeros((20, 8, 8), np.uint8)
Y = np.arange(20) % 2


def save(path, image, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def image_folder(root, extra=None, classes=("a", "b")):
    """root/<class>/*.png, three 8x8 images per class, plus `extra` (name, bytes) in the first class."""
    for name in classes:
        for i in range(3):
            save(root / name / f"{i}.png", Image.new("L", (8, 8), 40 * i))
    if extra:
        (root / classes[0] / extra[0]).write_bytes(extra[1])
    return root


def jpeg_bytes(folder):
    return save(folder / "photo.jpg", Image.new("RGB", (32, 32), (200, 30, 90))).read_bytes()


@pytest.fixture(scope="module")
def paths(tmp_path_factory, run_dir):
    """Every bad file and folder of the corpus, made once."""
    root = tmp_path_factory.mktemp("corpus")
    bomb = save(root / "bomb.png", Image.new("1", (10000, 10000)))  # 12 KB on disk, 300 MB decoded as RGB
    (root / "text.jpg").write_text("<html>404 not found</html>\n")
    (root / "empty").mkdir()
    image_folder(root / "class_without_images")
    (root / "class_without_images" / "c").mkdir()
    (root / "class_without_images" / "c" / "notes.txt").write_text("no images here")
    (root / "trunc.keras").write_bytes((run_dir / "model.keras").read_bytes()[:4000])
    (root / "bad.tflite").write_text("not a flatbuffer")
    (root / "saved_model").mkdir()
    (root / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01garbage")
    (root / "afile").write_text("a file, not a folder")
    (root / "read_only").mkdir(mode=0o500)
    return types.SimpleNamespace(
        run=run_dir, bomb=bomb, text_jpg=root / "text.jpg", empty=root / "empty", missing=root / "missing",
        one_class=image_folder(root / "one_class", classes=("only",)),
        class_without_images=root / "class_without_images",
        zero_png=image_folder(root / "zero_png", ("zero.png", b"")),
        truncated_jpg=image_folder(root / "truncated_jpg", ("cut.jpg", jpeg_bytes(root)[:100])),
        bomb_folder=image_folder(root / "bomb_folder", ("bomb.png", bomb.read_bytes())),
        trunc_keras=root / "trunc.keras", bad_tflite=root / "bad.tflite", bad_saved_model=root / "saved_model",
        good_png=save(root / "good.png", Image.new("L", (8, 8), 128)), afile=root / "afile",
        read_only=root / "read_only")


def api(call, error, fragment, id):
    return pytest.param("api", call, error, fragment, id=id)


def command(line, fragment, id, status=2):
    return pytest.param("cli", line.split(), status, fragment, id=id)


CASES = [
    # models and their options
    command("train nosuchnet --out {out}", "Unknown model 'nosuchnet'", "unknown-model"),  # was: left {out} behind
    command("describe small --set batchnorm=yes", "`batchnorm` must be True or False. Received: batchnorm='yes'",
            "override-bool-as-string"),
    command("describe small --set filters=[32,-1]", "Received: filters=[32, -1]", "override-negative-filters"),
    api(lambda p: keras_cnn.build("small", width="2"), ValueError, "Received: width='2'", "override-number-as-string"),
    command("train small --no-flip --out {out}", "`flip` has no effect without augmentation",
            "override-without-effect"),  # was: left {out} behind
    api(lambda p: keras_cnn.build("small", input_shape=(1, 32, 32, 3, 1)), ValueError,
        "must be (height, width, channels). Received: input_shape=(1, 32, 32, 3, 1)", "input-shape-5-dims"),
    command("describe small --input-shape 32 32",
            "argument --input-shape: expected 3 arguments; see `keras-cnn describe --help`",
            "input-shape-2-dims"),  # was: the usage, then the error
    command("describe small --input-shape 0 32 3", "Received: input_shape=[0, 32, 3]", "input-shape-zero"),
    command("train small --input-shape -4 32 1 --out {out}", "Received: input_shape=(-4, 32, 1)",
            "input-shape-negative"),  # was: left {out} behind
    api(lambda p: keras_cnn.train("small", (X, Y), num_classes=0, out=p.out), ValueError,
        "Received: num_classes=0", "num-classes-0"),  # was: ignored, trained with the data's classes
    # data
    command("train small --data s3:bucket/cifar --out {out}", "Unknown data spec", "unknown-data-scheme"),
    command("train small --data folder:{missing} --out {out}", "Image folder not found", "folder-missing"),
    command("train small --data folder:{empty} --out {out}", "No class sub-folders", "folder-empty"),
    command("train small --data folder:{one_class} --out {out}", "Need at least 2 classes, found only 'only'",
            "folder-one-class"),
    command("train small --data folder:{class_without_images} --out {out}", "class_without_images/c has no images",
            "class-folder-without-images"),
    api(lambda p: keras_cnn.load_data(f"folder:{p.zero_png}"), ValueError,
        "zero.png is not a JPEG/PNG/BMP/GIF image", "zero-byte-png"),
    api(lambda p: keras_cnn.load_data(f"folder:{p.truncated_jpg}"), ValueError,
        "cut.jpg is not a JPEG/PNG/BMP/GIF image or its header is cut short", "truncated-jpeg"),  # was: 2 lines
    command("predict {run} {text_jpg}", "text.jpg: not a readable image", "text-named-jpg", status=1),
    api(lambda p: keras_cnn.load_data(f"folder:{p.bomb_folder}"), ValueError,
        "bomb.png has 10000x10000 pixels, more than the limit of 67,108,864", "bomb-in-folder"),  # was: decoded
    command("predict {run} {bomb}", "bomb.png has 10000x10000 pixels", "bomb-predicted", status=1),  # was: decoded
    api(lambda p: keras_cnn.train("small", (X, np.arange(20) % 12), num_classes=10, out=p.out), ValueError,
        "the model predicts 10 classes but arrays has 12", "labels-out-of-range"),  # was: left {out} behind
    api(lambda p: keras_cnn.train("small", (X, Y[:-1]), out=p.out), ValueError,
        "one label per image in x. Received: x.shape=(20, 8, 8, 1), y.shape=(19,)", "arrays-of-different-lengths"),
    api(lambda p: keras_cnn.load_data("digits", val_fraction="0.1"), ValueError,
        "Received: val_fraction='0.1'", "fraction-as-string"),  # was: TypeError from a comparison
    api(lambda p: keras_cnn.load_data("digits", image_size=8.5), ValueError,
        "Received: image_size=8.5", "image-size-float"),  # was: TypeError "has no len()"
    # trained and exported artifacts
    command("export {empty}", "is not a keras-cnn run folder: it has no model.keras", "not-a-run-folder"),
    command("predict {trunc_keras} {good_png}", "the file is damaged or cut short",
            "truncated-model-keras"),  # was: "File not found" about a file that is there
    command("predict {bad_tflite} {good_png}", "bad.tflite: it is not a valid TFLite model",
            "tflite-not-a-flatbuffer"),  # was: "The model is not a valid Flatbuffer buffer", no file named
    command("predict {bad_saved_model} {good_png}", "cannot load the SavedModel",
            "damaged-saved-model"),  # was: an OSError traceback
    # output folders that cannot be written
    command("export {run} --out {afile}", "cannot use {afile} as a folder: it is a file",
            "export-out-is-a-file"),  # was: a FileExistsError traceback
    command("train small --out {afile}/sub", "cannot create the folder {afile}/sub: Not a directory",
            "train-out-under-a-file"),  # was: "[Errno 20] Not a directory"
    pytest.param("api", lambda p: keras_cnn.export(p.run, p.read_only, verbose=False), PermissionError,
                 "cannot write into the folder", id="export-out-read-only",
                 marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; "
                                          "the two rows above cover an output folder that cannot be written")),
    # conflicting or malformed command lines
    command("list --json --markdown", "argument --markdown: not allowed with argument --json",
            "list-json-and-markdown"),  # was: --markdown ignored
    command("train small --mixup 0.2 --cutmix 0.5", "use MixUp or CutMix, not both", "mixup-and-cutmix"),
    command("train small --resume", "--resume needs the folder of an interrupted run", "resume-without-out"),
    command("train small --unfreeze 2", "`unfreeze` has no effect without fine-tuning epochs",
            "unfreeze-without-fine-tune"),
    command("train small --epochs x", "argument --epochs: invalid number value: 'x'",
            "epochs-not-a-number"),  # was: the usage, then the error
]


@pytest.mark.parametrize("kind, call, expected, fragment", CASES)
def test_bad_input_gives_one_clear_line(kind, call, expected, fragment, paths, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where a default run folder would go
    names = {**vars(paths), "out": tmp_path / "out"}
    fragment = fragment.format(**names)
    if kind == "api":
        with pytest.raises(expected) as error:
            call(types.SimpleNamespace(**names))
        message = str(error.value)
        assert fragment in message and "\n" not in message
    else:
        capsys.readouterr()
        try:
            status = cli.main([arg.format(**names) for arg in call])
        except SystemExit as exit:  # argparse
            status = exit.code
        stderr = capsys.readouterr().err
        assert status == expected, stderr
        assert fragment in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert "Traceback" not in stderr
    assert os.listdir(tmp_path) == []  # neither {out} nor a default run folder


# ---------------------------------------------------------------- damaged images skipped on request
@pytest.fixture
def damaged_folder(tmp_path):
    """An image folder (2 classes of 4 8x8 PNGs) with 3 damaged files: a JPEG cut in its header, a JPEG whose
    header is sound but whose pixel data is cut short, and text named .jpg. Returns (folder, damaged files)."""
    root = image_folder(tmp_path / "photos")
    for name in ("a", "b"):
        save(root / name / "3.png", Image.new("L", (8, 8), 200))
    good = jpeg_bytes(tmp_path)
    damaged = {root / "a" / "cut_header.jpg": good[:100], root / "b" / "cut_pixels.jpg": good[:len(good) // 2],
               root / "b" / "page.jpg": b"<html>404 not found</html>\n"}
    for path, data in damaged.items():
        path.write_bytes(data)
    return root, sorted(str(path) for path in damaged)


TINY_TRAIN = "train small --epochs 1 --batch-size 4 --precision float32 --set width=0.25 --out {out}"


def test_damaged_images_stop_training_by_default(damaged_folder, tmp_path, capsys):
    root, _ = damaged_folder
    status = cli.main(f"{TINY_TRAIN} --data folder:{root}".format(out=tmp_path / "run").split())
    stderr = capsys.readouterr().err
    assert status == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "cut_header.jpg is not a JPEG/PNG/BMP/GIF image or its header is cut short" in stderr
    assert "--skip-bad-images" in stderr and not (tmp_path / "run").exists()


def test_skip_bad_images_trains_and_lists_exactly_the_damaged_ones(damaged_folder, tmp_path, capsys):
    root, damaged = damaged_folder
    out = tmp_path / "run"
    status = cli.main(f"{TINY_TRAIN} --data folder:{root} --skip-bad-images".format(out=out).split())
    stderr = capsys.readouterr().err
    assert status == 0, stderr
    assert (out / "skipped_images.txt").read_text().splitlines() == damaged
    assert f"photos: skipped 3 of 11 images that could not be decoded: see {out}/skipped_images.txt" in stderr
    assert "Traceback" not in stderr
    config = json.loads((out / "config.json").read_text())
    assert config["data_options"]["skip_bad_images"] is True  # --config RUN and evaluate skip them again
    data = runs.open_run(out).load_data()
    assert data.skipped == damaged and sum(data.sizes.values()) == 8
    assert sum(len(data.arrays(split)[0]) for split in ("train", "val", "test") if data.sizes[split]) == 8


def test_a_folder_of_only_damaged_images_is_one_line(tmp_path):
    root = tmp_path / "broken"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "x.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"none of the 2 images in .*broken could be decoded. Received: spec="):
        keras_cnn.load_data(f"folder:{root}", skip_bad_images=True)


# ---------------------------------------------------------------- odd images that are valid
def frames(path):
    first, *rest = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    first.save(path, save_all=True, append_images=rest)


ODD_IMAGES = [  # (file, writer, the 8x8x3 pixels read_image must give: TensorFlow's decoders, as in training)
    ("cmyk.jpg", lambda p: Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(p),
     lambda p: np.asarray(Image.open(p).convert("RGB"), np.float32)),  # PIL's CMYK -> RGB
    ("gray16.png", lambda p: Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(p),
     lambda p: np.full((8, 8, 3), 156.0)),  # 40000 / 257, scaled to 8 bits rather than clipped
    ("animated.gif", frames, lambda p: np.broadcast_to([255.0, 0, 0], (8, 8, 3))),  # the first frame
    ("pixel.png", lambda p: Image.new("RGB", (1, 1), (1, 2, 3)).save(p),
     lambda p: np.broadcast_to([1.0, 2, 3], (8, 8, 3))),  # resized up like any other size
]


@pytest.mark.parametrize("name, write, expected", ODD_IMAGES, ids=[case[0] for case in ODD_IMAGES])
def test_odd_but_valid_images_are_read_as_documented(tmp_path, name, write, expected):
    write(tmp_path / name)
    np.testing.assert_allclose(read_image(tmp_path / name, (8, 8, 3)), expected(tmp_path / name), atol=3)


def test_a_folder_of_odd_images_loads_them_all(tmp_path):
    root = image_folder(tmp_path / "odd")
    for name, write, _ in ODD_IMAGES:
        write(root / "b" / name)
    data = keras_cnn.load_data(f"folder:{root}", val_fraction=0, test_fraction=0)
    assert data.image_shape == (8, 8, 3) and data.sizes["train"] == 10
    assert len(data.arrays("train")[0]) == 10  # none dropped by the decoder


# ---------------------------------------------------------------- Grad-CAM, calibration and corruptions

def dense_only(p):
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(keras.layers.Flatten()(inputs))
    return keras_cnn.explain(keras.Model(inputs, outputs, name="dense_only"), np.zeros((1, 8, 8, 1)))


def corrupt(*args):
    from keras_cnn.evaluation.corruptions import corrupt

    return corrupt(*args)


TRUST_CASES = [
    api(lambda p: keras_cnn.explain(p.run, np.zeros((1, 9, 9, 1))), ValueError,
        "takes images of 8x8x1 (height x width x channels); resize or convert them first. "
        "Received: images.shape=(1, 9, 9, 1)", "cam-image-of-another-size"),
    api(lambda p: keras_cnn.explain(p.run, np.zeros((8, 8, 3))), ValueError,
        "Received: images.shape=(1, 8, 8, 3)", "cam-image-of-another-channel-count"),
    api(lambda p: keras_cnn.explain(p.run, np.zeros((8, 8, 1)), class_index=10), ValueError,
        "class_index must be an integer in [0, 9]", "cam-class-index-out-of-range"),
    command("show {run} --image {good_png} --cam --class-index -1", "Received: class_index=-1",
            "cam-negative-class-index-cli"),
    command("show {run} --image {good_png} --cam --cam-layer nope", "has no layer 'nope'; layers with a spatial "
            "output: ", "cam-unknown-layer"),
    api(lambda p: keras_cnn.explain(p.run, np.zeros((8, 8, 1)), layer="predictions"), ValueError,
        "layer 'predictions' of small has no spatial (N, H, W, C) output", "cam-layer-without-spatial-output"),
    api(dense_only, ValueError, "dense_only has no layer with a spatial (N, H, W, C) output (a dense-only model?)",
        "cam-dense-only-model"),
    command("show {run} --cam", "--cam needs the image to explain", "cam-without-image"),
    command("evaluate {run} --corruptions", "corruptions need RGB images", "corruptions-on-gray-data"),
    command("evaluate {run} --corruptions --severities 0", "severity must be an integer from 1 to 5. "
            "Received: severity=0", "severity-0"),
    command("evaluate {run} --corruptions --severities 6", "Received: severity=6", "severity-6"),
    command("evaluate {run} --corruptions fog", "unknown corruption", "corruption-unknown"),
    command("evaluate {run} --severities 2", "pass corruptions=True as well", "severities-without-corruptions"),
    api(lambda p: corrupt(np.zeros((8, 8, 3)), "jpeg", 6), ValueError, "Received: severity=6", "severity-6-api"),
    api(lambda p: corrupt(np.zeros((2, 8, 8)), "jpeg", 1), ValueError, "Received: channels=8",
        "corrupt-array-without-channels"),
]


@pytest.mark.parametrize("kind, call, expected, fragment", TRUST_CASES)
def test_trust_bad_input_gives_one_clear_line(kind, call, expected, fragment, paths, tmp_path, monkeypatch, capsys):
    test_bad_input_gives_one_clear_line(kind, call, expected, fragment, paths, tmp_path, monkeypatch, capsys)
