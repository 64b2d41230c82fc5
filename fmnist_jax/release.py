"""Releases: a trained workdir reduced to what evaluation and prediction read.

A release is a workdir in the same layout (`config.json`, `metrics.jsonl`, `summary.json`,
`checkpoints/<step>/`), whose one checkpoint holds each member's best weights only (no optimizer
state, no resumable position), so that `evaluate.py` and `predict.py` work on it as on the run it
came from, at a fraction of the size. `release.json` records how it was made: the training and
export commands, the code commit, seeds, device, training time and test metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fmnist_jax import evaluation, run, sweep
from fmnist_jax.checkpointing import Checkpoints
from fmnist_jax.errors import UserError


def _member(tree: Any, index: int | None) -> Any:
    """The stacked tree, or member `index` of it kept as a stack of one."""
    return tree if index is None else jax.tree.map(lambda x: np.asarray(x)[index:index + 1], tree)


def _record(meta: dict[str, Any], summary: dict[str, Any], command: str) -> dict[str, Any]:
    env = meta["environment"]
    return {"model": meta["model"], "param_count": meta["param_count"], "seeds": meta["seeds"],
            "train_command": meta["command"], "export_command": command,
            "commit": env.get("commit"), "device": env.get("device") or f"{env['device_count']} x "
            f"{env['device_kind']} ({env['platform']})", "versions": env["versions"],
            "train_seconds": summary["train_seconds"], "seconds": summary["seconds"],
            "compile_seconds": summary["compile_seconds"],
            "epochs_completed": summary["epochs_completed"], "best_epoch": meta["best_epoch"],
            "test_accuracy": summary["test_accuracy"], "test_loss": summary["test_loss"],
            **({"ensemble": summary["ensemble"]} if "ensemble" in summary else {})}


def _select(summary: dict[str, Any], index: int | None) -> dict[str, Any]:
    """The summary of member `index` alone (all members when None)."""
    if index is None:
        return summary
    picked = dict(summary)
    for key in ("seeds", "best_epoch", "best_val_accuracy", "test_accuracy", "test_loss",
                "latest_raw_weights_test_accuracy"):
        if key in picked:
            picked[key] = [summary[key][index]]
    picked["test_accuracy_stats"] = {"n": 1, "mean": picked["test_accuracy"][0]}
    picked.pop("ensemble", None)
    picked.pop("sweep", None)
    return picked


def _chosen_member(restored: evaluation.Restored, summary: dict[str, Any], seed: int | None,
                   member: int | None) -> int | None:
    """The index of the member to release (None: all): `member`, or `seed`'s; of a sweep, the
    best setting's member of `seed`, by default the best setting's best member (on validation)."""
    count = len(restored.seeds)
    if member is not None:
        if not 0 <= member < count:
            raise UserError(f"--member={member} is not in {restored.workdir}; give one of "
                            f"0..{count - 1}")
        return member
    candidates = list(range(count))
    if "sweep" in summary:
        best = summary["sweep"]["best"]
        if seed is None:
            return best["best_member"]
        candidates = summary["sweep"]["settings"][best["setting"]]["members"]
    if seed is None:
        return None
    seeds = [restored.seeds[m] for m in candidates]
    if seed not in seeds:
        raise UserError(f"seed {seed} is not in {restored.workdir}; its seeds: {seeds}")
    return candidates[seeds.index(seed)]


def _member_config(restored: evaluation.Restored, index: int | None, seeds: list[int]) -> dict:
    """The config of a plain run of the released members (of a sweep: the member's setting)."""
    config = restored.meta["config"]
    if sweep.is_sweep(restored.config):
        setting = sweep.member_settings(restored.config)[index]
        return run.config_to_json(sweep.setting_config(restored.config, setting, seeds[0]))
    return dict(config, seed=seeds[0], num_seeds=len(seeds))


def export(workdir: str | Path, out: str | Path, seed: int | None = None,
           command: str = "", member: int | None = None) -> dict[str, Any]:
    """Writes the release of `workdir` (all members, or only `seed`'s or `member`'s) to `out`;
    its record. Of a sweep, one member: by default the best setting's best member.

    The release is assembled beside `out` and renamed into place, so `out` is never half-written.
    """
    workdir, out = Path(workdir), Path(out)
    if not (workdir / "summary.json").is_file():
        raise UserError(f"{workdir} has no summary.json: only a finished run can be released; "
                        f"finish it with scripts/train.py --workdir={workdir}")
    restored = evaluation.load_workdir(workdir, "best")
    full = json.loads((workdir / "summary.json").read_text())
    index = _chosen_member(restored, full, seed, member)
    summary = _select(full, index)
    meta = dict(restored.meta, weights_only=True, seeds=summary["seeds"],
                best_epoch=restored.epochs if index is None else [restored.epochs[index]])
    meta["config"] = _member_config(restored, index, summary["seeds"])
    record = _record(meta, summary, command)
    if "sweep" in full:
        record["sweep_setting"] = full["sweep"]["settings"][
            sweep.member_settings(restored.config)[index]]["values"]
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(workdir / "metrics.jsonl", staging / "metrics.jsonl")
    (staging / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (staging / "release.json").write_text(json.dumps(record, indent=2) + "\n")
    weights = {"params": _member(restored.params, index),
               "batch_stats": _member(restored.batch_stats, index)}
    with Checkpoints(staging, keep=1) as ckpts:
        ckpts.save(restored.step, weights, meta)
    _replace(staging, out)
    return record


def _replace(staging: Path, out: Path) -> None:
    """Moves `staging` to `out`, replacing a previous release only once the new one is complete."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def size_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
