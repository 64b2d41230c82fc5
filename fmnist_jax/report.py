"""Markdown for people: an evaluation's report, the per-class table, and the model comparison.

Tables are padded so that they read as plain text in a terminal too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table, columns padded; the first column left-aligned, the others right."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join([":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]])
    return "\n".join([line(cells[0]), rule + "|", *map(line, cells[1:])]) + "\n"


def percent(value: float) -> str:
    return f"{value:.2%}"


def stat(described: dict[str, Any], fmt: Callable[[float], str] = percent) -> str:
    """`mean ± std` of a `metrics.describe` record, or the plain value when it has one member."""
    if described.get("n", 1) > 1:
        return f"{fmt(described['mean'])} ± {fmt(described['std'])}"
    return fmt(described["mean"])


def number(value: float) -> str:
    return f"{value:.4f}"


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} s"


def per_second(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def per_class_table(summary: dict[str, Any]) -> str:
    """The classification report: per class, then macro and weighted means.

    Precision, recall, F1, support and accuracy; with several members, their F1 as mean ± std too.
    """
    members = summary.get("across_members")
    headers = ["class", "precision", "recall", "F1", "support", "accuracy"]
    headers += ["F1 of members (mean ± std)"] if members else []
    rows = []
    for name in summary["class_names"]:
        s = summary["per_class"][name]
        rows.append([name, number(s["precision"]), number(s["recall"]), number(s["f1"]),
                     s["support"], percent(s["accuracy"])]
                    + ([stat(members["per_class"][name]["f1"], number)] if members else []))
    for avg in ("macro", "weighted"):
        s = summary[avg]
        rows.append([f"{avg} avg", number(s["precision"]), number(s["recall"]), number(s["f1"]),
                     summary["num_examples"], ""]
                    + ([stat(members[avg]["f1"], number)] if members else []))
    return table(headers, rows)


def setting_text(values: dict[str, float]) -> str:
    """A sweep's setting as `learning_rate=0.002, weight_decay=0`."""
    return ", ".join(f"{field.removeprefix('optimizer.')}={value:g}"
                     for field, value in values.items())


def headline(summary: dict[str, Any]) -> str:
    """One line: model, split, accuracy, loss, macro F1 (and the members' spread)."""
    group = "parts" if "parts" in summary else "members"
    size = len(summary["parts"]) if "parts" in summary else len(summary["seeds"])
    who = f"{summary['model']} ({size}-{group[:-1]} ensemble)" \
        if summary["predictor"] == "ensemble" else summary["model"]
    if summary.get("tta"):
        who += " with flip TTA"
    if "setting" in summary:
        who += f", sweep setting {summary['setting']['index']} " \
               f"({setting_text(summary['setting']['values'])})"
    line = (f"{who} on the {summary['split']} split ({summary['num_examples']:,} images): "
            f"accuracy {percent(summary['accuracy'])}, loss {number(summary['loss'])}, "
            f"macro F1 {number(summary['macro']['f1'])}")
    if "across_members" in summary:
        line += f"; {group}: accuracy {stat(summary['across_members']['accuracy'])}"
    return line


def _results_table(summary: dict[str, Any]) -> str:
    members = summary.get("across_members")
    rows = [("accuracy", percent, ("accuracy",)), ("mean loss", number, ("loss",)),
            ("top-2 accuracy", percent, ("top2_accuracy",)),
            ("expected calibration error (15 bins)", number, ("ece",))]
    rows += [(f"{avg} {label}", number, (avg, k)) for avg in ("macro", "weighted")
             for k, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1"))]

    def pick(record: dict[str, Any], path: tuple[str, ...]) -> Any:
        for key in path:
            record = record[key]
        return record

    group = "parts" if "parts" in summary else "members"
    headers = ["metric", "ensemble", f"{group} (mean ± std)"] if members else ["metric", "value"]
    return table(headers, [[label, fmt(pick(summary, path))]
                           + ([stat(pick(members, path), fmt)] if members else [])
                           for label, fmt, path in rows])


def _pairs_table(summary: dict[str, Any]) -> str:
    rows = [[f"{p['classes'][0]} ↔ {p['classes'][1]}", p["count"],
             f"{p['a_as_b']} / {p['b_as_a']}"] for p in summary["most_confused"]]
    return table(["classes a ↔ b", "mistakes", "a as b / b as a"], rows)


def _members_table(summary: dict[str, Any]) -> str:
    rows = [[m["seed"], m["epoch"], percent(m["accuracy"]), number(m["loss"]),
             number(m["macro"]["f1"])] for m in summary["members"]]
    return table(["seed", "epoch", "accuracy", "loss", "macro F1"], rows)


def _parts_table(summary: dict[str, Any]) -> str:
    rows = [[p["name"], f"{p['weight']:.3f}", percent(p["accuracy"]), number(p["loss"]),
             number(p["macro"]["f1"]), f"`{p['workdir']}`"] for p in summary["parts"]]
    return table(["part", "weight", "accuracy", "loss", "macro F1", "workdir"], rows)


def explanations_section(explanations: dict[str, Any]) -> str:
    """The sanity checks of the heat maps: deletion areas and the random-weights correlation."""
    methods = [m for m in ("grad_cam", "integrated_gradients") if m in explanations]
    random_auc = explanations["random_order"]["auc"]
    rows = [[{"grad_cam": "Grad-CAM", "integrated_gradients": "integrated gradients"}[m],
             number(explanations[m]["deletion_auc"]), number(random_auc),
             number(explanations[m]["random_weights_rank_correlation"])] for m in methods]
    text = (f"Heat maps of member {explanations['member']} (seed {explanations['seed']}); numbers "
            f"on {explanations['images']} random images of the split. Deletion: the probability "
            "of the predicted class as pixels are blacked out, most attributed first or in a "
            "random order; the area under that curve is lower when the map found the pixels "
            "that matter. Random weights: Spearman correlation between the maps of the trained "
            "weights and of freshly initialised ones (on half the images); near 0 means the maps "
            "depend on what the model learned (Adebayo et al. 2018).\n")
    return text + "\n" + table(["method", "deletion AUC", "random order AUC",
                                "correlation with random weights"], rows)


def calibration_section(record: dict[str, Any]) -> str:
    """The temperature fitted on validation; ECE, log loss and selective accuracy before/after."""
    before, after = record["before"], record["after"]
    rows = [["expected calibration error (15 bins)", number(before["ece"]), number(after["ece"])],
            ["mean log loss", number(before["loss"]), number(after["loss"])],
            ["accuracy", percent(before["accuracy"]), percent(after["accuracy"])]]
    rows += [[f"accuracy on the {float(c):.0%} most confident", percent(before[
        "selective_accuracy"][c]), percent(after["selective_accuracy"][c])]
             for c in before["selective_accuracy"] if c != "1"]
    already = ("" if record["model_temperature"] == 1 else
               f" The model already divides its logits by {record['model_temperature']:.4f} "
               f"(a calibrated release); the figures below are on top of that.")
    if record.get("in_sample"):
        already += " Fitted and measured on the same split here: the test split's are honest."
    return (f"Temperature scaling: every logit divided by T = {record['temperature']:.4f}, "
            f"fitted on the validation split to minimise its log loss (never on the test split); "
            f"`scripts/export.py --calibrated` ships a model that applies it.{already}\n\n"
            + table(["metric", "before", "after"], rows))


def evaluation_report(summary: dict[str, Any], figures: Sequence[str]) -> str:
    """report.md: the run, the numbers, and the figures (linked by file name)."""
    ev, tr = summary["evaluation"], summary["training"]
    epochs = ", ".join(map(str, sorted(set(summary["epochs"]))))
    about = "".join(f"- {key}: {value}\n" for key, value in [
        ("workdir", f"`{summary['workdir']}`"),
        ("weights", f"{summary['checkpoint']} (checkpoint step {summary['step']}, epoch {epochs})"),
        ("seeds", ", ".join(map(str, summary["seeds"]))),
        ("parameters", f"{summary['param_count']:,}"),
        ("evaluation", f"{seconds(ev['seconds'])} ({per_second(ev['images_per_second'])} "
                       f"images/s, {ev['platform']}) after {seconds(ev['compile_seconds'])} "
                       f"of compilation"),
        ("training", f"{tr['epochs']} epochs, {seconds(tr['train_seconds'])}, "
                     f"{per_second(tr['images_per_second'])} images/s (median epoch)"),
    ])
    parts = [f"# Evaluation: {summary['model']} on the {summary['split']} split\n",
             headline(summary) + ".\n", about, "## Results\n", _results_table(summary),
             "## Per class\n",
             "Accuracy per class is the share of the class's images classified correctly.\n",
             per_class_table(summary), "## Most confused pairs\n", _pairs_table(summary)]
    if "members" in summary:
        parts += ["## Members\n",
                  "The ensemble averages the members' class probabilities.\n",
                  _members_table(summary)]
    if "parts" in summary:
        weights = ("fitted on the validation split (non-negative, summing to 1, minimising its "
                   "log loss)" if summary["weights_from"] == "val" else "equal")
        parts += ["## Parts\n",
                  f"The ensemble averages the parts' class probabilities; weights {weights}.\n",
                  _parts_table(summary)]
    if "calibration" in summary:
        parts += ["## Calibration\n", calibration_section(summary["calibration"])]
    if "explanations" in summary:
        parts += ["## Explanations\n", explanations_section(summary["explanations"])]
    parts += ["## Figures\n"] + [f"![{name}]({name})\n" for name in figures]
    return "\n".join(parts)


def points(value: float) -> str:
    """A difference of accuracies in percentage points, signed."""
    return f"{100 * value:+.2f}"


def interval(bounds: Sequence[float]) -> str:
    return f"[{points(bounds[0])}, {points(bounds[1])}]"


def p_value(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def _differences_table(models: Sequence[dict[str, Any]]) -> str:
    """Paired over images: each model against its reference, with the corrected test."""
    rows = [[m["label"], d["against"], points(d["difference"]), interval(d["ci95"]),
             f"{d['only_baseline_right']} / {d['only_model_right']}", p_value(d["mcnemar_p"]),
             p_value(d["mcnemar_p_holm"]), "yes" if d["supported"] else "no"]
            for m in models if (d := m["difference"])]
    return table(["model", "against", "Δ accuracy (points)", "95% CI", "only against / only "
                  "model right", "McNemar p", "Holm p", "supported"], rows)


def _seeds_table(models: Sequence[dict[str, Any]]) -> str:
    rows = [[m["label"], m["difference"]["against"], points(d["difference"]), interval(d["ci95"]),
             p_value(d["welch_p"]), p_value(d["welch_p_holm"]), "yes" if d["supported"] else "no"]
            for m in models if m["difference"] and (d := m["difference"].get("seeds"))]
    return table(["model", "against", "Δ mean member accuracy", "95% CI (seeds × images)",
                  "Welch p", "Holm p", "supported"], rows) if rows else ""


def comparison_report(comparison: dict[str, Any], figures: Sequence[str]) -> str:
    """compare.md: one table of the models, the paired differences between them, per-class F1
    side by side, the hardest classes."""
    models = comparison["models"]
    rows = [[m["label"], f"{m['param_count']:,}", stat(m["accuracy"]),
             "—" if m["ensemble_accuracy"] is None else percent(m["ensemble_accuracy"]),
             stat(m["loss"], number), stat(m["macro_f1"], number), m["epochs"],
             seconds(m["train_seconds"]), per_second(m["images_per_second"])] for m in models]
    overview = table(["model", "parameters", f"{comparison['split']} accuracy", "ensemble",
                      "loss", "macro F1", "epochs", "training time", "train images/s"], rows)
    classes = comparison["class_names"]
    f1 = table(["class"] + [m["label"] for m in models],
               [[name] + [stat(m["per_class_f1"][name], number) for m in models]
                for name in classes])
    hardest = ", ".join(f"{h['class']} (mean F1 {h['f1']:.3f})"
                        for h in comparison["hardest_classes"])
    confused = ", ".join(f"{p['classes'][0]} ↔ {p['classes'][1]} ({p['count']})"
                         for p in comparison["most_confused"])
    notes = ("With several seeds, a number is the members' mean ± std and `ensemble` the accuracy "
             "of their averaged probabilities (for an ensemble of workdirs, `a + b`: its parts' "
             "mean ± std, and the ensemble's accuracy). Training time counts the training steps only; "
             "train images/s is the median epoch's (all members together).")
    parts = [f"# Model comparison ({comparison['split']} split)\n", overview, notes + "\n"]
    if len(models) > 1:
        seeds = _seeds_table(models)
        parts += ["## Differences\n", _differences_table(models),
                  "Each model's predictor (a multi-seed workdir: its ensemble) against the model "
                  "named, on the same images: the accuracy difference, its 95% paired bootstrap "
                  "interval (10,000 resamples of the images), the images only one of the two "
                  "gets right, and the exact McNemar p-value, Holm-corrected over the table. "
                  "Supported: corrected p < 0.05 and an interval excluding 0.\n"]
        if seeds:
            parts += [seeds, "Over seeds: the members' mean accuracy difference, with a bootstrap "
                             "over seeds and images and Welch's t-test on the members' "
                             "accuracies (Holm-corrected).\n"]
    parts += ["## Per-class F1\n", f1, f"Hardest classes: {hardest}.\n",
              f"Most confused pairs (mistakes summed over the models): {confused}.\n"]
    return "\n".join(parts + [f"![{name}]({name})\n" for name in figures])


def _setting_values(sweep: dict[str, Any], values: dict[str, float]) -> list[str]:
    return [f"{values[field]:g}" for field in sweep["fields"]]


def sweep_table(sweep: dict[str, Any]) -> str:
    """One row per setting: its values and validation accuracy (mean ± std over its seeds); the
    test accuracy of the best setting only, the one chosen on validation."""
    best = sweep["best"]["setting"]
    rows = [[s["setting"], *_setting_values(sweep, s["values"]), stat(s["val_accuracy"]),
             stat(s["test_accuracy"]) if s["setting"] == best else "",
             "◀ best" if s["setting"] == best else ""] for s in sweep["settings"]]
    fields = [f.removeprefix("optimizer.") for f in sweep["fields"]]
    return table(["setting", *fields, "val accuracy", "test accuracy", ""], rows)


def sweep_headline(summary: dict[str, Any]) -> str:
    """The best setting (chosen on validation), its validation and test accuracy."""
    sweep = summary["sweep"]
    best = sweep["best"]
    line = (f"best of {len(sweep['settings'])} settings on validation: "
            f"{setting_text(best['values'])}: val accuracy "
            f"{stat(best['val_accuracy'])}, test accuracy {stat(best['test_accuracy'])}")
    if sweep["num_seeds"] > 1:
        line += f" (mean ± std over {sweep['num_seeds']} seeds)"
    if "ensemble" in summary:
        line += f"; their ensemble {percent(summary['ensemble']['test_accuracy'])}"
    return line


def sweep_report(summary: dict[str, Any], figure: str) -> str:
    """sweep.md: the table of settings, the best one, and the figure."""
    sweep = summary["sweep"]
    notes = (f"Validation accuracy of each member's best epoch, mean ± std over the "
             f"{sweep['num_seeds']} seed(s) of a setting. The best setting is chosen on the "
             f"validation split; only its test accuracy is shown, so the test split chooses "
             f"nothing.")
    return "\n".join([f"# Sweep: {summary['model']}, {len(sweep['settings'])} settings × "
                      f"{sweep['num_seeds']} seed(s)\n", sweep_headline(summary) + ".\n",
                      sweep_table(sweep), notes + "\n", f"![validation accuracy]({figure})\n"])
