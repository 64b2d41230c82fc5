"""TensorBoard event files: written per epoch beside metrics.jsonl, read back with TensorBoard's
own reader; a resumed run leaves every epoch once; without tensorboardX a run writes none."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from fmnist_jax import config as config_lib
from fmnist_jax import run, sweep, tensorboard
from subprocess_runs import run as run_script
from subprocess_runs import run_main

SEEDS = (3, 4)


def read_events(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's event files as (step, value) pairs, in order."""
    events = event_accumulator.EventAccumulator(str(workdir / tensorboard.FOLDER))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def record(epoch: int, accuracy: float, members: int) -> dict:
    """A metrics.jsonl line as training writes it, for `members` seeds."""
    values = {"loss": np.linspace(1.0, 2.0, members) / epoch,
              "accuracy": np.linspace(accuracy, accuracy + 0.1, members)}
    return run.epoch_record(epoch, values, values, np.full(members, 1e-3), np.ones(members, bool),
                            seconds=2.0, train_seconds=1.5, images=300)


def test_each_epoch_is_written_with_the_mean_and_every_member(tmp_path):
    records = [record(1, 0.5, 2), record(2, 0.6, 2)]
    with tensorboard.EpochWriter(tmp_path, SEEDS, history=[]) as board:
        for r in records:
            board.write(r)
    events = read_events(tmp_path)
    for name in ("train_loss", "val_accuracy", "learning_rate", "images_per_second"):
        assert events[name] == [(r["epoch"], pytest.approx(r[name])) for r in records]
    for name in ("train_loss", "val_accuracy", "learning_rate"):
        for k, seed in enumerate(SEEDS):
            assert events[f"member_{seed}/{name}"] == [
                (r["epoch"], pytest.approx(r[f"{name}_members"][k])) for r in records]
    assert events["images_per_second"][0][1] == pytest.approx(200.0)
    assert not any(tag.startswith("member_") and tag.endswith("_std") for tag in events)


def test_a_single_seed_run_has_no_member_tags(tmp_path):
    with tensorboard.EpochWriter(tmp_path, (0,), history=[]) as board:
        board.write(record(1, 0.5, 1))
    assert sorted(read_events(tmp_path)) == sorted(
        n for n in tensorboard.METRICS if not n.startswith("raw_"))


def test_a_resumed_run_rewrites_the_events_from_the_kept_history(tmp_path):
    """Epochs 1-3 written, then a resume from the checkpoint of epoch 2 trains epoch 3 again."""
    with tensorboard.EpochWriter(tmp_path, SEEDS, history=[]) as board:
        for epoch in (1, 2, 3):
            board.write(record(epoch, 0.5 + epoch / 10, 2))
    kept = [record(epoch, 0.5 + epoch / 10, 2) for epoch in (1, 2)]
    with tensorboard.EpochWriter(tmp_path, SEEDS, history=kept) as board:
        board.write(record(3, 0.9, 2))
    events = read_events(tmp_path)
    assert events["val_accuracy"] == [(1, pytest.approx(0.65)), (2, pytest.approx(0.75)),
                                      (3, pytest.approx(0.95))]
    assert [step for step, _ in events[f"member_{SEEDS[1]}/val_loss"]] == [1, 2, 3]


def sweep_record(epoch: int) -> tuple[dict, list[int]]:
    """A sweep's metrics.jsonl line (2 learning rates x seeds 3, 4), and each member's setting."""
    config = config_lib.model_config("mlp")
    config.seed, config.num_seeds = SEEDS[0], len(SEEDS)
    sweep.apply(config, ["optimizer.learning_rate=1e-3,2e-3"])
    line = record(epoch, 0.1 * epoch, 4)
    columns = {name: np.asarray(line[f"{name}_members"])
               for name in ("train_loss", "val_accuracy", "learning_rate")}
    line["settings"] = sweep.epoch_groups(config, columns)
    assert sweep.member_seeds(config) == [3, 4, 3, 4]
    return line, sweep.member_settings(config)


def test_a_sweeps_members_of_one_seed_keep_apart_per_setting(tmp_path):
    records = [sweep_record(epoch) for epoch in (1, 2)]
    settings = records[0][1]
    with tensorboard.EpochWriter(tmp_path, [3, 4, 3, 4], history=[], settings=settings) as board:
        for line, _ in records:
            board.write(line)
    events = read_events(tmp_path)
    for member, (k, seed) in enumerate(zip(settings, [3, 4, 3, 4])):
        assert events[f"setting_{k}/seed_{seed}/val_accuracy"] == [
            (line["epoch"], pytest.approx(line["val_accuracy_members"][member]))
            for line, _ in records]
    for k in (0, 1):
        assert events[f"setting_{k}/train_loss"] == [
            (line["epoch"], pytest.approx(line["settings"][k]["train_loss"]))
            for line, _ in records]
    assert not any(tag.startswith("member_") for tag in events)


def test_without_tensorboardx_a_run_writes_none_and_says_so_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    with tensorboard.EpochWriter(tmp_path, SEEDS, history=[]) as board:
        board.write(record(1, 0.5, 2))
        board.write(record(2, 0.6, 2))
    assert capsys.readouterr().out == tensorboard.MISSING + "\n"
    assert not (tmp_path / tensorboard.FOLDER).exists()


@pytest.mark.e2e
def test_train_writes_events_matching_metrics_jsonl_across_a_resume(tmp_path, synthetic_data_dir):
    workdir = tmp_path / "run"
    args = ("--model=mlp", "--config.model.hidden=(32,)", "--batch-size=60", "--seeds=2",
            "--seed=3", f"--data-dir={synthetic_data_dir}", f"--workdir={workdir}", "--quiet")
    # the first run through train's main in this process; the second, a script, resumes it and
    # trains one epoch more
    for epochs, runner in ((2, run_main), (3, run_script)):
        result = runner("train", *args, f"--epochs={epochs}")
        assert result.returncode == 0, result.stderr
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    events = read_events(workdir)
    assert [e for e, _ in events["val_accuracy"]] == [1, 2, 3]
    for name in ("val_accuracy", "train_loss", "learning_rate"):
        assert [v for _, v in events[name]] == pytest.approx([r[name] for r in history])
        for k, seed in enumerate(SEEDS):
            assert [v for _, v in events[f"member_{seed}/{name}"]] == pytest.approx(
                [r[f"{name}_members"][k] for r in history])


@pytest.mark.e2e
def test_a_sweeps_events_hold_every_setting_and_seed(tmp_path, synthetic_data_dir):
    workdir = tmp_path / "sweep"
    # train's main in this process (the resume above is a real run): its events are checked
    result = run_main("train", "--model=mlp", "--config.model.hidden=(32,)", "--batch-size=60",
                      "--seeds=2", "--seed=3", "--epochs=1", f"--data-dir={synthetic_data_dir}",
                      "--sweep=optimizer.learning_rate=1e-3,3e-3", f"--workdir={workdir}",
                      "--quiet")
    assert result.returncode == 0, result.stderr
    (line,) = run.read_history(workdir)
    events = read_events(workdir)
    for member, (k, seed) in enumerate([(0, 3), (0, 4), (1, 3), (1, 4)]):
        assert events[f"setting_{k}/seed_{seed}/learning_rate"] == [
            (1, pytest.approx(line["learning_rate_members"][member]))]
    assert events["setting_0/seed_3/learning_rate"] != events["setting_1/seed_3/learning_rate"]
