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

import numpy as np

from fmnist_jax import (calibration, evaluation, files, integrity, locking, metrics, onnx_export,
                        ood, portable, restore, sweep)
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.checkpointing import Checkpoints
from fmnist_jax.errors import UserError

log = logging.getLogger(__name__)
# What a release folder holds; a folder with anything else is never replaced.
RELEASE_FILES = ("checkpoints", "config.json", "metrics.jsonl", integrity.RELEASE_RECORD,
                 "summary.json", portable.MODEL_FILE, portable.METADATA_FILE, ood.MODEL_FILE,
                 ood.PARAMETERS_FILE, onnx_export.MODEL_FILE, integrity.MANIFEST)
RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths atomically (Linux 3.15+)


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


def _select(summary: dict[str, Any], members: tuple[int, ...]) -> dict[str, Any]:
    """The summary of the released `members`: all the run's, or one alone."""
    if len(members) == len(summary["seeds"]):
        return summary
    (index,) = members
    picked = dict(summary)
    for key in ("seeds", "best_epoch", "best_val_accuracy", "test_accuracy", "test_loss",
                "latest_raw_weights_test_accuracy", "run_test_accuracy"):
        if key in picked:
            picked[key] = [summary[key][index]]
    picked["test_accuracy_stats"] = {"n": 1, "mean": picked["test_accuracy"][0]}
    picked.pop("ensemble", None)
    picked.pop("sweep", None)
    return picked


def _retested(summary: dict[str, Any], restored: restore.Restored) -> dict[str, Any]:
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


def _released(restored: restore.Restored, summary: dict[str, Any], setting: int | None,
              seed: int | None, member: int | None) -> restore.Restored:
    """The members to release, as `restore.select` chooses them; of a sweep one member, by default
    the best member on validation of the setting (itself by default the best)."""
    if "sweep" in summary and seed is None and member is None:
        member, setting = _best_member(restored, summary, setting), None
    return restore.select(restored, setting=setting, seed=seed, member=member)


def _best_member(restored: restore.Restored, summary: dict[str, Any], setting: int | None) -> int:
    """A sweep's member of the best validation accuracy in `setting` (default: the best one)."""
    if setting is None:
        return summary["sweep"]["best"]["best_member"]
    candidates = restore.select(restored, setting=setting).members
    return candidates[int(np.argmax([summary["best_val_accuracy"][m] for m in candidates]))]


def _calibrated(restored: restore.Restored) -> restore.Restored:
    """`restored` dividing its logits by the temperature that minimises its validation log loss
    (on top of the one it may already apply)."""
    val = evaluation.evaluate(restored, "val")
    if not len(val.labels):
        raise UserError(f"{restored.workdir} was trained without a validation split, which "
                        f"--calibrated fits the temperature on; release it without --calibrated")
    fitted = calibration.fit_temperature(val.member_probabilities, val.labels)
    record = {"temperature": restored.temperature * fitted, "fitted_on": "val",
              "val_examples": len(val.labels)}
    return dataclasses.replace(restored, meta=dict(restored.meta, calibration=record))


def _member_config(released: restore.Restored) -> dict:
    """The config of a plain run of the released members (of a sweep: the member's setting)."""
    seeds = released.seeds
    if released.setting is not None:
        return workdir_lib.config_to_json(sweep.setting_config(
            released.config, released.setting["index"], seeds[0]))
    return dict(released.meta["config"], seed=seeds[0], num_seeds=len(seeds))


def export(workdir: str | Path, out: str | Path, seed: int | None = None,
           command: str = "", overwrite: bool = False, tta: bool | None = None,
           member: int | None = None, calibrated: bool = False,
           setting: int | None = None) -> dict[str, Any]:
    """Writes the release of `workdir` (all members, or only `seed`'s or `member`'s) to `out`;
    its record. Of a sweep, one member: by default the best member of `setting`, itself by default
    the best setting.

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
        return _export(Path(workdir), Path(out), command, overwrite, tta, calibrated,
                       {"setting": setting, "seed": seed, "member": member})


def _export(workdir: Path, out: Path, command: str, overwrite: bool, tta: bool | None,
            calibrated: bool, choice: dict[str, int | None]) -> dict[str, Any]:
    _check_out(out, overwrite)
    if not (workdir / "summary.json").is_file():
        raise UserError(f"{workdir} has no summary.json: only a finished run can be released; "
                        f"finish it with scripts/train.py --workdir={workdir}")
    full = json.loads((workdir / "summary.json").read_text())
    released = _released(restore.load_workdir(workdir, "best", tta=tta), full, **choice)
    summary = _select(full, released.members)
    if calibrated:
        released = _calibrated(released)
    if calibrated or released.tta != restore.config_from_meta(released.meta).tta:
        summary = _retested(summary, released)
    meta = dict(released.meta, weights_only=True, best_epoch=released.epochs)
    meta["config"] = dict(_member_config(released), tta=released.tta)
    record = _record(meta, summary, command)
    source = workdir / integrity.RELEASE_RECORD
    if source.is_file():  # a release exported again (e.g. in place): how it was made stays known
        previous = integrity.load_json(source)
        record["first_export_command"] = previous.get("first_export_command",
                                                      previous.get("export_command"))
    if released.setting is not None:
        record["sweep_setting"] = full["sweep"]["settings"][released.setting["index"]]["values"]
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write(staging, workdir, released, meta, summary, record)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _write(staging: Path, workdir: Path, released: restore.Restored, meta: dict[str, Any],
           summary: dict[str, Any], record: dict[str, Any]) -> None:
    shutil.copy2(workdir / "metrics.jsonl", staging / "metrics.jsonl")
    (staging / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    weights = {"params": released.params, "batch_stats": released.batch_stats}
    with Checkpoints(staging, keep=1) as ckpts:
        ckpts.save(released.step, weights, meta)
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
    restored = restore.select(restore.load_workdir(folder, "best"))
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
