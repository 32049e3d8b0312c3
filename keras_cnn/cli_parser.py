"""The `keras-cnn` command line's argparse declarations: every command, its options, choices and help.

Kept apart from the commands themselves (`keras_cnn.cli`); each command is named by its `handler` default, which
`keras_cnn.cli.main` looks up. Choices and defaults come from the library.
"""
import argparse


def train_options():
    """`keras-cnn train` options: name -> (flags, argparse keywords). The names are `keras_cnn.train` keywords, so
    `--config RUN/config.json` can fill any of them from a previous run; choices and defaults are the library's."""
    import inspect

    from keras_cnn.models import options
    from keras_cnn.training import precision, recipes
    from keras_cnn.training.trainer import train

    default = {name: parameter.default for name, parameter in inspect.signature(train).parameters.items()}
    general, airbench = recipes.TRAIN_DEFAULTS, recipes.RECIPE_DEFAULTS["airbench"]
    muon = recipes.RECIPE_DEFAULTS["airbench_muon"]
    return {
        "epochs": (("--epochs",), dict(type=number, help="training epochs; a fraction ends the last one early "
                                       f"(default: the recipe's, airbench {airbench['epochs']}, airbench_muon "
                                       f"{muon['epochs']}, else "
                                       f"{general['epochs']})")),
        "batch_size": (("--batch-size",), dict(type=int, help=f"batch size (default: the recipe's, airbench "
                                               f"{airbench['batch_size']}, airbench_muon {muon['batch_size']}, "
                                               f"else {general['batch_size']})")),
        "recipe": (("--recipe",), dict(choices=recipes.ALL_RECIPES, help="sgd: seed 003's SGD momentum 0.9, lr 0.1 "
                                       "cosine, L2 5e-4; adam: Adam 1e-3; airbench: airbench94's Nesterov SGD, "
                                       "label smoothing 0.2, lookahead and network options; airbench_muon: "
                                       "airbench94_muon's Muon for the convolutions, no lookahead, its head; "
                                       "see docs/training.md "
                                       f"(default {default['recipe']})")),
        "learning_rate": (("--lr",), dict(type=float, help="peak learning rate (default: the recipe's; airbench: "
                                          "per 1,024 examples, 11.5; airbench_muon: the convolutions', 0.24, the "
                                          "other rates scale with it)")),
        "label_smoothing": (("--label-smoothing",), dict(type=float, help="label smoothing, e.g. 0.1 (default: the "
                                                         f"recipe's, airbench and airbench_muon "
                                                         f"{airbench['label_smoothing']}, else "
                                                         f"{general['label_smoothing']})")),
        "ema": (("--ema",), dict(type=float, metavar="MOMENTUM", help="keep a moving average of the weights "
                                 "(e.g. 0.99) and validate, checkpoint and export it (default: the recipe's)")),
        "tta": (("--tta",), dict(choices=options.TTA_LEVELS[1:], help="test-time augmentation of the final test metrics, "
                                 "which keep the plain figure too (default: the recipe's, airbench and "
                                 f"airbench_muon {airbench['tta']})")),
        "precision": (("--precision",), dict(choices=precision.PRECISIONS, help="auto measures what is fastest on "
                                             f"this machine (default {default['precision']})")),
        "mixup": (("--mixup",), dict(type=float, help="MixUp alpha on batches, e.g. 0.2 (default off)")),
        "cutmix": (("--cutmix",), dict(type=float, help="CutMix strength on batches, e.g. 1.0 (default off)")),
        "seed": (("--seed",), dict(type=int, help="seed for weights, data order and augmentation "
                                   f"(default {default['seed']})")),
        "early_stopping": (("--early-stopping",), dict(type=int, metavar="PATIENCE", help="stop after PATIENCE "
                                                       "epochs without improvement")),
        "tensorboard": (("--tensorboard",), dict(action="store_true", default=None, help="write TensorBoard logs")),
        "strategy": (("--strategy",), dict(choices=[s for s in options.STRATEGIES if s],
                                           help="data-parallel training over local devices")),
        "class_weights": (("--class-weights",), dict(action="store_true", default=None,
                                                     help="weight classes by inverse frequency (imbalanced data)")),
        "input_shape": (("--input-shape",), dict(type=int, nargs=3, metavar=("H", "W", "C"),
                                                 help="model input (default: the data's, resized up if needed)")),
        "weights": (("--weights",), dict(help="initial weights: a data set the zoo has trained weights for "
                                         "(cifar10, digits: fine-tuning, with a new head when the classes differ), "
                                         "a .weights.h5 file, an https:// URL or hf://org/name; for *_transfer "
                                         "models the backbone's: imagenet, a weights file, a .keras model or a run "
                                         "folder")),
        "fine_tune_epochs": (("--fine-tune-epochs",), dict(type=int, help="transfer models: epochs of phase 2, "
                                                           "with the top backbone blocks unfrozen at 1/100 of the lr")),
        "unfreeze": (("--unfreeze",), dict(type=int, metavar="BLOCKS", help="transfer models: backbone blocks to "
                                           "fine-tune, from the top (default: all)")),
    }



def number(text):
    """An int where the text is one (3), else a float (9.9)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


CHECKPOINT = "a shipped checkpoint MODEL:DATASET (`keras-cnn list --pretrained`)"


def _csv(text):
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_data_arguments(s, default_note):
    s.add_argument("--data", metavar="SPEC", help=f"'digits', 'tfds:NAME[:CONFIG]', 'folder:PATH' ({default_note})")
    s.add_argument("--val-fraction", type=float, help="validation share carved from train when the data has none "
                   "(default 0.1; the airbench recipes 0: all training images)")
    s.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize images when loading")
    s.add_argument("--data-dir", help="tensorflow-datasets folder: prepared data sets, and where tfds: downloads go")
    s.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="folder data: leave out the images that cannot be decoded (damaged, cut short, not images) "
                   "instead of stopping at the first, counted on screen and listed in skipped_images.txt of the run "
                   "or search folder; every image is decoded once while loading")


def _add_distributed_arguments(s):
    from keras_cnn.training import distributed

    group = s.add_argument_group("several processes, on one machine or many (JAX backend; docs/training.md)")
    group.add_argument("--distributed", action="store_true", help="data-parallel training over processes with "
                       "keras.distribution: run the same command (with --out) in every process; process 0 writes "
                       "the run folder")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address and a free port on it "
                       "(default: $KERAS_DISTRIBUTION_JOB_ADDRESSES, or what JAX detects: SLURM, Open MPI, "
                       "Kubernetes)")
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes train (default: "
                       "$KERAS_DISTRIBUTION_NUM_PROCESSES, or detected)")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1 (default: "
                       "$KERAS_DISTRIBUTION_PROCESS_ID, or detected)")
    group.add_argument("--join-timeout", type=int, default=distributed.JOIN_TIMEOUT, metavar="SECONDS",
                       help=f"for every process to join (default {distributed.JOIN_TIMEOUT})")
    group.add_argument("--heartbeat-timeout", type=int, default=distributed.HEARTBEAT_TIMEOUT, metavar="SECONDS",
                       help="silence after which a process counts as lost and the others stop (default "
                       f"{distributed.HEARTBEAT_TIMEOUT})")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other `keras-cnn` error (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _backend_option(p, default=argparse.SUPPRESS):
    """`--backend`, before or after the command (the command's own, when given, wins)."""
    from keras_cnn.utils.backends import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help="the Keras backend to compute on (default: $KERAS_BACKEND, else tensorflow); jax needs "
                   '`pip install -e ".[jax]"`. export always converts on tensorflow')


def parser():
    from keras_cnn.models import options

    p = _Parser(
        prog="keras-cnn",
        description="A Keras 3 model zoo of the classic tutorial CNNs: list, describe, train, evaluate, "
        "tune and export them.",
        epilog="Run `keras-cnn COMMAND --help` for a command's options.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    p.add_argument("-v", "--verbose", action="store_true", help="also show what TensorFlow, TFLite and absl log "
                   "from C++ (dropped by default: only keras-cnn's own lines are printed)")
    _backend_option(p, default=None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("list", help="list the registered models", description="List the registered models "
                       "with their default input shape and a one-line summary.")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'res*' (default: all)")
    output = s.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print full model information as JSON")
    output.add_argument("--markdown", action="store_true", help="print the model table of docs/models.md")
    s.add_argument("--pretrained", action="store_true", help="only the models with trained weights, as the zoo's "
                   "results table: data set, accuracy, size, int8 latency, training time (use them as MODEL:DATASET, "
                   "e.g. `keras-cnn predict airbench:cifar10 photo.jpg`)")
    s.set_defaults(handler="list")

    s = sub.add_parser("describe", help="per-layer shapes, parameters, MACs and receptive fields",
                       description="Build a model and print one row per layer: output shape, kernel and stride, "
                       "parameters, multiply-accumulates, receptive field and jump.")
    s.add_argument("model", help="a registered model name (see `keras-cnn list`)")
    s.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"), help="input height, width, channels")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="variant override, e.g. --set head=gap --set filters=[16,32] (repeatable)")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.add_argument("--plot", action="store_true", help="also chart receptive field and feature-map size per layer")
    s.add_argument("--plot-out", metavar="PNG", help="where to write the chart (default MODEL_receptive_field.png)")
    _backend_option(s)
    s.set_defaults(handler="describe")

    s = sub.add_parser("show", help="feature maps and filters of a trained model as PNG grids",
                       description="Render what a trained model sees: the feature maps of every conv/pool layer "
                       "for an image (one PNG grid per layer, under RUN/feature_maps/), or with --cam its Grad-CAM "
                       "heat map (RUN/cam/), and/or the first conv layer's filters (RUN/filters.png). Inference "
                       "mode: no augmentation.")
    s.add_argument("source", help=f"a run folder, a .keras file or {CHECKPOINT}")
    s.add_argument("image", nargs="?", help="an image file to run through the model (or --image)")
    s.add_argument("--image", dest="image_option", metavar="IMAGE", help="the same, as an option")
    s.add_argument("--layers", nargs="+", metavar="LAYER", help="only these layers (default: every conv/pool)")
    s.add_argument("--filters", action="store_true", help="draw the kernels of a conv layer")
    s.add_argument("--layer", help="the conv layer for --filters (default: the first)")
    s.add_argument("--out", help="folder for the PNG files (default: the run folder)")
    s.add_argument("--cam", action="store_true", help="instead of feature maps, draw --image with its Grad-CAM heat "
                   "map and the top classes (OUT/cam/IMAGE.png)")
    s.add_argument("--cam-layer", metavar="LAYER", help="the spatial layer for --cam, nested ones too (default: the "
                   "last spatial layer)")
    s.add_argument("--class-index", type=int, metavar="K", help="the class --cam explains (default: the top class)")
    _backend_option(s)
    s.set_defaults(handler="show")

    s = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a zoo model on a data set. Writes saved_models/<model>-<data>-<time>/ "
                       "(model.keras, config.json, labels.txt, history.csv, metrics.json, curves.png, "
                       "confusion_matrix.png, README.md). With no options: `small` on the offline digits data.",
                       epilog="Examples: keras-cnn train small | keras-cnn train deeper --data folder:/data/cifar10 "
                       "--epochs 30 --augment basic --recipe sgd --out saved_models/deeper-cifar10")
    s.add_argument("model", nargs="?", help="a registered model name (see `keras-cnn list`)")
    _add_data_arguments(s, "default: digits, offline")
    for name, (flags, keywords) in train_options().items():
        s.add_argument(*flags, dest=name, **keywords)
    s.add_argument("--augment", choices=options.ALL_AUGMENT_PRESETS, help="augmentation preset")
    s.add_argument("--no-flip", action="store_true", help="no horizontal flips (digits, text)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model override, e.g. --set dropout=0.3")
    s.add_argument("--out", help="run folder (default saved_models/<model>-<data>-<time>)")
    s.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    _add_distributed_arguments(s)
    s.add_argument("--config", metavar="CONFIG_JSON", help="rerun a previous run: RUN_DIR/config.json (or RUN_DIR)")
    s.add_argument("--export", type=_csv, metavar="FORMATS",
                   help="then export and verify the run: saved_model, tflite, onnx (comma-separated; TFLite as "
                   "float32 and int8), as `keras-cnn export RUN --formats FORMATS`")
    _backend_option(s)
    s.set_defaults(handler="train")

    s = sub.add_parser("evaluate", help="evaluate a run folder on its test split (or other data)",
                       description="Accuracy, top-5, loss, per-class precision/recall/F1, the confusion matrix and "
                       "calibration (ECE, NLL, Brier); optionally temperature scaling and the accuracy under "
                       "corruptions. On the run's own test data this also rewrites its metrics.json, "
                       "confusion_matrix.png, reliability.png (and corruptions.png) and README.md.")
    s.add_argument("run", help=f"a run folder written by `keras-cnn train`, or {CHECKPOINT}")
    _add_data_arguments(s, "default: the run's own data")
    s.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default test)")
    s.add_argument("--tta", choices=options.TTA_LEVELS, help="test-time augmentation: flip averages each image's prediction "
                   "with its mirror image's, flip+translate also with 1-pixel shifts (airbench's level 2; not for "
                   "digits or text); default: the run's own (train --tta); another level leaves the run's metrics.json alone")
    s.add_argument("--calibrate", action="store_true", help="fit temperature scaling on the validation split, store "
                   "it in RUN/model.keras (the original kept as model_uncalibrated.keras), report ECE before/after")
    s.add_argument("--corruptions", nargs="?", const=True, type=_csv, metavar="LIST",
                   help="also the accuracy under CIFAR-10-C-style corruptions (RGB data): all, or a comma-separated "
                   "list of gaussian_noise, shot_noise, gaussian_blur, defocus_blur, brightness, contrast, jpeg, "
                   "pixelate; writes RUN/corruptions.png")
    s.add_argument("--severities", type=int, nargs="+", metavar="S", help="corruption severities from 1 to 5 "
                   "(default: 1 2 3 4 5)")
    s.add_argument("--artifact", metavar="FILE", help="measure the corruptions on an exported model (e.g. "
                   "EXPORT/deeper_int8.tflite) instead of the Keras model")
    s.add_argument("--seed", type=int, default=0, help="seed of the corruptions' noise (default 0)")
    _backend_option(s)
    s.set_defaults(handler="evaluate")

    s = sub.add_parser("export", help="export a run to SavedModel / TFLite / ONNX, each verified against Keras",
                       description="Export a trained run folder for serving and mobile: a float32 inference "
                       "rebuild (no augmentation) as a SavedModel, TFLite files (built-in ops only) and ONNX. "
                       "Each artifact is re-loaded in its own runtime and checked on up to 2,000 test images; "
                       "a float32 artifact that differs from Keras by more than 1e-4 fails the export. Writes "
                       "RUN/export/ (or --out) with labels.txt, a JSON sidecar per artifact and export_report.json. "
                       "Every .tflite takes RGB images and carries the TFLite metadata MediaPipe Tasks reads "
                       "(size, normalization, labels); each is also loaded by MediaPipe's ImageClassifier from the "
                       "file alone and must agree with LiteRT.",
                       epilog="Examples: keras-cnn export saved_models/small-digits | keras-cnn export RUN "
                       "--formats tflite --quantize float32,float16,dynamic,int8 --rescue")
    s.add_argument("run", help=f"a run folder written by `keras-cnn train`, or {CHECKPOINT}")
    s.add_argument("--formats", type=_csv, default=("saved_model", "tflite"), metavar="LIST",
                   help="comma-separated: saved_model, tflite, onnx (default: saved_model,tflite; onnx needs "
                   'pip install -e ".[onnx]")')
    s.add_argument("--quantize", type=_csv, default=("float32", "int8"), metavar="LIST",
                   help="TFLite variants, comma-separated: float32, float16, dynamic, int8 (default: float32,int8)")
    s.add_argument("--io", choices=options.INTEGER_IO, default="uint8",
                   help="input/output type of the int8 TFLite model: uint8 takes raw pixels, as cameras and "
                   "MediaPipe give them (default: uint8); int8 files do not load in MediaPipe")
    s.add_argument("--out", metavar="DIR", help="output folder (default: RUN/export)")
    _add_data_arguments(s, "calibration and test data; default: the run's own data")
    s.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="flag quantized models that lose more top-1 accuracy than this (default: 1.0)")
    s.add_argument("--rescue", action="store_true",
                   help="if int8 loses more than --max-accuracy-drop, keep layers in float (those whose float version "
                   "gives back the most accuracy first) until it does not")
    s.add_argument("--author", help="author written into the TFLite metadata")
    s.add_argument("--license", help="licence written into the TFLite metadata, e.g. Apache-2.0")
    s.add_argument("--converter", choices=options.TFLITE_CONVERTERS, default="saved_model",
                   help="TFLite through TensorFlow's converter on the SavedModel (default) or Keras's own "
                   "model.export(format='litert'), with the same settings")
    s.set_defaults(handler="export")

    s = sub.add_parser("predict", help="top classes of image files with a run or an exported model",
                       description="Predict image files with a run folder, a .keras file, a SavedModel folder, "
                       "a .tflite or an .onnx file. Images are resized and converted (gray/RGB) as in training. "
                       "A missing or unreadable image is reported on its own line (stderr) and the others are "
                       "still predicted; the exit status is then 1.")
    s.add_argument("artifact", help=f"run folder, .keras file, SavedModel folder, .tflite or .onnx file, or "
                   f"{CHECKPOINT}")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, BMP, GIF)")
    s.add_argument("--top", type=int, default=3, help="classes shown per image (default: 3)")
    s.add_argument("--client", choices=[client for client in options.CLIENTS if client], help="classify a .tflite with MediaPipe Tasks' "
                   "ImageClassifier, from the file's own metadata (labels, normalization), as an app would")
    _backend_option(s)
    s.set_defaults(handler="predict")

    s = sub.add_parser("tune", help="search for the best model and settings under a budget (keras-tuner)",
                       description="Search a space of zoo models and training settings with keras-tuner, list "
                       "every trial, and retrain the best settings on train + val into a run folder. "
                       "Configurations that cannot work on the data or break a budget are rejected before training. "
                       "Every trained trial is converted to the TFLite file that ships (--ship) and measured; with "
                       "--objectives the search reports the Pareto front of accuracy, size and latency.",
                       epilog="Examples: keras-cnn tune --data digits --tuner hyperband --max-epochs 9 | keras-cnn "
                       "tune --data folder:/data/pets --tuner bayesian --max-trials 50 --max-tflite-kb 300 --resume "
                       "--out saved_models/tune-pets | keras-cnn tune --data folder:/data/pets --objectives "
                       "accuracy,kb,latency --export-front")
    _add_data_arguments(s, "default: digits, offline")
    s.add_argument("--space", default="cnn", help="search space: a family's (cnn, resnet, fast, transfer) or "
                   "package.module:function")
    s.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random",
                   help="random or bayesian (--max-trials trials of --epochs), or hyperband (--max-epochs, --factor)")
    s.add_argument("--max-trials", type=int, default=10, help="trials of random/bayesian search (default 10)")
    s.add_argument("--epochs", type=int, default=5, help="epochs of each random/bayesian trial (default 5)")
    s.add_argument("--max-epochs", type=int, default=9, help="hyperband: most epochs a model trains (default 9)")
    s.add_argument("--factor", type=int, default=3, help="hyperband: reduction factor between rounds (default 3)")
    s.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    s.add_argument("--seed", type=int, default=0, help="seed of the proposals, the weights and the split (default 0)")
    s.add_argument("--out", help="search folder (default saved_models/tune-<data>-<time>)")
    s.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    s.add_argument("--max-params", type=int, metavar="N", help="budget: parameters")
    s.add_argument("--max-macs", type=int, metavar="N", help="budget: multiply-accumulates per image")
    s.add_argument("--max-tflite-kb", type=float, metavar="KB", help="budget: size of the shipped TFLite file (--ship)")
    s.add_argument("--max-latency-ms", type=float, metavar="MS", help="budget: the shipped file's batch-1 LiteRT "
                   "latency on this machine")
    s.add_argument("--ship", choices=options.QUANTIZATIONS, default="int8",
                   help="the TFLite variant every trained trial is converted to (as `export` does) and measured as: "
                   "accuracy on val in LiteRT, file size, latency (default int8, calibrated on training images)")
    s.add_argument("--objectives", type=_csv, metavar="LIST",
                   help=f"search the trade-off between some of {','.join(options.OBJECTIVES)} (of the shipped file), "
                   "e.g. accuracy,kb,latency: every trial's values are kept and the Pareto front is reported "
                   "(OUT/front.txt, front.png); bayesian steers with a random weighting per trial (ParEGO)")
    s.add_argument("--export-front", action="store_true",
                   help="export and verify every model on the front (`keras-cnn export`) into OUT/front/trial_NN/")
    s.add_argument("--executions-per-trial", type=int, default=1, metavar="N",
                   help="train each configuration N times and average (the tables show mean±std; default 1)")
    s.add_argument("--latency-runs", type=int, default=50, metavar="N",
                   help="batch-1 runs whose median is a shipped file's latency (default 50; 0: not timed)")
    s.add_argument("--distributed", action="store_true",
                   help="run keras-tuner's chief and --workers workers as processes on this machine")
    s.add_argument("--workers", type=int, default=2, help="worker processes with --distributed (default 2)")
    s.add_argument("--no-retrain", action="store_true", help="keep the best trial's checkpoint, do not retrain")
    s.add_argument("--quiet", action="store_true", help="no per-trial report")
    _backend_option(s)
    s.set_defaults(handler="tune")

    s = sub.add_parser("weights", help="manage pretrained backbone weights (Keras cache)",
                       description="Pretrained ImageNet weights for the *_transfer models live in the Keras cache "
                       "(~/.keras/models). On a connected machine `keras-cnn weights download resnet50` fills it; "
                       "copy that file to offline machines.")
    weights = s.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    s = weights.add_parser("download", help="download a backbone's ImageNet weights into the Keras cache")
    s.add_argument("name", help="backbone: resnet50, resnet50v2, mobilenetv2, mobilenetv3small, efficientnetb0")
    s.set_defaults(handler="weights_download")

    s = sub.add_parser("data", help="prepare TensorFlow Datasets data sets ahead of time",
                       description="`tfds:NAME` data sets download and prepare on first use where the network "
                       "allows; `keras-cnn data download tfds:NAME` does it ahead of time (for offline machines: "
                       "copy the folder and pass it as --data-dir).")
    data = s.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = data.add_parser("download", help="download and prepare a tfds data set; prints its folder")
    s.add_argument("spec", help="tfds:NAME or tfds:NAME:CONFIG, e.g. tfds:cifar10")
    s.add_argument("--data-dir", help="tensorflow-datasets folder to prepare it in (default ~/tensorflow_datasets)")
    s.set_defaults(handler="data_download")
    return p
