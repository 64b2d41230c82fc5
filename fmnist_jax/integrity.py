"""Integrity of the folders the project hands on: releases, portable models, evaluations.

`record(folder)` writes `folder/manifest.json`: the SHA-256 and size of every file the folder
holds (every file under it, whatever wrote it: a file a later version adds to a release is covered
without a change here), each file flushed to disk first, the manifest written beside and renamed.
`verify(folder)`, called by every reader before it uses a file of the folder, refuses with one line
naming the file and the fix: a file that differs from its digest, a listed file that is missing,
or an unlisted file among the listed ones (a checkpoint step added by hand). Files beside the
listed ones (an `eval-test/` that evaluate.py wrote into a release) are not the folder's and are
ignored. `model.json` and `release.json` are checked against their schema at the same time.

A release written before manifests existed (no `integrity` in its release.json) loads with a
warning to export it again; a release whose release.json names a manifest it does not hold is
refused. This module imports nothing else of the project, for `portable.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fmnist_jax.errors import CheckpointError
from fmnist_jax.files import sync, write_atomically

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
RELEASE_RECORD = "release.json"
CHUNK = 1 << 20
NUM_CLASSES = 10


class IntegrityError(CheckpointError):
    """A file of a release, portable model or evaluation differs from what was written."""


def digest(path: Path) -> str:
    """The SHA-256 of the file at `path`, in hex."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
    return sha.hexdigest()


def _held_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def record(folder: str | Path, paths: Iterable[str | Path] | None = None) -> Path:
    """Writes `folder/manifest.json` of every file in `folder` (or adds `paths` to the one there),
    each flushed to disk first; its path."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    files = _read(folder)["files"] if paths is not None and manifest.is_file() else {}
    for path in _held_files(folder) if paths is None else [Path(p) for p in paths]:
        sync(path)
        files[path.relative_to(folder).as_posix()] = {"sha256": digest(path),
                                                      "bytes": path.stat().st_size}
    content = {"algorithm": "sha256", "files": dict(sorted(files.items()))}
    write_atomically(manifest, (json.dumps(content, indent=2) + "\n").encode())
    return manifest


def _fix(folder: Path) -> str:
    if (folder / RELEASE_RECORD).is_file():
        return (f"restore {folder} from its source, or export it again (scripts/export.py "
                f"--workdir=RUN --out={folder} --overwrite)")
    if (folder / "metrics.json").is_file():
        return f"evaluate again (scripts/evaluate.py --output-dir={folder})"
    return f"write it again (scripts/export.py --workdir={folder} --portable-only)"


def _damaged(folder: Path, name: str, problem: str) -> IntegrityError:
    return IntegrityError(f"{folder / name} {problem}: {folder} is damaged or was changed after "
                          f"it was written; {_fix(folder)}")


def _read(folder: Path) -> dict[str, Any]:
    try:
        content = json.loads((folder / MANIFEST).read_text())
        files = content["files"]
        if not all(isinstance(e["sha256"], str) and isinstance(e["bytes"], int)
                   for e in files.values()):
            raise TypeError("an entry without sha256 and bytes")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise _damaged(folder, MANIFEST, f"is not a manifest ({type(e).__name__})") from None
    return content


def _check_file(folder: Path, name: str, entry: dict[str, Any]) -> None:
    path = folder / name
    if not path.is_file():
        raise _damaged(folder, name, f"is missing (listed in {MANIFEST})")
    if path.stat().st_size != entry["bytes"]:
        raise _damaged(folder, name, f"has {path.stat().st_size} bytes, not the {entry['bytes']} "
                                     f"of {MANIFEST}")
    if digest(path) != entry["sha256"]:
        raise _damaged(folder, name, f"differs from its SHA-256 in {MANIFEST}")


def _unlisted(folder: Path, listed: dict[str, Any]) -> list[str]:
    """Files under the folder's listed entries (top level) that the manifest does not list."""
    tops = {name.split("/")[0] for name in listed}
    return [name for p in _held_files(folder)
            if (name := p.relative_to(folder).as_posix()).split("/")[0] in tops
            and name not in listed]


def verify(folder: str | Path, names: Iterable[str] | None = None) -> None:
    """Refuses (IntegrityError, one line) a folder whose files differ from its manifest, or whose
    model.json or release.json break their schema; a folder without a manifest is checked for
    the schema only (a release made before manifests: with a warning). `names`: only these files,
    for a reader that reads no other (the portable model)."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        files = _read(folder)["files"]
        for name in names or ():
            if name not in files:
                raise _damaged(folder, name, f"is not in {MANIFEST}")
        for name, entry in files.items():
            if names is None or name in names:
                _check_file(folder, name, entry)
        extra = _unlisted(folder, files) if names is None else []
        if extra:
            raise _damaged(folder, extra[0], f"is not in {MANIFEST}")
    if names is None:
        check_schemas(folder)
    if (folder / RELEASE_RECORD).is_file() and not (folder / MANIFEST).is_file():
        if "integrity" in load_json(folder / RELEASE_RECORD):
            raise _damaged(folder, MANIFEST, "is missing (its release.json names it)")
        log.warning("%s is a release without %s (made before releases were checksummed): its "
                    "files are not verified; export it again to add one", folder, MANIFEST)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _of(*kinds: type) -> Callable[[Any], str]:
    return lambda value: "" if isinstance(value, kinds) else f"must be {_names(kinds)}"


def _list_of(*kinds: type, length: int | None = None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, list) or not all(isinstance(v, kinds) for v in value):
            return f"must be a list of {_names(kinds)}"
        if length is not None and len(value) != length:
            return f"must list {length}, not {len(value)}"
        return ""
    return check


# The required keys of the JSON files a release holds, and what each must be.
SCHEMAS: dict[str, dict[str, Callable[[Any], str]]] = {
    "model.json": {"model": _of(str), "class_names": _list_of(str, length=NUM_CLASSES),
                   "seeds": _list_of(int), "predictor": _of(str),
                   "test_accuracy": _of(float, int, type(None)), "input": _of(dict),
                   "platforms": _list_of(str)},
    RELEASE_RECORD: {"model": _of(str), "seeds": _list_of(int), "train_command": _of(str),
                     "export_command": _of(str), "epochs_completed": _of(int),
                     "best_epoch": _list_of(int), "test_accuracy": _list_of(int, float),
                     "test_loss": _list_of(int, float)},
}


def load_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; IntegrityError (one line) if it is not one."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _damaged(path.parent, path.name, f"is not valid JSON ({type(e).__name__})") from None
    if not isinstance(content, dict):
        raise _damaged(path.parent, path.name, "is not a JSON object")
    return content


def check_schema(path: Path, kind: str | None = None) -> dict[str, Any]:
    """The content of `path`, a file of `kind` in `SCHEMAS` (default its name), refused with one
    line if a required key is missing or of the wrong kind."""
    content = load_json(path)
    for key, check in SCHEMAS[kind or path.name].items():
        problem = check(content[key]) if key in content else "is missing"
        if problem:
            raise _damaged(path.parent, path.name, f"breaks its schema: {key!r} {problem}")
    return content


def check_schemas(folder: Path) -> None:
    for name in SCHEMAS:
        if (folder / name).is_file():
            check_schema(folder / name)
