"""The `keras-cnn` command line: a thin argparse layer over the library.

Each subcommand imports what it needs when it runs, so `keras-cnn --help` and
`keras-cnn list` never import TensorFlow. Errors a user can fix are printed as
one line (`keras-cnn: error: ...`, exit status 2), command-line mistakes too;
`--debug` shows the traceback.
"""
import argparse
import json
import logging
import os
import sys

# Errors that describe bad input, a file system problem (missing, not writable, full) or a diverged run rather
# than a bug: shown as one line.
USER_ERRORS = (ValueError, OSError, RuntimeError)
LOG_HANDLER = "keras_cnn.cli"

# `keras-cnn train` options: name -> (flags, argparse keywords). The names are `keras_cnn.train` keywords,
# so `--config RUN/config.json` can fill any of them from a previous run.
TRAIN_OPTIONS = {
    "epochs": (("--epochs",), dict(type=int, help="training epochs (default 30)")),
    "batch_size": (("--batch-size",), dict(type=int, help="batch size (default 128)")),
    "recipe": (("--recipe",), dict(choices=("sgd", "adam"), help="sgd: seed 003's SGD momentum 0.9, lr 0.1 "
                                   "cosine, L2 5e-4 (default); adam: Adam 1e-3")),
    "learning_rate": (("--lr",), dict(type=float, help="peak learning rate (default: the recipe's)")),
    "label_smoothing": (("--label-smoothing",), dict(type=float, help="label smoothing, e.g. 0.1")),
    "precision": (("--precision",), dict(choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"),
                                         help="auto (default) measures what is fastest on this machine")),
    "mixup": (("--mixup",), dict(type=float, help="MixUp alpha on batches, e.g. 0.2 (default off)")),
    "cutmix": (("--cutmix",), dict(type=float, help="CutMix strength on batches, e.g. 1.0 (default off)")),
    "seed": (("--seed",), dict(type=int, help="seed for weights, data order and augmentation (default 0)")),
    "early_stopping": (("--early-stopping",), dict(type=int, metavar="PATIENCE", help="stop after PATIENCE "
                                                   "epochs without improvement")),
    "tensorboard": (("--tensorboard",), dict(action="store_true", default=None, help="write TensorBoard logs")),
    "strategy": (("--strategy",), dict(choices=("mirrored",), help="data-parallel training over local devices")),
    "class_weights": (("--class-weights",), dict(action="store_true", default=None,
                                                 help="weight classes by inverse frequency (imbalanced data)")),
    "input_shape": (("--input-shape",), dict(type=int, nargs=3, metavar=("H", "W", "C"),
                                             help="model input (default: the data's, resized up if needed)")),
    "weights": (("--weights",), dict(help="initial weights: a .weights.h5 file; for *_transfer models the "
                                     "backbone's: imagenet, a weights file, a .keras model or a run folder")),
    "fine_tune_epochs": (("--fine-tune-epochs",), dict(type=int, help="transfer models: epochs of phase 2, with "
                                                       "the top backbone blocks unfrozen at 1/100 of the lr")),
    "unfreeze": (("--unfreeze",), dict(type=int, metavar="BLOCKS", help="transfer models: backbone blocks to "
                                       "fine-tune, from the top (default: all)")),
}


# TensorFlow prints start-up notices (oneDNN's, on AVX-512 CPUs) through absl before its logging is set up,
# where TF_CPP_MIN_LOG_LEVEL does not reach them (tensorflow/tensorflow#100442): they are dropped at import.
STARTUP_NOTICES = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def _quiet_tensorflow():
    """Import TensorFlow with its start-up notices dropped; anything else it prints still reaches stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured:
            if not any(notice in line for notice in STARTUP_NOTICES):
                sys.stderr.write(line)


def cmd_list(args):
    from keras_cnn import registry

    names = registry.list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}. Received: pattern={args.pattern!r}")
    if args.json:
        print(json.dumps([registry.model_info(n) for n in names], indent=2, default=list))
        return
    if args.markdown:
        print(registry.markdown_table(names))
        return
    width = max(map(len, names))
    for name in names:
        info = registry.model_info(name)
        shape = "x".join(map(str, info["input_shape"]))
        print(f"{name:<{width}}  {shape:<9}  {info['summary']}")


def _overrides(pairs):
    """`--set key=value` pairs, values parsed as JSON where possible (true, 0.5, [32, 64])."""
    overrides = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value. Received: --set {pair}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def cmd_describe(args):
    _quiet_tensorflow()
    from keras_cnn.analysis import describe

    summary = describe(args.model, input_shape=args.input_shape, **_overrides(args.set))
    print(summary.to_json() if args.json else summary)
    if args.plot:
        from keras_cnn import viz

        path = args.plot_out or f"{args.model}_receptive_field.png"
        viz.save(viz.receptive_field(args.model, input_shape=args.input_shape, **_overrides(args.set)), path)
        print(f"\nreceptive-field chart: {path}")


def cmd_show(args):
    _quiet_tensorflow()
    from keras_cnn import io, viz

    if os.path.isdir(args.source):
        run = io.load(args.source)
        model, folder, class_names = run.model, args.source, run.class_names
    else:
        model, folder, class_names = io.load_model(args.source), os.path.dirname(os.path.abspath(args.source)), None
    out = args.out or folder
    if args.cam and not args.image:
        raise ValueError("--cam needs the image to explain: --image IMAGE. Received: image=None")
    if not args.image and not args.filters:
        raise ValueError("say what to show: --image IMAGE (feature maps, or with --cam a Grad-CAM map) and/or "
                         "--filters")
    written = []
    if args.filters:
        written.append(viz.save(viz.filters(model, args.layer), os.path.join(out, "filters.png")))
    if args.cam:
        from keras_cnn.explaining import overlay

        path = os.path.join(out, "cam", os.path.splitext(os.path.basename(args.image))[0] + ".png")
        written.append(viz.save(overlay(model, args.image, class_names, args.class_index, args.cam_layer), path))
    elif args.image:
        base = os.path.splitext(os.path.basename(args.image))[0]
        for layer in args.layers or viz.conv_and_pool_layers(model):
            path = os.path.join(out, "feature_maps", f"{base}_{layer}.png")
            written.append(viz.save(viz.feature_maps(model, args.image, [layer]), path))
    print("\n".join(written))


def _configure_logging():
    handler = logging.StreamHandler()  # to the current sys.stderr
    handler.set_name(LOG_HANDLER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("keras_cnn")
    for previous in [h for h in logger.handlers if h.get_name() == LOG_HANDLER]:  # main() called again
        logger.removeHandler(previous)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # TensorFlow's absl adds a root handler; without this every line prints twice


def _data_options(args):
    return {key: value for key, value in (("val_fraction", args.val_fraction), ("image_size", args.image_size),
                                          ("data_dir", args.data_dir)) if value is not None}


def cmd_train(args):
    _quiet_tensorflow()
    from keras_cnn.training import train

    kwargs = {"data": "digits"}
    if args.config:
        with open(args.config) as handle:
            previous = json.load(handle)
        arguments = dict(previous["arguments"])
        for ignored in ("out", "resume", "verbose"):  # a rerun gets a new folder and its own progress bar
            arguments.pop(ignored, None)
        kwargs.update(arguments.pop("overrides", None) or {}, **arguments)
        kwargs.update(model=previous["model"], data=previous["data"])
    elif not args.model:
        raise ValueError("name a model to train (see `keras-cnn list`) or pass --config RUN_DIR/config.json")
    if args.model:
        kwargs["model"] = args.model
    if args.data:
        kwargs["data"] = args.data
    kwargs.update({name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name) is not None})
    kwargs.update(_overrides(args.set))
    if args.augment is not None:
        kwargs["augment"] = args.augment
    if args.no_flip:
        kwargs["flip"] = False
    if _data_options(args):
        kwargs["data_options"] = {**(kwargs.get("data_options") or {}), **_data_options(args)}
    run = train(kwargs.pop("model"), kwargs.pop("data"), out=args.out, resume=args.resume, **kwargs)
    print(run.metrics)
    print(f"\nrun folder: {run.path}")
    if args.export:
        from keras_cnn.exporting import export

        export(run.path, formats=args.export)


def _csv(text):
    return tuple(part.strip() for part in text.split(",") if part.strip())


def cmd_export(args):
    _quiet_tensorflow()
    from keras_cnn.exporting import export

    data = None
    if args.data or _data_options(args):
        from keras_cnn.data import load_data

        with open(os.path.join(args.run, "config.json")) as handle:
            config = json.load(handle)
        data = load_data(args.data or config["data"], **{**config.get("data_options", {}), **_data_options(args)})
    export(args.run, args.out, formats=args.formats, quantize=args.quantize, data=data, io=args.io,
           max_accuracy_drop=args.max_accuracy_drop, rescue=args.rescue, author=args.author, license=args.license,
           converter=args.converter)


def cmd_predict(args):
    _quiet_tensorflow()
    from keras_cnn.prediction import predict

    results = predict(args.artifact, args.images, top=args.top, client=args.client)
    for result in results:
        print(result, file=sys.stderr if result.error else sys.stdout)
    return 1 if any(result.error for result in results) else 0


def cmd_evaluate(args):
    _quiet_tensorflow()
    from keras_cnn.evaluation import evaluate
    from keras_cnn.io import load

    run = load(args.run)
    data = None
    if args.data or _data_options(args):
        from keras_cnn.data import load_data

        data = load_data(args.data or run.config["data"], **{**run.config.get("data_options", {}),
                                                             **_data_options(args)})
    corruptions = True if args.corruptions in (True, ("all",)) else args.corruptions
    print(evaluate(run, data, split=args.split, tta=args.tta, calibrate=args.calibrate, corruptions=corruptions,
                   severities=args.severities, artifact=args.artifact, seed=args.seed))


def cmd_tune(args):
    _quiet_tensorflow()
    from keras_cnn.tuning import search

    result = search(args.data or "digits", space=args.space, tuner=args.tuner, max_trials=args.max_trials,
                    epochs=args.epochs, max_epochs=args.max_epochs, factor=args.factor, seed=args.seed,
                    out=args.out, resume=args.resume, batch_size=args.batch_size, data_options=_data_options(args),
                    max_params=args.max_params, max_macs=args.max_macs, max_tflite_kb=args.max_tflite_kb,
                    max_latency_ms=args.max_latency_ms, distributed=args.distributed, workers=args.workers,
                    retrain=not args.no_retrain, verbose=0 if args.quiet else 1)
    print(result.table())
    print(f"\nsearch folder: {result.path} (results.txt, results.json, best_hyperparameters.json, tensorboard/)")
    if result.best_trial is None:
        print("no trial completed within the budgets: nothing to keep or retrain")
        return
    print(f"best trial {result.best_trial['trial']}: {result.objective['name']} {result.best_trial['score']:.4f}; "
          f"its checkpoint (train split only): {result.path}/best_trial.keras")
    if result.run_dir:
        print(f"retrained on train + val: {result.run_dir}, test accuracy {result.test_accuracy:.2%} "
              f"(the checkpoint: {result.best_trial_test_accuracy:.2%}); `keras-cnn export {result.run_dir}`")


def cmd_weights_download(args):
    _quiet_tensorflow()
    from keras_cnn.models.transfer import download_weights

    print(download_weights(args.name))


def cmd_data_download(args):
    _quiet_tensorflow()
    from keras_cnn.tfds_source import builder

    print(builder(args.spec, args.data_dir).data_dir)


def _add_data_arguments(s, default_note):
    s.add_argument("--data", metavar="SPEC", help=f"'digits', 'tfds:NAME[:CONFIG]', 'folder:PATH' ({default_note})")
    s.add_argument("--val-fraction", type=float, help="validation share carved from train when the data has none")
    s.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize images when loading")
    s.add_argument("--data-dir", help="tensorflow-datasets folder: prepared data sets, and where tfds: downloads go")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other `keras-cnn` error (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def parser():
    p = _Parser(
        prog="keras-cnn",
        description="A Keras 3 model zoo of the classic tutorial CNNs: list, describe, train, evaluate, "
        "tune and export them.",
        epilog="Run `keras-cnn COMMAND --help` for a command's options.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("list", help="list the registered models", description="List the registered models "
                       "with their default input shape and a one-line summary.")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'res*' (default: all)")
    output = s.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print full model information as JSON")
    output.add_argument("--markdown", action="store_true", help="print the model table for the README")
    s.set_defaults(handler=cmd_list)

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
    s.set_defaults(handler=cmd_describe)

    s = sub.add_parser("show", help="feature maps and filters of a trained model as PNG grids",
                       description="Render what a trained model sees: the feature maps of every conv/pool layer "
                       "for an image (one PNG grid per layer, under RUN/feature_maps/), or with --cam its Grad-CAM "
                       "heat map (RUN/cam/), and/or the first conv layer's filters (RUN/filters.png). Inference "
                       "mode: no augmentation.")
    s.add_argument("source", help="a run folder or a .keras file")
    s.add_argument("--image", help="an image file to run through the model")
    s.add_argument("--layers", nargs="+", metavar="LAYER", help="only these layers (default: every conv/pool)")
    s.add_argument("--filters", action="store_true", help="draw the kernels of a conv layer")
    s.add_argument("--layer", help="the conv layer for --filters (default: the first)")
    s.add_argument("--out", help="folder for the PNG files (default: the run folder)")
    s.add_argument("--cam", action="store_true", help="instead of feature maps, draw --image with its Grad-CAM heat "
                   "map and the top classes (OUT/cam/IMAGE.png)")
    s.add_argument("--cam-layer", metavar="LAYER", help="the spatial layer for --cam, nested ones too (default: the "
                   "last spatial layer)")
    s.add_argument("--class-index", type=int, metavar="K", help="the class --cam explains (default: the top class)")
    s.set_defaults(handler=cmd_show)

    s = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a zoo model on a data set. Writes saved_models/<model>-<data>-<time>/ "
                       "(model.keras, config.json, labels.txt, history.csv, metrics.json, curves.png, "
                       "confusion_matrix.png, README.md). With no options: `small` on the offline digits data.",
                       epilog="Examples: keras-cnn train small | keras-cnn train deeper --data folder:/data/cifar10 "
                       "--epochs 30 --augment basic --recipe sgd --out saved_models/deeper-cifar10")
    s.add_argument("model", nargs="?", help="a registered model name (see `keras-cnn list`)")
    _add_data_arguments(s, "default: digits, offline")
    for name, (flags, keywords) in TRAIN_OPTIONS.items():
        s.add_argument(*flags, dest=name, **keywords)
    s.add_argument("--augment", choices=("none", "basic", "strong", "cutout"), help="augmentation preset")
    s.add_argument("--no-flip", action="store_true", help="no horizontal flips (digits, text)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model override, e.g. --set dropout=0.3")
    s.add_argument("--out", help="run folder (default saved_models/<model>-<data>-<time>)")
    s.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    s.add_argument("--config", metavar="CONFIG_JSON", help="rerun a previous run: RUN_DIR/config.json")
    s.add_argument("--export", type=_csv, metavar="FORMATS",
                   help="then export and verify the run: saved_model, tflite, onnx (comma-separated; TFLite as "
                   "float32 and int8), as `keras-cnn export RUN --formats FORMATS`")
    s.set_defaults(handler=cmd_train)

    s = sub.add_parser("evaluate", help="evaluate a run folder on its test split (or other data)",
                       description="Accuracy, top-5, loss, per-class precision/recall/F1, the confusion matrix and "
                       "calibration (ECE, NLL, Brier); optionally temperature scaling and the accuracy under "
                       "corruptions. On the run's own test data this also rewrites its metrics.json, "
                       "confusion_matrix.png, reliability.png (and corruptions.png) and README.md.")
    s.add_argument("run", help="a run folder written by `keras-cnn train`")
    _add_data_arguments(s, "default: the run's own data")
    s.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default test)")
    s.add_argument("--tta", choices=("flip",), help="test-time augmentation: average each image's prediction with "
                   "its mirror image's (not for digits or text); leaves the run's metrics.json alone")
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
    s.set_defaults(handler=cmd_evaluate)

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
    s.add_argument("run", help="a run folder written by `keras-cnn train`")
    s.add_argument("--formats", type=_csv, default=("saved_model", "tflite"), metavar="LIST",
                   help="comma-separated: saved_model, tflite, onnx (default: saved_model,tflite; onnx needs "
                   'pip install -e ".[onnx]")')
    s.add_argument("--quantize", type=_csv, default=("float32", "int8"), metavar="LIST",
                   help="TFLite variants, comma-separated: float32, float16, dynamic, int8 (default: float32,int8)")
    s.add_argument("--io", choices=("uint8", "int8"), default="uint8",
                   help="input/output type of the int8 TFLite model: uint8 takes raw pixels, as cameras and "
                   "MediaPipe give them (default: uint8); int8 files do not load in MediaPipe")
    s.add_argument("--out", metavar="DIR", help="output folder (default: RUN/export)")
    _add_data_arguments(s, "calibration and test data; default: the run's own data")
    s.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="flag quantized models that lose more top-1 accuracy than this (default: 1.0)")
    s.add_argument("--rescue", action="store_true",
                   help="if int8 loses more than --max-accuracy-drop, keep its worst layers in float until it does not")
    s.add_argument("--author", help="author written into the TFLite metadata")
    s.add_argument("--license", help="licence written into the TFLite metadata, e.g. Apache-2.0")
    s.add_argument("--converter", choices=("saved_model", "keras"), default="saved_model",
                   help="TFLite through TensorFlow's converter on the SavedModel (default) or Keras's own "
                   "model.export(format='litert'), with the same settings")
    s.set_defaults(handler=cmd_export)

    s = sub.add_parser("predict", help="top classes of image files with a run or an exported model",
                       description="Predict image files with a run folder, a .keras file, a SavedModel folder, "
                       "a .tflite or an .onnx file. Images are resized and converted (gray/RGB) as in training. "
                       "A missing or unreadable image is reported on its own line (stderr) and the others are "
                       "still predicted; the exit status is then 1.")
    s.add_argument("artifact", help="run folder, .keras file, SavedModel folder, .tflite or .onnx file")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, BMP, GIF)")
    s.add_argument("--top", type=int, default=3, help="classes shown per image (default: 3)")
    s.add_argument("--client", choices=("mediapipe",), help="classify a .tflite with MediaPipe Tasks' "
                   "ImageClassifier, from the file's own metadata (labels, normalization), as an app would")
    s.set_defaults(handler=cmd_predict)

    s = sub.add_parser("tune", help="search for the best model and settings under a budget (keras-tuner)",
                       description="Search a space of zoo models and training settings with keras-tuner, list "
                       "every trial, and retrain the best settings on train + val into a run folder. "
                       "Configurations that cannot work on the data or break a budget are rejected before training.",
                       epilog="Examples: keras-cnn tune --data digits --tuner hyperband --max-epochs 9 | keras-cnn "
                       "tune --data folder:/data/pets --tuner bayesian --max-trials 50 --max-tflite-kb 300 --resume "
                       "--out saved_models/tune-pets")
    _add_data_arguments(s, "default: digits, offline")
    s.add_argument("--space", default="cnn", help="search space: a name (cnn) or package.module:function")
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
    s.add_argument("--max-tflite-kb", type=float, metavar="KB", help="budget: float32 TFLite file size")
    s.add_argument("--max-latency-ms", type=float, metavar="MS", help="budget: TFLite batch-1 latency on this machine")
    s.add_argument("--distributed", action="store_true",
                   help="run keras-tuner's chief and --workers workers as processes on this machine")
    s.add_argument("--workers", type=int, default=2, help="worker processes with --distributed (default 2)")
    s.add_argument("--no-retrain", action="store_true", help="keep the best trial's checkpoint, do not retrain")
    s.add_argument("--quiet", action="store_true", help="no per-trial report")
    s.set_defaults(handler=cmd_tune)

    s = sub.add_parser("weights", help="manage pretrained backbone weights (Keras cache)",
                       description="Pretrained ImageNet weights for the *_transfer models live in the Keras cache "
                       "(~/.keras/models). On a connected machine `keras-cnn weights download resnet50` fills it; "
                       "copy that file to offline machines.")
    weights = s.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    s = weights.add_parser("download", help="download a backbone's ImageNet weights into the Keras cache")
    s.add_argument("name", help="backbone: resnet50, resnet50v2, mobilenetv2, mobilenetv3small, efficientnetb0")
    s.set_defaults(handler=cmd_weights_download)

    s = sub.add_parser("data", help="prepare TensorFlow Datasets data sets ahead of time",
                       description="`tfds:NAME` data sets download and prepare on first use where the network "
                       "allows; `keras-cnn data download tfds:NAME` does it ahead of time (for offline machines: "
                       "copy the folder and pass it as --data-dir).")
    data = s.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = data.add_parser("download", help="download and prepare a tfds data set; prints its folder")
    s.add_argument("spec", help="tfds:NAME or tfds:NAME:CONFIG, e.g. tfds:cifar10")
    s.add_argument("--data-dir", help="tensorflow-datasets folder to prepare it in (default ~/tensorflow_datasets)")
    s.set_defaults(handler=cmd_data_download)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    _configure_logging()
    try:
        status = args.handler(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"keras-cnn: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-cnn: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
