"""The model card: the README.md of a run folder, written by `train` and rewritten by `evaluate`."""


def _fine_tune_line(config):
    tune = config.get("fine_tune")
    if not tune:
        return []
    first, last = tune["from_epoch"] + 1, tune["from_epoch"] + tune["epochs"]
    return [f"- Fine-tuning: epochs {first}-{last} with the top {len(tune['blocks'])} backbone block(s) trainable "
            f"({tune['blocks'][0]} ... {tune['blocks'][-1]}; BatchNorm frozen), learning rate {tune['learning_rate']:g}; "
            f"epochs 1-{tune['from_epoch']} trained the head on the frozen backbone"]


def model_card(config, metrics, data):
    """The run folder's README.md: what the model is, its data, recipe and test metrics, how to load it."""
    arguments = config["arguments"]
    overrides = arguments.get("overrides") or {}
    lines = [
        f"# {config['model']} trained on {config['data']}",
        "",
        f"- Model: `{config['model']}`" + (f" with {overrides}" if overrides else "") +
        f", input {'x'.join(map(str, config['input_shape']))} raw pixels [0, 255], {config['num_classes']} outputs",
        f"- Data: `{config['data']}`, {data.sizes['train']} train / {data.sizes['val']} validation / "
        f"{data.sizes['test']} test images, classes: {', '.join(config['class_names'])}",
        f"- Recipe: `{arguments['recipe']}`, {arguments['epochs']} epochs (ran {config['epochs_run']}), "
        f"batch {arguments['batch_size']}, precision {config['precision']}, seed {arguments['seed']}",
        *_fine_tune_line(config),
        f"- Best epoch: {config['best_epoch']} (by {config['monitor']}); training took {config['train_seconds']} s",
        "",
        "## Test metrics",
        "",
        "```",
        str(metrics),
        "```",
        "",
        "![curves](curves.png) ![confusion matrix](confusion_matrix.png)" +
        (" ![reliability diagram](reliability.png)" if getattr(metrics, "calibration", None) else "") +
        (" ![accuracy under corruptions](corruptions.png)" if getattr(metrics, "corruptions", None) else ""),
        "",
        "## Use it",
        "",
        "```python",
        "import keras_cnn",
        "run = keras_cnn.load('.')          # model, class names and this config",
        "```",
        "or `keras-cnn evaluate <this folder>`, `keras-cnn export <this folder>`. Versions: " +
        ", ".join(f"{k} {v}" for k, v in config["versions"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
