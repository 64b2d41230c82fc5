"""The real training script on a slice of the real data: a run, then a resumed extension."""

from __future__ import annotations

import json

import pytest

from subprocess_runs import run as run_script
from subprocess_runs import run_main

pytestmark = pytest.mark.e2e
# A constant learning rate: a schedule over the run's epochs would change when --epochs grows.
SLICE = ["--train-limit=2000", "--batch-size=100", "--config.data.val_fraction=0.05",
         "--config.schedule.name=constant"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_then_resume_equals_an_uninterrupted_run(tmp_path, real_data_dir):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    first = run_script("train", "--model=cnn", "--epochs=1", f"--workdir={resumed}", *SLICE)
    assert first.returncode == 0, first.stderr
    assert "429,450 parameters" in first.stdout and "test accuracy" in first.stdout
    second = run_script("train", "--model=cnn", "--epochs=2", f"--workdir={resumed}", *SLICE)
    assert second.returncode == 0, second.stderr
    assert "resumed from checkpoint" in second.stdout
    # the uninterrupted reference: train's main in this process (what it wrote is compared)
    third = run_main("train", "--model=cnn", "--epochs=2", f"--workdir={straight}", *SLICE)
    assert third.returncode == 0, third.stderr

    a, b = read_jsonl(resumed / "metrics.jsonl"), read_jsonl(straight / "metrics.jsonl")
    assert [r["epoch"] for r in a] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["test_accuracy"] == json.loads((straight / "summary.json").read_text())[
        "test_accuracy"]
    assert summary["test_accuracy"][0] > 0.6  # 2k images, 2 epochs: well above chance
    record = json.loads((resumed / "config.json").read_text())
    assert record["model"] == "cnn" and record["param_count"] == 429_450
    assert record["data"]["train_size"] == 2000 and len(record["class_names"]) == 10


def test_bad_model_name_is_one_clear_line(tmp_path):
    result = run_main("train", "--model=vgg", f"--workdir={tmp_path}")  # a flag error: in process
    assert result.returncode == 2
    assert "invalid choice: 'vgg'" in result.stderr and "Traceback" not in result.stderr
