"""The `keras-cnn` command line: a thin argparse layer over the library.

Each subcommand imports what it needs when it runs, so `keras-cnn --help` and
`keras-cnn list` never import TensorFlow. Errors a user can fix are printed as
one line (`keras-cnn: error: ...`, exit status 2), command-line mistakes too;
`--debug` shows the traceback.
"""
import contextlib
import json
import logging
import os
import re
import sys
import threading

# What is shown as the user's error, in one line: a file system problem (missing, not writable, full; an OSError
# wherever it surfaces), or a ValueError keras-cnn itself raised about what it was asked (bad input, a diverged
# run: `TrainingDiverged`). A ValueError raised inside TensorFlow, Keras or another library is keras-cnn's bug,
# as is anything else: one line too, saying how to see the traceback (--debug, which shows the causes as well).
FILE_ERRORS = (OSError,)
LOG_HANDLER = "keras_cnn.cli"


# TensorFlow prints start-up notices (oneDNN's, on AVX-512 CPUs) through absl before its logging is set up,
# where TF_CPP_MIN_LOG_LEVEL does not reach them (tensorflow/tensorflow#100442): they are dropped at import.
STARTUP_NOTICES = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


# What TensorFlow, TFLite and absl write from C++ straight to the process's stderr, below Python: log lines
# ("I0000 00:00:..." or dated), start-up notices, the converter's settings and the interpreter's "INFO:" lines.
# Python has no hook for them, so without --verbose the command reads its own stderr through a pipe and drops
# these lines; everything else (keras-cnn's own lines, Python warnings, other processes') passes in order.
NATIVE_LOG = re.compile(r"(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |"
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] |INFO: |fully_quantize: |"
                        r"To enable the following instructions: |Estimated count of arithmetic ops)")


@contextlib.contextmanager
def _native_logs_dropped():
    """Route file descriptor 2 through a thread that drops NATIVE_LOG lines, for the duration of the block."""
    sys.stderr.flush()
    terminal, forward_to = os.dup(2), os.dup(2)  # the thread owns its copy: it may outlive `terminal`
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as lines, os.fdopen(forward_to, "wb", buffering=0) as out:
            for line in lines:
                if not NATIVE_LOG.match(line.decode(errors="replace")):
                    out.write(line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # the pipe's last writer in this process closes: the thread reads to its end
        os.close(terminal)
        thread.join(timeout=5)


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
    from keras_cnn.models import registry

    names = registry.list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        what = "model with trained weights" if args.pretrained else "model"
        raise ValueError(f"no {what} matches {args.pattern!r}. Received: pattern={args.pattern!r}")
    if args.pretrained and not args.json:
        from keras_cnn.models import checkpoints

        print(checkpoints.results_table(names, markdown=args.markdown))
        return
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
    from keras_cnn.analysis.architecture import describe

    summary = describe(args.model, input_shape=args.input_shape, **_overrides(args.set))
    print(summary.to_json() if args.json else summary)
    if args.plot:
        from keras_cnn.analysis import viz

        path = args.plot_out or f"{args.model}_receptive_field.png"
        viz.save(viz.receptive_field(args.model, input_shape=args.input_shape, **_overrides(args.set)), path)
        print(f"\nreceptive-field chart: {path}")


def cmd_show(args):
    _quiet_tensorflow()
    from keras_cnn.analysis import viz
    from keras_cnn.artifacts import runs
    from keras_cnn.models import checkpoints
    from keras_cnn.utils import io

    if args.image and args.image_option:
        raise ValueError(f"give the image once, not also as --image. Received: image={args.image!r}, "
                         f"--image={args.image_option!r}")
    args.image = args.image or args.image_option
    if os.path.isdir(args.source) or checkpoints.is_checkpoint_spec(args.source):
        run = runs.load(args.source)
        model, folder, class_names = run.model, run.out_folder, run.class_names
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
        from keras_cnn.evaluation.explaining import overlay

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
                                          ("data_dir", args.data_dir), ("skip_bad_images", args.skip_bad_images))
            if value is not None}


def cmd_train(args):
    processes = _distributed_config(args)
    if processes is not None:
        from keras_cnn.training import supervision

        if not supervision.is_child():  # train in a watched child process: JAX's aborts become one line
            label = "this process" if processes.process_id is None else f"process {processes.process_id}"
            return supervision.supervise(args.argv, label, drop=None if args.verbose else NATIVE_LOG)
        supervision.die_with_parent()
    _quiet_tensorflow()
    from keras_cnn.artifacts import runs
    from keras_cnn.cli_parser import train_options
    from keras_cnn.training.trainer import train

    kwargs = {"data": "digits"} if processes is None else {"data": "digits", "distribution": processes}
    if args.config:
        kwargs.update(runs.open_run(args.config).rerun_arguments())
    elif not args.model:
        raise ValueError("name a model to train (see `keras-cnn list`) or pass --config RUN_DIR/config.json")
    if args.model:
        kwargs["model"] = args.model
    if args.data:
        kwargs["data"] = args.data
    kwargs.update({name: getattr(args, name) for name in train_options() if getattr(args, name) is not None})
    kwargs.update(_overrides(args.set))
    if args.augment is not None:
        kwargs["augment"] = args.augment
    if args.no_flip:
        kwargs["flip"] = False
    if _data_options(args):
        kwargs["data_options"] = {**(kwargs.get("data_options") or {}), **_data_options(args)}
    run = train(kwargs.pop("model"), kwargs.pop("data"), out=args.out, resume=args.resume, **kwargs)
    if run.metrics is None:  # a process other than 0 of a distributed run: process 0 reports
        print(f"trained; process 0 writes the run folder {run.path} and reports")
        return
    print(run.metrics)
    print(f"\nrun folder: {run.path}")
    if args.export:
        _export_trained(run, args.export)


def _distributed_config(args):
    """`train --distributed`'s `DistributedConfig` (its flags, checked), or None without --distributed."""
    from keras_cnn.training import distributed

    flags = {"coordinator": args.coordinator, "num_processes": args.num_processes, "process_id": args.process_id}
    if not args.distributed:
        given = next((name for name, value in flags.items() if value is not None), None)
        if given:
            raise ValueError(f"--{given.replace('_', '-')} applies to --distributed training. "
                             f"Received: {given}={flags[given]!r}")
        return None
    from keras_cnn.utils import backends

    distributed.check_backend(backends.requested(), args.strategy)
    return distributed.DistributedConfig.from_environment(**flags, join_timeout=args.join_timeout,
                                                          heartbeat_timeout=args.heartbeat_timeout)


def _export_trained(run, formats):
    """`train --export`: in this process on TensorFlow; from another backend, in a TensorFlow process, since
    Keras keeps one backend per process and export converts with TensorFlow."""
    import keras

    if keras.backend.backend() == "tensorflow":
        from keras_cnn.exporting.pipeline import export

        export(run, formats=formats)
        return
    import subprocess

    command = [sys.executable, "-m", "keras_cnn.cli", "--backend", "tensorflow", "export", run.path, "--formats",
               ",".join(formats) if isinstance(formats, (list, tuple)) else formats]
    if subprocess.run(command, env={**os.environ, "KERAS_BACKEND": "tensorflow"}).returncode:
        raise ValueError(f"the export of {run.path} failed (its lines are above); the run folder is complete: "
                         f"export it again with `keras-cnn export {run.path}`. Received: export={formats!r}")


def cmd_export(args):
    _quiet_tensorflow()
    from keras_cnn.artifacts import runs
    from keras_cnn.exporting.pipeline import export

    data = None
    if args.data or _data_options(args):
        data = runs.open_run(args.run).load_data(args.data, **_data_options(args))
    export(args.run, args.out, formats=args.formats, quantize=args.quantize, data=data, io=args.io,
           max_accuracy_drop=args.max_accuracy_drop, rescue=args.rescue, author=args.author, license=args.license,
           converter=args.converter)


def cmd_predict(args):
    _quiet_tensorflow()
    from keras_cnn.artifacts.prediction import predict

    results = predict(args.artifact, args.images, top=args.top, client=args.client)
    for result in results:
        print(result, file=sys.stderr if result.error else sys.stdout)
    return 1 if any(result.error for result in results) else 0


def cmd_evaluate(args):
    _quiet_tensorflow()
    from keras_cnn.artifacts import runs
    from keras_cnn.evaluation.evaluate import evaluate

    run = runs.load(args.run)
    data = None
    if args.data or _data_options(args):
        data = run.load_data(args.data, **_data_options(args))
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
                    max_latency_ms=args.max_latency_ms, objectives=args.objectives, ship=args.ship,
                    latency_runs=args.latency_runs, executions_per_trial=args.executions_per_trial,
                    export_front=args.export_front, distributed=args.distributed, workers=args.workers,
                    retrain=not args.no_retrain, verbose=0 if args.quiet else 1)
    print(result.table())
    if result.objectives:
        print(f"\nPareto front of {','.join(result.objectives)} ({result.path}/front.txt, front.png):\n"
              f"{result.front_table()}")
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
    from keras_cnn.models.pretrained import download_weights

    print(download_weights(args.name))


def cmd_data_download(args):
    _quiet_tensorflow()
    from keras_cnn.data.tfds_source import builder

    print(builder(args.spec, args.data_dir).data_dir)


HANDLERS = {  # the parser's `handler` names -> the functions that run them
    "list": cmd_list,
    "describe": cmd_describe,
    "show": cmd_show,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "predict": cmd_predict,
    "tune": cmd_tune,
    "weights_download": cmd_weights_download,
    "data_download": cmd_data_download,
}


# Commands that run on TensorFlow whatever $KERAS_BACKEND says: export converts with TensorFlow's converter,
# and the others only fetch files.
TENSORFLOW_COMMANDS = ("export", "weights_download", "data_download")


def _select_backend(args):
    """Set the Keras backend from --backend (or $KERAS_BACKEND) before any command imports Keras."""
    from keras_cnn.utils import backends

    if args.handler not in TENSORFLOW_COMMANDS:
        backends.select(args.backend)
        return
    if args.backend not in (None, "tensorflow"):
        raise ValueError(f"{args.command} runs on TensorFlow (its converter and loaders are TensorFlow's); a model "
                         f"trained on any backend exports from there. Received: backend={args.backend!r}")
    backends.select("tensorflow")


def main(argv=None):
    from keras_cnn.cli_parser import parser

    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `train --distributed` runs again as its child
    _configure_logging()
    for library in () if args.verbose else ("absl", "tensorflow"):  # their warnings speak of TensorFlow's insides
        logging.getLogger(library).setLevel(logging.ERROR)
    try:
        _select_backend(args)
        with contextlib.nullcontext() if args.verbose or _distributed_child() else _native_logs_dropped():
            status = HANDLERS[args.handler](args)
    except Exception as error:
        if args.debug:
            raise
        if _is_user_error(error):
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"keras-cnn: error: {message}", file=sys.stderr)
            return 2
        message = " ".join(str(error).split()[:40])
        print(f"keras-cnn: internal error: {type(error).__name__}: {message} (a bug in keras-cnn, not in what you "
              "asked for: rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("keras-cnn: interrupted", file=sys.stderr)
        return 130
    return status or 0


def _is_user_error(error):
    """Whether `error` is about what the user asked or their files (see FILE_ERRORS), not a bug."""
    if isinstance(error, FILE_ERRORS) or type(error).__module__.startswith("keras_cnn."):  # TrainingDiverged, ...
        return True
    return isinstance(error, ValueError) and _raised_in_keras_cnn(error)


def _raised_in_keras_cnn(error):
    """Whether the innermost frame of `error`'s traceback is keras-cnn's own code (keras_cnn or its tuning)."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    roots = [os.path.dirname(os.path.abspath(module.__file__)) + os.sep for name, module in list(sys.modules.items())
             if name in ("keras_cnn", "keras_cnn.tuning") and getattr(module, "__file__", None)]
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(tuple(roots))


def _distributed_child():
    """Whether this is the training process of `train --distributed`, whose watchdog filters its output."""
    from keras_cnn.training import supervision

    return supervision.is_child()


if __name__ == "__main__":
    status = main()
    if status and _distributed_child():  # leave now: JAX's exit handler would wait for the processes that failed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
