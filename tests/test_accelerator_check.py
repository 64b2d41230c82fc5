"""The accelerator check (`scripts/benchmark.py --suite=accelerator`) end to end with tiny sizes on
the CPU, so that the command a GPU session runs keeps working; and its time budget."""

from __future__ import annotations

import json

import pytest

from fmnist_jax import accelerator_check

from subprocess_runs import run as run_script

TINY = ["--train-images=256", "--min-epochs=1", "--min-seconds=0", "--eval-repeats=1"]


@pytest.mark.e2e
def test_the_check_runs_every_step_and_writes_its_report(tmp_path, real_data_dir):
    out = tmp_path / "check"
    done = run_script("benchmark", "--suite=accelerator", f"--out={out}", "--models=mlp",
                      "--seeds=1,2", *TINY, "--budget-seconds=1500", "--recipe=configs/mlp.py",
                      "--recipe-args=--epochs=1 --train-limit=512 --batch-size=128",
                      f"--config.data.dir={real_data_dir}", timeout=1600)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "accelerator_check.json").read_text())
    steps = report["steps"]
    assert [steps[s]["status"] for s in ("single", "scaling", "recipe", "bfloat16")] == ["done"] * 4
    assert steps["pytorch"]["status"] in ("done", "skipped: PyTorch is not importable here")
    (single,), (bf16,) = report["single"], report["bfloat16"]
    for result in (single, bf16, *report["scaling"], *report["recipe"]):
        assert "error" not in result, result
    assert single["train_images_per_second"] > 0 and single["compute_dtype"] == "float32"
    assert bf16["compute_dtype"] == "bfloat16"
    assert single["flops_per_image"] == bf16["flops_per_image"] > 1e6
    # of a matmul measured at another moment on a shared CPU: not bounded by 1 here
    assert "measured" in single["peak_precision"]
    assert single["fraction_of_peak"] == pytest.approx(
        single["gflops_per_second"] / 1e3 / single["peak_tflops"])
    assert [(r["candidate"], r["seeds"], r["member_strategy"]) for r in report["scaling"]] == \
        [("vmap", 2, "vmap"), ("map", 2, "map")]  # no conv_impl candidate for the mlp
    (recipe,) = report["recipe"]
    assert recipe["epochs_completed"] == 1 and 0.3 < recipe["test_accuracy"][0] <= 1
    table = (out / "accelerator_check.md").read_text()
    assert "## Seed scaling" in table and "| mlp | map | 2 |" in table
    assert table in done.stdout


def test_a_spent_budget_skips_steps_and_still_writes_the_report(tmp_path):
    from fmnist_jax import benchmark  # pylint: disable=import-outside-toplevel
    check = accelerator_check.Check(tmp_path, ["mlp"], [1, 4], benchmark.Settings(),
                                    budget_seconds=1.0, steps=("single", "recipe"))
    report = check.run()
    for step in ("single", "recipe"):
        assert report["steps"][step]["status"] == "skipped: its share of the time budget ran out"
    assert report["single"] == [] and report["recipe"] == []
    written = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert written["steps"] == report["steps"]
    assert "not run" in (tmp_path / "accelerator_check.md").read_text()
