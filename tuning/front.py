"""The Pareto front of a search with several objectives: which trials are on it, its table, picture and exports.

The front is computed (`tuning.pareto.front`) over the COMPLETED trials' objective vectors, each the mean
over the trial's executions. The table lists it sorted by the shipped file's accuracy, mean and spread
(the standard deviation over executions, when there are several); the picture (`keras_cnn.analysis.viz.pareto_front`)
shows every trial's accuracy against its file size, latency as colour, the front joined. `export` runs
`keras_cnn.export` on each front trial's checkpoint, in the variant the search shipped, into
OUT/front/trial_NN/: the full export report, every file verified in LiteRT and MediaPipe.
"""
import os
import statistics

from keras_cnn.tuning import pareto
from keras_cnn.tuning.shipping import LATENCY_RUNS

FRONT_TABLE = "front.txt"
FRONT_PICTURE = "front.png"
FRONT_DIR = "front"
COLUMNS = (("ship_accuracy", "acc", "{:.4f}"), ("ship_kb", "KB", "{:.1f}"), ("ship_latency_ms", "ms b=1", "{:.3f}"),
           ("macs", "MACs", "{:,.0f}"), ("params", "params", "{:,.0f}"), ("val_accuracy", "val acc", "{:.4f}"))


def front_rows(rows, objectives):
    """The completed rows on the Pareto front of `objectives`, the most accurate shipped file first."""
    completed = [row for row in rows if row["status"] == "COMPLETED"
                 and pareto.vector(row, objectives) is not None]
    vectors = [pareto.vector(row, objectives) for row in completed]
    on_front = [completed[i] for i in pareto.front(vectors, pareto.directions(objectives))]
    return sorted(on_front, key=lambda row: (-(row.get("ship_accuracy") or 0), int(row["trial"])))


def spread(row, key):
    """The standard deviation of `key` over the row's executions (None with one execution)."""
    values = [execution.get(key) for execution in row.get("executions") or ()]
    return statistics.stdev(values) if len(values) > 1 and None not in values else None


def cell(row, key, template):
    """A number, with `±spread` when the trial trained several times."""
    value = row.get(key)
    if value is None:
        return "-"
    deviation = spread(row, key)
    return template.format(value) + ("" if deviation is None else "±" + template.format(deviation))


def table(front, objectives, ship):
    """The front as aligned text; the objectives' columns are marked with `*`, exported files listed last."""
    from keras_cnn.utils.tables import format_table

    header = ["trial", *(f"{ship} {title}" + ("*" if _objective(key, objectives) else "")
                         if key.startswith("ship") else title for key, title, _ in COLUMNS), "exported"]
    lines = [[row["trial"], *(cell(row, key, template) for key, _, template in COLUMNS),
              _exported(row.get("export"))] for row in front]
    return format_table(header, lines, right=range(1, len(COLUMNS) + 1))


def _objective(key, objectives):
    return any(pareto.METRICS[name][0] == key for name in objectives)


def _exported(export):
    if not export:
        return "-"
    if export.get("error"):
        return f"failed: {export['error']}"
    return f"{export['file']} {export['kb']:.1f} KB, test {export['test_accuracy_pct']:.2f}%"


def picture(rows, front, path, ship, references=()):
    """front.png: every completed trial's shipped accuracy against size (latency as colour), the front circled.
    `references`: extra labelled points {label, ship_kb, ship_accuracy, ship_latency_ms} (baseline models)."""
    from keras_cnn.analysis import viz

    points = [row for row in rows if row["status"] == "COMPLETED" and row.get("ship_kb") is not None]
    return viz.save(viz.pareto_front(points, front, ship=ship, references=references), path)


def export(folder, front, trial_model, image_data, settings, verbose=False):
    """Export and verify each front trial's checkpoint (`trial_model(trial_id)`) into FOLDER/front/trial_NN/;
    each row gets its "export" entry: the file, its size, its test accuracy, or the error that failed it."""
    import keras_cnn
    from keras_cnn.exporting.pipeline import ExportError

    for row in front:
        model = trial_model(row["trial"])
        out_dir = os.path.join(folder, FRONT_DIR, f"trial_{row['trial']}")
        try:
            report = keras_cnn.export(model, out_dir=out_dir, quantize=(settings["ship"],), data=image_data,
                                      class_names=image_data.class_names,
                                      latency_runs=settings["latency_runs"] or LATENCY_RUNS, verbose=verbose)
        except ExportError as error:
            row["export"] = {"out_dir": out_dir, "error": str(error)}
            continue
        shipped = next(r for r in report.rows if r["format"] == "tflite")
        row["export"] = {"out_dir": out_dir, "file": shipped["artifact"], "kb": shipped["size_kb"],
                         "test_accuracy_pct": shipped["accuracy_pct"], "latency_ms": shipped["latency_ms"],
                         "flagged": shipped["flagged"], "report": os.path.join(out_dir, "export_report.json")}

