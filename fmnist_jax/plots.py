"""Figures of an evaluation and of a model comparison: PNGs drawn with matplotlib's Agg backend."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fmnist_jax import report

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

DPI = 110
RIGHT, WRONG, OTHER = "#2a9d4a", "#d62728", "#9e9e9e"
MISTAKES_GRID = (4, 6)
PROBABILITY_EXAMPLES = 4  # correct ones, and as many mistakes


@functools.cache
def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported with the first figure: the commands that draw
    none (train, predict, serve) start without it, 0.3 to 0.4 s sooner."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot  # pylint: disable=import-outside-toplevel
    return matplotlib.pyplot


def save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def describe(summary: dict[str, Any]) -> str:
    """`cnn, test split` or `cnn ensemble of 5, test split`, for titles."""
    members = len(summary["seeds"])
    return (f"{summary['model']}{f' ensemble of {members}' if members > 1 else ''}, "
            f"{summary['split']} split")


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], normalize: bool,
                     title: str) -> plt.Figure:
    """The matrix as a heat map with the value in every cell; rows = true class."""
    confusion = np.asarray(confusion, np.float64)
    if normalize:
        values = confusion / np.maximum(confusion.sum(1, keepdims=True), 1) * 100
    else:
        values = confusion
    fig, ax = _pyplot().subplots(figsize=(9.5, 8))
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=100 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="% of the true class" if normalize else "images")
    threshold = values.max() / 2
    for (row, col), value in np.ndenumerate(values):
        text = f"{value:.1f}" if normalize else f"{int(value)}"
        ax.text(col, row, text, ha="center", va="center", fontsize=9,
                color="white" if value > threshold else "black")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=40, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return fig


def per_class_f1_figure(summary: dict[str, Any]) -> plt.Figure:
    """F1 per class; with several members, also their mean ± std beside the ensemble's."""
    names = summary["class_names"]
    f1 = np.array([summary["per_class"][n]["f1"] for n in names])
    label = "ensemble" if summary["predictor"] == "ensemble" else summary["model"]
    series = [(label, f1, None)]
    if "across_members" in summary:
        stats = [summary["across_members"]["per_class"][n]["f1"] for n in names]
        group = "parts" if "parts" in summary else "members"
        n = summary["across_members"]["accuracy"]["n"]
        series.insert(0, (f"{group} (mean ± std, n={n})",
                          np.array([s["mean"] for s in stats]),
                          np.array([s["std"] for s in stats])))
    fig, ax = grouped_bars(names, series)
    ax.set_ylabel("F1")
    ax.set_title(f"Per-class F1: {describe(summary)} (macro F1 {summary['macro']['f1']:.3f})")
    return fig


def grouped_bars(categories: Sequence[str], series: Sequence[tuple[str, np.ndarray, Any]],
                 ) -> tuple[plt.Figure, plt.Axes]:
    """Bars per category, one colour per series `(label, values, std or None)`, values printed."""
    fig, ax = _pyplot().subplots(figsize=(min(16, 9 + 1.2 * len(series)), 5))
    width = 0.8 / len(series)
    x = np.arange(len(categories))
    for i, (label, values, std) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, yerr=std,
                      capsize=2 if std is not None else 0, label=label)
        if len(series) <= 2:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(x, categories, rotation=30, ha="right")
    low = min(float(np.min(v)) for _, v, _ in series)
    ax.set_ylim(max(0.0, low - 0.1), 1.02)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(series), 5),
                  fontsize=9, frameon=False)
    return fig, ax


def _curve(ax: plt.Axes, history: Sequence[dict], key: str, label: str) -> None:
    epochs = [r["epoch"] for r in history]
    values = np.array([r[key] for r in history])
    ax.plot(epochs, values, marker="o", markersize=4, label=label)
    if f"{key}_std" in history[0]:
        std = np.array([r[f"{key}_std"] for r in history])
        ax.fill_between(epochs, values - std, values + std, alpha=0.2)


def training_curves_figure(history: Sequence[dict], summary: dict[str, Any]) -> plt.Figure:
    """Loss and accuracy (train vs validation) and learning rate per epoch; best epochs marked."""
    from matplotlib import ticker  # pylint: disable=import-outside-toplevel
    fig, axes = _pyplot().subplots(1, 3, figsize=(15, 4.2))
    for ax, metric in zip(axes[:2], ("loss", "accuracy")):
        _curve(ax, history, f"train_{metric}", "train")
        _curve(ax, history, f"val_{metric}", "validation")
        ax.set_title(metric)
    _curve(axes[2], history, "learning_rate", "learning rate")
    axes[2].set_title("learning rate")
    if min(r["learning_rate"] for r in history) > 0:
        axes[2].set_yscale("log")
    seeds = len(summary["seeds"])
    members = f" (mean ± std of {seeds} seeds)" if seeds > 1 else ""
    title = f"Training curves: {summary['model']}{members}"
    best = sorted(set(summary["epochs"])) if summary["checkpoint"] == "best" else []
    if best:
        title += "; dashed: epoch of the best weights"
    for ax in axes:
        for epoch in best:
            ax.axvline(epoch, color=OTHER, linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _show_image(ax: plt.Axes, image: np.ndarray) -> None:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def mistakes_figure(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                    class_names: Sequence[str]) -> plt.Figure:
    """The most confident mistakes: image, true class, predicted class and its probability."""
    predicted = probabilities.argmax(-1)
    confidence = probabilities.max(-1)
    wrong = np.flatnonzero(predicted != labels)
    rows, cols = MISTAKES_GRID
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:rows * cols]
    fig, axes = _pyplot().subplots(rows, cols, figsize=(2.1 * cols, 2.5 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        ax.axis("on")
        _show_image(ax, images[i])
        ax.set_title(f"#{i} true: {class_names[labels[i]]}\npred: {class_names[predicted[i]]} "
                     f"({confidence[i]:.0%})", fontsize=9, color=WRONG)
    fig.suptitle(f"The {len(worst)} most confident mistakes (of {len(wrong)})")
    fig.tight_layout()
    return fig


def probability_examples(labels: np.ndarray, probabilities: np.ndarray,
                         count: int = PROBABILITY_EXAMPLES) -> np.ndarray:
    """The first `count` correctly classified examples and the first `count` mistakes."""
    correct = probabilities.argmax(-1) == labels
    return np.sort(np.concatenate([np.flatnonzero(correct)[:count],
                                   np.flatnonzero(~correct)[:count]]))


def _bar_value(ax: plt.Axes, row: int, value: float) -> None:
    """The value as a percentage at the end of a horizontal bar (inside it when long)."""
    inside = value > 0.8
    ax.text(value - 0.01 if inside else value + 0.01, row, f"{value:.1%}", va="center",
            ha="right" if inside else "left", fontsize=8, color="white" if inside else "black")


def probability_bars_figure(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                            class_names: Sequence[str], indices: np.ndarray) -> plt.Figure:
    """Per example: the image, and a bar per class (true class green, a wrong prediction red)."""
    rows = (len(indices) + 1) // 2
    fig, axes = _pyplot().subplots(rows, 4, figsize=(14, 2.6 * rows),
                                   gridspec_kw={"width_ratios": [1, 2.2, 1, 2.2]}, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(indices):
        image_ax, bar_ax = axes[k // 2, 2 * (k % 2)], axes[k // 2, 2 * (k % 2) + 1]
        image_ax.axis("on")
        bar_ax.axis("on")
        guess = int(probabilities[i].argmax())
        _show_image(image_ax, images[i])
        ok = guess == labels[i]
        image_ax.set_title(f"#{i} true: {class_names[labels[i]]}", fontsize=9,
                           color=RIGHT if ok else WRONG)
        colors = [OTHER] * len(class_names)
        colors[guess] = WRONG
        colors[labels[i]] = RIGHT
        y = np.arange(len(class_names))
        bar_ax.barh(y, probabilities[i], color=colors)
        for c in {guess, int(labels[i])}:
            _bar_value(bar_ax, c, float(probabilities[i, c]))
        bar_ax.set_yticks(y, [f"{n} (true)" if c == labels[i] else n
                              for c, n in enumerate(class_names)], fontsize=8)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=8)
        bar_ax.set_title(f"pred: {class_names[guess]} ({probabilities[i, guess]:.1%})",
                         fontsize=9, color=RIGHT if ok else WRONG)
    fig.suptitle("Class probabilities (green: true class; red: a wrong prediction)")
    fig.tight_layout()
    return fig


def evaluation_figures(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                       summary: dict[str, Any], history: Sequence[dict], out: Path) -> list[Path]:
    """Every figure of an evaluation, saved in `out`; the paths (no curves without a history)."""
    names = summary["class_names"]
    what = describe(summary)
    confusion = np.array(summary["confusion_matrix"])
    paths = [
        save(confusion_figure(confusion, names, False,
                              f"Confusion matrix: {what} (accuracy {summary['accuracy']:.2%})"),
             out / "confusion_matrix.png"),
        save(confusion_figure(confusion, names, True,
                              f"Confusion matrix, % of each true class: {what}"),
             out / "confusion_matrix_normalized.png"),
        save(per_class_f1_figure(summary), out / "per_class_f1.png"),
        save(mistakes_figure(images, labels, probabilities, names), out / "worst_mistakes.png"),
        save(probability_bars_figure(images, labels, probabilities, names,
                                     probability_examples(labels, probabilities)),
             out / "probabilities.png"),
    ]
    if history:
        paths.append(save(training_curves_figure(history, summary), out / "training_curves.png"))
    return paths


def calibration_figure(record: dict[str, Any], curves: Sequence[tuple[np.ndarray, np.ndarray]],
                       title: str) -> plt.Figure:
    """Reliability diagram (accuracy against mean confidence per bin) and accuracy-coverage
    curve, before and after temperature scaling (`calibration.calibrate`'s `record`)."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(11, 4.6))
    left.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle=":", label="perfect")
    names = ("before", f"after (T = {record['temperature']:.3f}, fitted on val)")
    for key, name, (covered, accuracy) in zip(("before", "after"), names, curves):
        bins = record[f"reliability_{key}"]
        used = np.asarray(bins["count"]) > 0
        left.plot(np.asarray(bins["confidence"])[used], np.asarray(bins["accuracy"])[used],
                  marker="o", label=f"{name}: ECE {record[key]['ece']:.4f}")
        right.plot(100 * covered, 100 * accuracy, label=name)
    left.set(xlabel="confidence (top probability), per bin", ylabel="accuracy",
             title="Reliability diagram (15 bins)", xlim=(0, 1.01), ylim=(0, 1.01))
    right.set(xlabel="coverage: % of images answered, most confident first",
              ylabel="accuracy on them (%)", title="Accuracy-coverage (selective prediction)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Calibration, {title}")
    fig.tight_layout()
    return fig


def comparison_figure(labels: Sequence[str], class_names: Sequence[str], f1: np.ndarray,
                      std: np.ndarray) -> plt.Figure:
    """Per-class F1 of several models side by side (`f1`, `std`: `[models, classes]`)."""
    series = [(label, f1[m], std[m] if std[m].any() else None) for m, label in enumerate(labels)]
    fig, ax = grouped_bars(class_names, series)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1 by model" + (" (error bars: std across seeds)" if std.any() else ""))
    return fig


def difference_figure(models: Sequence[dict[str, Any]]) -> plt.Figure:
    """Each model's paired accuracy difference from its reference with its 95% interval; the
    supported ones (`comparison.differences`) filled, the others hollow and grey."""
    rows = [m for m in models if m["difference"]]
    fig, ax = _pyplot().subplots(figsize=(7, 0.6 * len(rows) + 1.4))
    for y, m in enumerate(rows):
        d = m["difference"]
        low, high = (100 * v for v in d["ci95"])
        colour = "tab:blue" if d["supported"] else "grey"
        ax.errorbar(100 * d["difference"], y, xerr=[[100 * d["difference"] - low],
                                                    [high - 100 * d["difference"]]],
                    fmt="o", color=colour, capsize=4,
                    markerfacecolor=colour if d["supported"] else "white")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{m['label']} vs {m['difference']['against']}"
                                     for m in rows])
    ax.invert_yaxis()
    ax.set_xlabel("accuracy difference (percentage points), 95% paired bootstrap interval")
    ax.set_title("Paired differences (filled: supported, Holm-corrected McNemar p < 0.05)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _heatmap(ax: plt.Axes, image: np.ndarray, heat: np.ndarray, scale: float, signed: bool) -> None:
    """A signed map alone (red positive, blue negative), or the image in grey under the map."""
    _show_image(ax, image)
    if signed:
        ax.imshow(heat, cmap="bwr", vmin=-scale, vmax=scale)
    else:
        ax.imshow(heat, cmap="inferno", vmin=0, vmax=scale, alpha=0.65)


def explanation_figure(images: np.ndarray, titles: Sequence[str], maps: np.ndarray,
                       targets: np.ndarray, probabilities: np.ndarray,
                       class_names: Sequence[str], second_label: Sequence[str], method: str,
                       signed: bool, mistakes: Sequence[bool] = ()) -> plt.Figure:
    """Per example, three panels: the image, the map of the predicted class and of a second one
    (`maps` `[N, 2, 28, 28]`, `targets` `[N, 2]`); both maps share one colour scale."""
    per_row = 3
    rows = (len(images) + per_row - 1) // per_row
    fig, axes = _pyplot().subplots(rows, 3 * per_row, figsize=(1.45 * 3 * per_row, 1.75 * rows),
                                   squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, image in enumerate(images):
        cell = axes[k // per_row, 3 * (k % per_row):3 * (k % per_row) + 3]
        color = WRONG if k < len(mistakes) and mistakes[k] else RIGHT
        cell[0].axis("on")
        _show_image(cell[0], image)
        cell[0].set_title(titles[k], fontsize=7.5, color=color)
        scale = float(np.abs(maps[k]).max()) or 1.0
        for j, ax in enumerate(cell[1:]):
            ax.axis("on")
            _heatmap(ax, image, maps[k, j], scale, signed)
            c = targets[k, j]
            what = "pred" if j == 0 else second_label[k]
            ax.set_title(f"{what}: {class_names[c]}\n{probabilities[k, c]:.1%}", fontsize=7.5,
                         color=color if j == 0 else "black")
    colours = "red: evidence for the class, blue: against" if signed else "bright: important"
    fig.suptitle(f"{method} ({colours}): the image, the map of the predicted class, then of the "
                 f"true class (a mistake, red) or the runner-up (correct, green)", fontsize=10)
    fig.tight_layout()
    return fig


def embedding_figure(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                     title: str) -> plt.Figure:
    """Points `[N, 2]` coloured by class, with a legend of the classes."""
    fig, ax = _pyplot().subplots(figsize=(8.5, 7))
    colours = _pyplot().get_cmap("tab10")
    for c, name in enumerate(class_names):
        mine = labels == c
        ax.scatter(points[mine, 0], points[mine, 1], s=3, alpha=0.5, color=colours(c),
                   label=name, rasterized=True)
    ax.legend(markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(title)
    return fig


def neighbours_figure(queries: np.ndarray, names: Sequence[str], neighbours: np.ndarray,
                      titles: Sequence[Sequence[str]]) -> plt.Figure:
    """One row per query: the query, then its neighbours (`[Q, k, 28, 28, 1]`) with `titles`."""
    rows, k = neighbours.shape[:2]
    fig, axes = _pyplot().subplots(rows, k + 1, figsize=(1.35 * (k + 1), 1.6 * rows), squeeze=False)
    for r in range(rows):
        _show_image(axes[r, 0], queries[r])
        axes[r, 0].set_title(f"query: {names[r][:18]}", fontsize=7.5, fontweight="bold")
        for j in range(k):
            _show_image(axes[r, j + 1], neighbours[r, j])
            axes[r, j + 1].set_title(titles[r][j], fontsize=7)
    fig.suptitle("Nearest training images (cosine distance in the penultimate layer)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def sweep_figure(sweep: dict[str, Any], model: str) -> plt.Figure:
    """Validation accuracy against each swept field's values, one line per combination of the
    other fields, error bars the std over seeds; the best setting circled."""
    from matplotlib import ticker  # pylint: disable=import-outside-toplevel
    fields = sweep["fields"]
    settings = sweep["settings"]
    best = settings[sweep["best"]["setting"]]
    fig, axes = _pyplot().subplots(1, len(fields), figsize=(5.5 * len(fields), 4.2), squeeze=False)
    for ax, field in zip(axes[0], fields):
        others = [f for f in fields if f != field]
        lines: dict[tuple, list[dict]] = {}
        for s in settings:
            lines.setdefault(tuple(s["values"][f] for f in others), []).append(s)
        for key, members in lines.items():
            x = [s["values"][field] for s in members]
            y = [s["val_accuracy"]["mean"] for s in members]
            err = [s["val_accuracy"]["std"] for s in members]
            label = report.setting_text(dict(zip(others, key)))
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label or None)
        ax.plot(best["values"][field], best["val_accuracy"]["mean"], "o", markersize=14,
                markerfacecolor="none", color=WRONG, label="best (on validation)")
        values = sorted({s["values"][field] for s in settings})
        if min(values) > 0 and max(values) / min(values) >= 4:
            ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlabel(field.removeprefix("optimizer."))
        ax.set_ylabel("validation accuracy")
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    seeds = sweep["num_seeds"]
    fig.suptitle(f"Sweep of {model}: best validation accuracy per setting"
                 + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""))
    fig.tight_layout()
    return fig
