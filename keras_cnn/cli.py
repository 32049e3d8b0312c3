"""The `keras-cnn` command line: a thin argparse layer over the library.

Each subcommand imports what it needs when it runs, so `keras-cnn --help` and
`keras-cnn list` never import TensorFlow. Errors a user can fix are printed as
one line (`keras-cnn: error: ...`, exit status 2); `--debug` shows the traceback.
"""
import argparse
import json
import os
import sys

# Errors that describe bad input rather than a bug: shown as one line.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def parser():
    p = argparse.ArgumentParser(
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
    s.add_argument("--json", action="store_true", help="print full model information as JSON")
    s.add_argument("--markdown", action="store_true", help="print the model table for the README")
    s.set_defaults(run=cmd_list)

    s = sub.add_parser("describe", help="per-layer shapes, parameters, MACs and receptive fields",
                       description="Build a model and print one row per layer: output shape, kernel and stride, "
                       "parameters, multiply-accumulates, receptive field and jump.")
    s.add_argument("model", help="a registered model name (see `keras-cnn list`)")
    s.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"), help="input height, width, channels")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="variant override, e.g. --set head=gap --set filters=[16,32] (repeatable)")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.set_defaults(run=cmd_describe)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"keras-cnn: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-cnn: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
