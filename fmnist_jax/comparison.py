"""Comparing evaluated models: one record per model, paired tests between them, tables and charts.

Every evaluation of the same split saw the same images, so two models are compared image by image
(`stats.paired`: the accuracy difference, its bootstrap interval, the exact McNemar p-value), each
against a reference: the first model (the default baseline), another one, or the row above
(`previous`). Where both have several seeds, their members are compared too (`stats.over_seeds`).
The p-values of the table are Holm-corrected as one family; a difference is *supported* when its
corrected p-value is below 0.05 and its interval excludes 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax import evaluation, integrity, metrics, plots, report, stats
from fmnist_jax.errors import UserError

ALPHA = 0.05
BASELINES = ("first", "previous")


def find_metrics(path: str | Path, split: str = "test") -> Path:
    """metrics.json of an evaluation folder (`evaluate.py --output-dir`, anywhere), or of an
    evaluated workdir (in its `eval-<split>/`)."""
    path = Path(path)
    for candidate in (path / "metrics.json",
                      evaluation.default_output_dir(path, split) / "metrics.json"):
        if candidate.is_file():
            integrity.verify(candidate.parent)
            return candidate
    raise UserError(f"{path} holds no evaluation of the {split} split (no metrics.json in it or "
                    f"in its eval-{split}/); run scripts/evaluate.py --workdir={path} "
                    f"--split={split} first, or give the folder of its --output-dir")


def load_summaries(paths: Sequence[str | Path], split: str = "test") -> list[dict[str, Any]]:
    return [json.loads(find_metrics(p, split).read_text()) for p in paths]


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted classes) of a predictions CSV (`evaluation.write_predictions`)."""
    if not path.is_file():
        raise UserError(f"{path} is missing: the paired comparison needs the predictions of the "
                        f"evaluation; evaluate again with scripts/evaluate.py")
    table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 3), dtype=np.int64, ndmin=2)
    return table[:, 0], table[:, 1]


def correctness(folder: Path, summary: dict[str, Any]) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray | None]:
    """(labels, the predictor's correctness `[N]`, each seed member's `[S, N]` or None) of the
    evaluation in `folder`."""
    labels, predicted = _read_predictions(folder / "predictions.csv")
    members = None
    if "members" in summary:
        members = np.stack([np.equal(*_read_predictions(folder / f"predictions-seed{seed}.csv"))
                            for seed in (m["seed"] for m in summary["members"])])
    return labels, predicted == labels, members


def references(baseline: str, paths: Sequence[str | Path]) -> list[int]:
    """Per row, the index of the row it is compared with: `first`, `previous`, or one DIR given."""
    if baseline == "previous":
        return [max(i - 1, 0) for i in range(len(paths))]
    names = [str(p) for p in paths]
    if baseline != "first" and baseline not in names:
        raise UserError(f"--baseline={baseline} is none of the DIRs compared; give one of them, "
                        f"or one of {', '.join(BASELINES)}")
    return [0 if baseline == "first" else names.index(baseline)] * len(paths)


def _with_holm(records: list[dict[str, Any] | None], key: str) -> None:
    """Adds `key`_holm (the family's corrected p-values) and `supported` to each record."""
    present = [r for r in records if r is not None and key in r]
    for record, adjusted in zip(present, stats.holm([r[key] for r in present])):
        record[f"{key}_holm"] = adjusted
        low, high = record["ci95"]
        record["supported"] = adjusted < ALPHA and (low > 0 or high < 0)


def differences(folders: Sequence[Path], summaries: Sequence[dict[str, Any]],
                reference: Sequence[int]) -> list[dict[str, Any] | None]:
    """Per model, its paired comparison with its reference (None for a model that is its own)."""
    evaluated = [correctness(f, s) for f, s in zip(folders, summaries)]
    if any(not np.array_equal(e[0], evaluated[0][0]) for e in evaluated):
        raise UserError("the evaluations are not of the same images (their labels differ); "
                        "evaluate every model on the same split of the same data")
    records: list[dict[str, Any] | None] = []
    for i, j in enumerate(reference):
        if i == j:
            records.append(None)
            continue
        record = {"against": j, **stats.paired(evaluated[j][1], evaluated[i][1])}
        if evaluated[i][2] is not None and evaluated[j][2] is not None:
            record["seeds"] = stats.over_seeds(evaluated[j][2], evaluated[i][2])
        records.append(record)
    _with_holm(records, "mcnemar_p")
    _with_holm([r.get("seeds") if r else None for r in records], "welch_p")
    return records


def _described(summary: dict[str, Any], *path: str) -> dict[str, Any]:
    """A metric as `metrics.describe` over the members, or as one value for a single model."""
    source = summary.get("across_members")
    value = source if source else summary
    for key in path:
        value = value[key]
    return value if source else {"mean": value, "std": 0.0, "n": 1}


def model_labels(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The model names (with the seed count and flip TTA), made unique with the workdir's name
    where needed."""
    labels = [s["model"] + (f" ×{len(s['seeds'])}" if len(s["seeds"]) > 1 and "parts" not in s
                            else "") + (" +TTA" if s.get("tta") else "")
              + (f" [{report.setting_text(s['setting']['values'])}]" if "setting" in s else "")
              for s in summaries]
    return [f"{label} ({Path(s['workdir']).name})" if labels.count(label) > 1 else label
            for label, s in zip(labels, summaries)]


def compare(summaries: Sequence[dict[str, Any]], hardest: int = 3) -> dict[str, Any]:
    """The comparison of evaluated workdirs: one record per model, the hardest classes and pairs."""
    names = summaries[0]["class_names"]
    splits = {s["split"] for s in summaries}
    if len(splits) > 1 or any(s["class_names"] != names for s in summaries):
        raise UserError(f"the evaluations compare different splits or classes ({sorted(splits)}); "
                        f"evaluate every workdir on the same --split")
    models = [{"label": label, "model": s["model"], "workdir": s["workdir"], "seeds": s["seeds"],
               "param_count": s["param_count"], "accuracy": _described(s, "accuracy"),
               "predictor_accuracy": s["accuracy"],
               "ensemble_accuracy": s["accuracy"] if s["predictor"] == "ensemble" else None,
               "loss": _described(s, "loss"), "macro_f1": _described(s, "macro", "f1"),
               "per_class_f1": {n: _described(s, "per_class", n, "f1") for n in names},
               **s["training"]}
              for label, s in zip(model_labels(summaries), summaries)]
    mean_f1 = np.array([[m["per_class_f1"][n]["mean"] for n in names] for m in models]).mean(0)
    confusion = np.sum([s["confusion_matrix"] for s in summaries], axis=0)
    return {"split": splits.pop(), "class_names": names, "models": models,
            "hardest_classes": [{"class": names[i], "f1": float(mean_f1[i])}
                                for i in np.argsort(mean_f1, kind="stable")[:hardest]],
            "most_confused": metrics.most_confused_pairs(confusion, class_names=names)}


def write_comparison(paths: Sequence[str | Path], output: Path, split: str = "test",
                     baseline: str = "first") -> str:
    """compare.md (returned too), compare.json, the per-class F1 chart and the chart of the
    paired differences beside it."""
    reference = references(baseline, paths)
    files = [find_metrics(p, split) for p in paths]
    summaries = [json.loads(f.read_text()) for f in files]
    comparison = compare(summaries)
    models = comparison["models"]
    for model, record in zip(models, differences([f.parent for f in files], summaries,
                                                 reference)):
        if record is not None:
            record["against"] = models[record["against"]]["label"]
        model["difference"] = record
    comparison["baseline"] = baseline
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(comparison, indent=2) + "\n")
    names = comparison["class_names"]
    f1, std = (np.array([[m["per_class_f1"][n][k] for n in names] for m in models])
               for k in ("mean", "std"))
    figures = [plots.save(plots.comparison_figure([m["label"] for m in models], names, f1, std),
                          output.with_name(output.stem + "_f1.png"))]
    if len(models) > 1:
        figures.append(plots.save(plots.difference_figure(models),
                                  output.with_name(output.stem + "_differences.png")))
    markdown = report.comparison_report(comparison, [f.name for f in figures])
    output.write_text(markdown)
    return markdown
