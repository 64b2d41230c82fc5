"""Releases: a trained workdir reduced to what evaluation and prediction read.

A release is a workdir in the same layout (`config.json`, `metrics.jsonl`, `summary.json`,
`checkpoints/<step>/`), whose one checkpoint holds each member's best weights only (no optimizer
state, no resumable position), so that `evaluate.py` and `predict.py` work on it as on the run it
came from, at a fraction of the size, with its portable model (`model.jaxexport`, `portable.py`)
and its ONNX conversion (`model.onnx`, `onnx_export.py`).
`release.json` records how it was made: the training and export commands, the code commit, seeds,
device, training time and test metrics. `manifest.json` (`integrity.py`) holds the SHA-256 of every
other file, computed once the release is complete: whatever `_write` puts in the release is covered.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fmnist_jax import (calibration, evaluation, files, integrity, locking, metrics, onnx_export,
                        ood, portable, sweep)
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.checkpointing import Checkpoints
from fmnist_jax.errors import UserError

log = logging.getLogger(__name__)
# What a release folder holds; a folder with anything else is never replaced.
RELEASE_FILES = ("checkpoints", "config.json", "metrics.jsonl", integrity.RELEASE_RECORD,
                 "summary.json", portable.MODEL_FILE, portable.METADATA_FILE, ood.MODEL_FILE,
                 ood.PARAMETERS_FILE, onnx_export.MODEL_FILE, integrity.MANIFEST)
RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths atomically (Linux 3.15+)


def _member(tree: Any, index: int | None) -> Any:
    """The stacked tree, or member `index` of it kept as a stack of one."""
    return tree if index is None else jax.tree.map(lambda x: np.asarray(x)[index:index + 1], tree)


def _record(meta: dict[str, Any], summary: dict[str, Any], command: str) -> dict[str, Any]:
    env = meta["environment"]
    return {"model": meta["model"], "param_count": meta["param_count"], "seeds": meta["seeds"],
            "train_command": meta["command"], "export_command": command,
            "integrity": integrity.MANIFEST, "commit": env.get("commit"),
            "device": env.get("device") or f"{env['device_count']} x {env['device_kind']} "
                                           f"({env['platform']})", "versions": env["versions"],
            "train_seconds": summary["train_seconds"], "seconds": summary["seconds"],
            "compile_seconds": summary["compile_seconds"],
            "epochs_completed": summary["epochs_completed"], "best_epoch": meta["best_epoch"],
            "tta": meta["config"]["tta"], "calibrated": "calibration" in meta,
            "temperature": meta.get("calibration", {}).get("temperature", 1.0),
            "test_accuracy": summary["test_accuracy"], "test_loss": summary["test_loss"],
            **{key: summary[key] for key in ("ensemble", "run_test_accuracy") if key in summary}}


def _select(summary: dict[str, Any], index: int | None) -> dict[str, Any]:
    """The summary of member `index` alone (all members when None)."""
    if index is None:
        return summary
    picked = dict(summary)
    for key in ("seeds", "best_epoch", "best_val_accuracy", "test_accuracy", "test_loss",
                "latest_raw_weights_test_accuracy", "run_test_accuracy"):
        if key in picked:
            picked[key] = [summary[key][index]]
    picked["test_accuracy_stats"] = {"n": 1, "mean": picked["test_accuracy"][0]}
    picked.pop("ensemble", None)
    picked.pop("sweep", None)
    return picked


def _retested(summary: dict[str, Any], restored: evaluation.Restored) -> dict[str, Any]:
    """`summary` with the test metrics of `restored`'s predictor (its own `tta` setting), the
    run's test accuracy kept as `run_test_accuracy`."""
    result = evaluation.evaluate(restored)
    labels = result.labels
    retested = dict(summary, run_test_accuracy=summary["test_accuracy"])
    retested["test_accuracy"] = [float((p.argmax(-1) == labels).mean())
                                 for p in result.member_probabilities]
    retested["test_loss"] = [metrics.mean_log_loss(p, labels) for p in result.member_probabilities]
    retested["test_accuracy_stats"] = metrics.describe(retested["test_accuracy"])
    if "ensemble" in summary:
        retested["ensemble"] = {
            "test_accuracy": float((result.probabilities.argmax(-1) == labels).mean()),
            "test_loss": metrics.mean_log_loss(result.probabilities, labels)}
    return retested


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


def _calibrated(restored: evaluation.Restored, index: int | None) -> evaluation.Restored:
    """`restored` dividing its logits by the temperature that minimises the validation log loss
    of the members released (on top of the one it may already apply)."""
    released = dataclasses.replace(restored, params=_member(restored.params, index),
                                   batch_stats=_member(restored.batch_stats, index))
    val = evaluation.evaluate(released, "val")
    if not len(val.labels):
        raise UserError(f"{restored.workdir} was trained without a validation split, which "
                        f"--calibrated fits the temperature on; release it without --calibrated")
    fitted = calibration.fit_temperature(val.member_probabilities, val.labels)
    record = {"temperature": restored.temperature * fitted, "fitted_on": "val",
              "val_examples": len(val.labels)}
    return dataclasses.replace(restored, meta=dict(restored.meta, calibration=record))


def _member_config(restored: evaluation.Restored, index: int | None, seeds: list[int]) -> dict:
    """The config of a plain run of the released members (of a sweep: the member's setting)."""
    config = restored.meta["config"]
    if sweep.is_sweep(restored.config):
        setting = sweep.member_settings(restored.config)[index]
        return workdir_lib.config_to_json(sweep.setting_config(restored.config, setting, seeds[0]))
    return dict(config, seed=seeds[0], num_seeds=len(seeds))


def export(workdir: str | Path, out: str | Path, seed: int | None = None,
           command: str = "", overwrite: bool = False, tta: bool | None = None,
           member: int | None = None, calibrated: bool = False) -> dict[str, Any]:
    """Writes the release of `workdir` (all members, or only `seed`'s or `member`'s) to `out`;
    its record. Of a sweep, one member: by default the best setting's best member.

    An existing `out` is replaced only with `overwrite`, and only when it is a release. `tta` sets
    whether the release predicts with flip test-time augmentation (default: as the run did); when
    that differs from the run, the test split is evaluated again, so that the release records the
    test accuracy its evaluation gives; so it is with `calibrated`, which divides the released
    model's logits by a temperature fitted on the validation split (`calibration.py`; a release
    re-exported without it keeps the temperature it had). The release is assembled beside `out`,
    flushed to disk and swapped into place, so `out` is never half-written; one export at a time
    writes `out`.
    """
    with locking.exclusive(out):
        return _export(Path(workdir), Path(out), seed, command, overwrite, tta, member, calibrated)


def _export(workdir: Path, out: Path, seed: int | None, command: str, overwrite: bool,
            tta: bool | None, member: int | None, calibrated: bool) -> dict[str, Any]:
    _check_out(out, overwrite)
    if not (workdir / "summary.json").is_file():
        raise UserError(f"{workdir} has no summary.json: only a finished run can be released; "
                        f"finish it with scripts/train.py --workdir={workdir}")
    restored = evaluation.load_workdir(workdir, "best", tta=tta)
    full = json.loads((workdir / "summary.json").read_text())
    index = _chosen_member(restored, full, seed, member)
    if calibrated:
        restored = _calibrated(restored, index)
    if calibrated or restored.tta != evaluation.config_from_meta(restored.meta).tta:
        full = _retested(full, restored)
    summary = _select(full, index)
    meta = dict(restored.meta, weights_only=True, seeds=summary["seeds"],
                best_epoch=restored.epochs if index is None else [restored.epochs[index]])
    meta["config"] = dict(_member_config(restored, index, summary["seeds"]), tta=restored.tta)
    record = _record(meta, summary, command)
    source = workdir / integrity.RELEASE_RECORD
    if source.is_file():  # a release exported again (e.g. in place): how it was made stays known
        previous = integrity.load_json(source)
        record["first_export_command"] = previous.get("first_export_command",
                                                      previous.get("export_command"))
    if "sweep" in full:
        record["sweep_setting"] = full["sweep"]["settings"][
            sweep.member_settings(restored.config)[index]]["values"]
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write(staging, workdir, restored, index, meta, summary, record)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _write(staging: Path, workdir: Path, restored: evaluation.Restored, index: int | None,
           meta: dict[str, Any], summary: dict[str, Any], record: dict[str, Any]) -> None:
    shutil.copy2(workdir / "metrics.jsonl", staging / "metrics.jsonl")
    (staging / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    weights = {"params": _member(restored.params, index),
               "batch_stats": _member(restored.batch_stats, index)}
    with Checkpoints(staging, keep=1) as ckpts:
        ckpts.save(restored.step, weights, meta)
    _write_portable(staging)
    # After the portable model, which reads `staging` back: a release.json there names a manifest
    # (integrity.verify), which only a complete release has.
    (staging / integrity.RELEASE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    integrity.record(staging)


def _not_a_release(path: Path) -> str:
    """Why `path` is not a release folder this module wrote; '' when it is one."""
    if not path.is_dir():
        return "is a file"
    extra = sorted(p.name for p in path.iterdir() if p.name not in RELEASE_FILES)
    if extra:
        return f"holds {', '.join(extra[:5])}, which a release does not"
    return "" if (path / integrity.RELEASE_RECORD).is_file() else "has no release.json"


def _previous(out: Path) -> Path:
    """Where `_replace` keeps the release it replaces until the new one is in place."""
    return out.with_name(out.name + ".old")


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuses an `out` that exists, unless `overwrite` and it is a release (or an empty folder).

    A release left aside by a replacement that was killed between its two renames is put back
    first, so it is never lost.
    """
    previous = _previous(out)
    if not out.exists() and previous.exists() and not _not_a_release(previous):
        previous.rename(out)
        log.warning("put back %s, left aside by an interrupted export", out)
    if previous.exists() and _not_a_release(previous):
        raise UserError(f"{previous} is in the way of replacing {out}; move it elsewhere")
    if not out.exists():
        return
    if not overwrite:
        raise UserError(f"--out {out} exists; pass --overwrite to replace the release there, or "
                        f"choose another --out")
    if out.is_dir() and not any(out.iterdir()):
        return
    why = _not_a_release(out)
    if why:
        raise UserError(f"--out {out} {why}; --overwrite replaces only a release: choose "
                        f"another --out")


def _exchange(a: Path, b: Path) -> bool:
    """Swaps the paths `a` and `b` in one step (Linux `renameat2`); False where that is not
    supported (another OS or file system)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    here = -100  # AT_FDCWD
    if renameat2(here, os.fsencode(a), here, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace(staging: Path, out: Path) -> None:
    """Moves the complete release `staging` to `out`: swapped with the release there in one step
    where the system can, so that a reader finds the old or the new release, never none. Else the
    previous release is set aside until then (and put back by the next export if this one is killed
    in between)."""
    previous = _previous(out)
    shutil.rmtree(previous, ignore_errors=True)  # a release that an earlier export replaced
    if out.exists() and _exchange(staging, out):
        files.sync(out.parent)
        return  # the old release is in `staging` now, which the caller removes
    if out.exists():
        out.rename(previous)
    try:
        staging.rename(out)
    except OSError:
        if previous.exists():
            previous.rename(out)
        raise
    files.sync(out.parent)
    shutil.rmtree(previous, ignore_errors=True)


def _write_portable(folder: Path) -> list[Path]:
    """The portable model (`portable.py`) of the workdir or release `folder`, its ONNX conversion
    (`onnx_export.py`, when the model converts) and its out-of-distribution detector (`ood.py`),
    written into it; the paths."""
    restored = evaluation.for_setting(evaluation.load_workdir(folder, "best"))
    return (portable.write(restored, folder) + onnx_export.write(restored, folder)
            + ood.write(restored, folder))


def write_portable(folder: str | Path) -> list[Path]:
    """The portable model (`portable.py`) of the workdir or release `folder`, written into it and
    added to its manifest (one made of them in a workdir without one)."""
    with locking.exclusive(folder):
        paths = _write_portable(Path(folder))
        integrity.record(folder, paths)
    return paths


def size_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
