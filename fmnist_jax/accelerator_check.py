"""The accelerator check: one command that measures a device end to end inside a time budget.

`python scripts/benchmark.py --suite=accelerator --out=DIR` runs, most valuable step first, each
guarded by its share of the budget (a step that runs out is cut, recorded as such, and the next
one starts):

1. `single`: every model with one member: train and evaluation images/s, compile time, peak
   memory, FLOPs and the fraction of the device's peak.
2. `scaling`: every model with several members (first the issue's goal count: 4 for the resnet,
   8 for the others; then 4 and 8) under each candidate way of training members
   (`member_strategy` vmap or map; for models with convolutions also `conv_impl` matmul), the
   epoch time against one member's.
3. `recipe`: the tuned resnet's full recipe (scripts/train.py), timed, with its test accuracy.
4. `pytorch`: benchmarks/pytorch_reference.py on the same device (eager and torch.compile) when
   PyTorch is importable.
5. `bfloat16`: every model with `compute_dtype=bfloat16`.

After every measurement DIR/accelerator_check.json (all results) and DIR/accelerator_check.md
(the tables) are rewritten, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fmnist_jax import benchmark
from fmnist_jax import workdir as workdir_lib

ROOT = Path(__file__).resolve().parent.parent  # the clone (benchmarks/ is not in the package)
PYTORCH_REFERENCE = ROOT / "benchmarks" / "pytorch_reference.py"
MODELS = ("cnn", "resnet", "cnn_deep", "lstm", "mlp")  # the goals' models, convolutions first
CONV_MODELS = ("cnn", "cnn_deep", "cnn_s003", "resnet")
# Candidate name -> config overrides; conv_impl candidates only for models with convolutions.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "vmap": ("member_strategy=vmap",),
    "vmap+matmul": ("member_strategy=vmap", "model.conv_impl=matmul"),
    "map": ("member_strategy=map",),
}
# The goals: epoch time with this many members <= 2x that of one member.
GOAL_MEMBERS = {"resnet": 4}  # 8 for every other model
# Step -> its share of the whole budget, in the order run (a step may use what the ones before it
# left unused). On an H200 a measurement takes ~10-20 s, the tuned resnet's recipe ~80 s.
STEP_SHARES = {"single": 0.18, "scaling": 0.42, "recipe": 0.22, "pytorch": 0.12, "bfloat16": 0.06}


@dataclasses.dataclass
class Check:
    """What the check runs and where it writes; `budget_seconds` bounds the whole."""

    out: Path
    models: Sequence[str]
    seeds: Sequence[int]
    settings: benchmark.Settings
    budget_seconds: float = 450.0
    recipe: str = "configs/tuned/resnet.py"
    recipe_args: Sequence[str] = ()
    steps: Sequence[str] = tuple(STEP_SHARES)
    report: dict[str, Any] = dataclasses.field(init=False)

    def __post_init__(self):
        self.start = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        self.report = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       "command": shlex.join(sys.argv), "environment": workdir_lib.environment(),
                       "budget_seconds": self.budget_seconds, "steps": {}, "single": [],
                       "scaling": [], "bfloat16": [], "pytorch": [], "recipe": []}

    def remaining(self) -> float:
        return self.budget_seconds - (time.monotonic() - self.start)

    def write(self) -> None:
        (self.out / "accelerator_check.json").write_text(json.dumps(self.report, indent=1) + "\n")
        (self.out / "accelerator_check.md").write_text(markdown(self.report) + "\n")

    def run(self) -> dict[str, Any]:
        """Every step in order, each until its deadline; the report."""
        share, total = 0.0, sum(STEP_SHARES[name] for name in self.steps)
        for name in self.steps:
            share += STEP_SHARES[name] / total  # a step may use what the steps before it left
            deadline = self.start + min(share, 1.0) * self.budget_seconds
            status = {"seconds": None, "status": "done"}
            start = time.monotonic()
            try:
                for result in STEPS[name](self, deadline):
                    self.report[name].append(result)
                    self.write()
            except StepSkipped as e:  # cut: after some of its measurements; skipped: before any
                status["status"] = f"{'cut' if self.report[name] else 'skipped'}: {e}"
            status["seconds"] = round(time.monotonic() - start, 1)
            self.report["steps"][name] = status
            self.write()
            print(f"[accelerator check] {name}: {status['status']} ({status['seconds']} s)",
                  file=sys.stderr, flush=True)
        return self.report


class StepSkipped(Exception):
    """A step that could not start (no time left, PyTorch absent, ...): recorded, not fatal."""


def _timeout(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left < 5:
        raise StepSkipped("its share of the time budget ran out")
    return left


def _measure(check: Check, case: str, seeds: int, deadline: float,
             overrides: Sequence[str] = (), eval_repeats: int | None = None) -> dict[str, Any]:
    settings = dataclasses.replace(
        check.settings, overrides=(*check.settings.overrides, *overrides),
        eval_repeats=check.settings.eval_repeats if eval_repeats is None else eval_repeats)
    try:
        return benchmark.measure_in_subprocess(case, seeds, "auto", settings, _timeout(deadline))
    except (RuntimeError, subprocess.TimeoutExpired) as e:  # recorded; the check goes on
        return {"model": case, "seeds": seeds, "overrides": list(overrides),
                "error": str(e).splitlines()[0]}


def single(check: Check, deadline: float) -> Iterator[dict[str, Any]]:
    for case in check.models:
        yield _measure(check, case, 1, deadline)


def scaling(check: Check, deadline: float) -> Iterator[dict[str, Any]]:
    """Each model's goal member count under every candidate first, then the other counts."""
    counts = [n for n in check.seeds if n > 1]
    for goal_first in (True, False):
        for case in check.models:
            goal = GOAL_MEMBERS.get(case, 8)
            for name, overrides in CANDIDATES.items():
                if "model.conv_impl=matmul" in overrides and case not in CONV_MODELS:
                    continue
                for seeds in (n for n in counts if (n == goal or goal not in counts) == goal_first):
                    yield {"candidate": name,
                           **_measure(check, case, seeds, deadline, overrides, 0)}


def bfloat16(check: Check, deadline: float) -> Iterator[dict[str, Any]]:
    for case in check.models:
        yield _measure(check, case, 1, deadline, ("compute_dtype=bfloat16",))


def _data_dir(check: Check) -> list[str]:
    dirs = [o.partition("=")[2] for o in check.settings.overrides if o.startswith("data.dir=")]
    return [f"--data-dir={dirs[-1]}"] if dirs else []


def recipe(check: Check, deadline: float) -> Iterator[dict[str, Any]]:
    """The recipe trained by scripts/train.py in a workdir under `out`; its summary."""
    workdir = check.out / "recipe"
    command = [sys.executable, "-m", "fmnist_jax", "train", f"--config={check.recipe}",
               f"--workdir={workdir}", *_data_dir(check), *check.recipe_args]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, timeout=_timeout(deadline), check=False,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        yield {"config": check.recipe, "command": shlex.join(command[1:]),
               "error": f"timed out after {time.monotonic() - start:.0f} s",
               "epochs_completed": len(workdir_lib.read_history(workdir))}
        return
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        yield {"config": check.recipe, "error": f"exit {done.returncode}: {' '.join(tail)}"}
        return
    summary = json.loads((workdir / "summary.json").read_text())
    yield {"config": check.recipe, "command": shlex.join(command[1:]),
           "wall_seconds": time.monotonic() - start,
           **{k: summary[k] for k in ("epochs_completed", "compile_seconds", "train_seconds",
                                      "seconds", "images_per_second", "test_accuracy")}}


def pytorch(check: Check, deadline: float) -> Iterator[dict[str, Any]]:
    """benchmarks/pytorch_reference.py on the default device, when PyTorch is importable."""
    if importlib.util.find_spec("torch") is None:
        raise StepSkipped("PyTorch is not importable here")
    models = [m for m in check.models if m != "cnn_s003"]
    command = [sys.executable, str(PYTORCH_REFERENCE), f"--models={','.join(models)}",
               "--device=auto", "--modes=eager,compile", "--min-seconds=1",
               f"--train-images={check.settings.train_images}"]
    try:
        done = subprocess.run(command, timeout=_timeout(deadline), capture_output=True,
                              text=True, check=False)
        output = done.stdout
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    for line in output.splitlines():
        if line.startswith("{"):
            yield json.loads(line)


STEPS: dict[str, Callable[[Check, float], Iterator[dict[str, Any]]]] = {
    "single": single, "scaling": scaling, "recipe": recipe, "pytorch": pytorch,
    "bfloat16": bfloat16}


def _rows(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return ["not run (see Steps)"]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _single_row(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [r["model"], r["error"], *["-"] * 6]
    memory = r["peak_device_mib"] or r["peak_host_mib"]
    return [r["model"], _num(r["train_images_per_second"]), _num(r["eval_images_per_second"]),
            _num(r["compile_seconds"], ".1f"), _num(memory),
            _num(r["flops_per_image"] / 1e6, ".1f"), _num(r["gflops_per_second"] / 1e3, ".2f"),
            _num(100 * r["fraction_of_peak"], ".1f")]


def markdown(report: dict[str, Any]) -> str:
    """The report's tables; cells of steps not run say so."""
    env = report["environment"]
    lines = [f"# Accelerator check: {env['device']}", "",
             f"{report['started']} | jax {env['versions']['jax']} | commit {env['commit']} "
             f"({env['commit_note']}) | `{report['command']}`", "",
             "Steps: " + "; ".join(f"{k} {v['status']} ({v['seconds']} s)"
                                   for k, v in report["steps"].items()), ""]
    single_head = ("model", "train img/s", "eval img/s", "compile s", "peak MiB", "MFLOP/img",
                   "TFLOP/s", "% of peak")
    for title, key in (("One member, float32", "single"), ("One member, bfloat16", "bfloat16")):
        lines += [f"## {title}", "", *_rows(single_head, [_single_row(r) for r in report[key]]),
                  ""]
    peaks = {f"{r['peak_tflops']:.4g} TFLOP/s, {r['peak_precision']} ({r['peak_source']})"
             for key in ("single", "bfloat16") for r in report[key] if "peak_tflops" in r}
    lines += [f"Peak: {'; '.join(sorted(peaks)) or '-'}. FLOPs: 2 x multiply-adds of matrix "
              f"products and convolutions per training image, counted from the step's jaxpr.", ""]
    base = {r["model"]: r["epoch_seconds"] for r in report["single"] if "error" not in r}
    rows = []
    for r in report["scaling"]:
        one = base.get(r["model"])
        ratio = "-" if "error" in r or not one else f"{r['epoch_seconds'] / one:.2f}"
        rows.append([r["model"], r["candidate"], str(r["seeds"]),
                     r.get("error") or _num(r["train_images_per_second"]), ratio])
    lines += ["## Seed scaling (epoch time with N members / with 1; goal <= 2)", "",
              *_rows(("model", "candidate", "members", "train img/s (all members)", "ratio"),
                     rows), ""]
    rows = [[r["model"], r.get("mode", "-"), r.get("device", "-"),
             r.get("error") or _num(r.get("train_images_per_second")),
             _num(r.get("eval_images_per_second"))]
            for r in report["pytorch"]]
    lines += ["## PyTorch reference, same device", "",
              *_rows(("model", "mode", "device", "train img/s", "eval img/s"), rows), ""]
    lines += ["## Tuned recipe", ""]
    for r in report["recipe"] or [None]:
        lines.append(_recipe_line(r))
    return "\n".join(lines)


def _recipe_line(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    if "error" in r:
        return f"{r['config']}: {r['error']}"
    return (f"`{r['command']}`: {r['epochs_completed']} epochs, {r['train_seconds']:.1f} s "
            f"training ({r['seconds']:.1f} s with validation, compile {r['compile_seconds']:.1f} "
            f"s, {r['wall_seconds']:.0f} s wall), {_num(r['images_per_second'])} img/s, test "
            f"accuracy " + ", ".join(f"{a:.2%}" for a in r["test_accuracy"]))
