"""Sweeps: member k of a sweep trains as the plain run of its setting and seed, for every kind of
field that can vary; grouping by setting; refusals; and a killed sweep resumed to the end."""

from __future__ import annotations

import json
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subprocess_runs as runs
from fmnist_jax import report, restore, run, sweep
from fmnist_jax import train as train_lib
from fmnist_jax.errors import ConfigError
from test_train import BATCH, setup, small_config

STEPS = 4


def sweep_config(specs, num_seeds=2, **overrides):
    config = small_config(num_seeds=num_seeds, **overrides)
    sweep.apply(config, specs)
    return config


def train_steps(config, num_steps=STEPS, num_train=256):
    """`num_steps` steps of epoch 0 of every member, one compiled step at a time."""
    _, states, split = setup(config, num_train)
    keys = train_lib.stacked_keys(run.seeds_of(config))
    step = train_lib.make_train_step(0.3, 0.35, config.label_smoothing, None, config.ema_decay)
    span = train_lib.make_train_span(step, len(run.seeds_of(config)))
    perms = train_lib.epoch_permutations(keys["data"], 0, num_train, BATCH)
    acc = train_lib.init_accumulator(len(run.seeds_of(config)))
    images, labels = jnp.asarray(split.images), jnp.asarray(split.labels)
    for i in range(num_steps):
        states, acc = span(states, acc, images, labels, perms, i, i, keys["dropout"], length=1)
    return states, acc


NO_BATCH_NORM = {"model.use_batch_norm": False}  # Adam: see `small_config`
ADAM_ATOL = 5e-5  # Adam divides by the gradient's scale, which magnifies float noise (lr 1e-3)
CASES = [
    pytest.param(["optimizer.learning_rate=0.02,0.1"], {}, 2e-6, id="sgd-learning-rate"),
    pytest.param(["optimizer.learning_rate=1e-3,3e-3"],
                 {"optimizer.name": "adam", "schedule.name": "warmup_cosine",
                  "schedule.warmup_epochs": 0.25, **NO_BATCH_NORM}, ADAM_ATOL,
                 id="adam-learning-rate"),
    pytest.param(["optimizer.weight_decay=0,0.5"],
                 {"optimizer.name": "adamw", "optimizer.learning_rate": 0.01, **NO_BATCH_NORM},
                 10 * ADAM_ATOL, id="adamw-weight-decay"),
    pytest.param(["optimizer.momentum=0,0.9"], {}, 2e-6, id="sgd-momentum"),
    pytest.param(["optimizer.b1=0.5,0.9", "optimizer.b2=0.9,0.999"],
                 {"optimizer.name": "adam", **NO_BATCH_NORM}, ADAM_ATOL, id="adam-betas"),
    pytest.param(["optimizer.grad_clip_norm=0,0.05"], {}, 2e-6, id="gradient-clipping"),
    pytest.param(["label_smoothing=0,0.2"], {}, 2e-6, id="label-smoothing"),
    pytest.param(["ema_decay=0,0.05"], {}, 2e-6, id="moving-average-decay"),
]


def compared(state):
    """What a varied field changes: the weights, and their moving average when kept."""
    return {"params": state.params, "ema_params": state.ema_params}


@pytest.mark.parametrize("specs, overrides, atol", CASES)
def test_member_equals_the_plain_run_of_its_setting_and_seed(specs, overrides, atol):
    """The last member (last setting, second seed) against its plain run; a decay of 0 keeps
    an "average" equal to the weights, where the plain run keeps none."""
    config = sweep_config(specs, seed=3, **overrides)
    states, acc = train_steps(config)
    last = len(run.seeds_of(config)) - 1
    assert last == 2 * len(sweep.settings(config)) - 1
    single, single_acc = train_steps(sweep.setting_config(config, len(sweep.settings(config)) - 1,
                                                          seed=4))
    got = restore.pick_members(states, [last])
    chex.assert_trees_all_close(got.params, single.params, rtol=2e-5, atol=atol)
    chex.assert_trees_all_close(acc["loss"][last:], single_acc["loss"], rtol=2e-5)
    if jax.tree.leaves(single.ema_params):
        chex.assert_trees_all_close(got.ema_params, single.ema_params, rtol=2e-5, atol=atol)
    # the varied value mattered: the first and last settings' members of one seed differ, by
    # far more than the tolerance
    first = compared(restore.pick_members(states, [1]))
    difference = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(first), jax.tree.leaves(compared(got))))
    assert difference > 10 * atol, difference
    if "ema_decay" in specs[0]:  # decay 0: the average is the weights themselves
        chex.assert_trees_all_close(first["ema_params"], first["params"], rtol=0, atol=0)


def test_members_are_setting_major():
    config = sweep_config(["optimizer.learning_rate=0.1,0.2", "label_smoothing=0,0.1"],
                          num_seeds=2, seed=5)
    assert run.seeds_of(config) == [5, 6] * 4
    assert sweep.member_settings(config) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sweep.settings(config)[1] == {"optimizer.learning_rate": 0.1, "label_smoothing": 0.1}
    optimizer, step = sweep.member_hparams(config)
    np.testing.assert_allclose(optimizer["learning_rate"], [0.1] * 4 + [0.2] * 4)
    np.testing.assert_allclose(step["label_smoothing"], [0, 0, 0.1, 0.1] * 2)
    _, states, _ = setup(config)
    np.testing.assert_allclose(states.opt_state.hyperparams["learning_rate"], [0.1] * 4 + [0.2] * 4)
    np.testing.assert_allclose(states.hparams["label_smoothing"], [0, 0, 0.1, 0.1] * 2)


def test_summary_groups_by_setting_and_chooses_on_validation():
    config = sweep_config(["optimizer.learning_rate=0.1,0.2,0.4"], num_seeds=2)
    val = np.array([0.80, 0.82, 0.90, 0.86, 0.85, 0.84])
    test = np.array([0.70, 0.71, 0.60, 0.62, 0.99, 0.98])  # the test split must choose nothing
    result = sweep.summarize(config, val, test, np.array([1, 2, 3, 4, 5, 6]))
    assert result["best"]["setting"] == 1 and result["best"]["chosen_on"] == "validation"
    assert result["best"]["best_member"] == 2
    assert result["best"]["test_accuracy"]["mean"] == pytest.approx(0.61)
    assert result["settings"][2]["val_accuracy"]["mean"] == pytest.approx(0.845)
    assert result["settings"][0]["val_accuracy"]["std"] == pytest.approx(np.std([0.8, 0.82],
                                                                                ddof=1))
    table = report.sweep_table(result)
    assert "◀ best" in table.splitlines()[3] and "61.00% ± 1.41%" in table
    assert "99" not in table  # only the chosen setting's test accuracy is shown


@pytest.mark.parametrize("specs, message", [
    (["model.dropout=0.1,0.2"], "model.dropout cannot vary between the members of one run; the "
                                "fields that can: optimizer.learning_rate, "),
    (["batch_size=32,64"], "batch_size cannot vary"),
    (["optimizer.weight_decay=0,1e-4"], "the sgd optimizer does not use it (only adamw); set "
                                        "--config.optimizer.name=adamw"),
    (["label_smoothing=0,1.5"], "config.label_smoothing must lie in [0, 1)"),
    (["optimizer.learning_rate=1e-3,x"], "needs numbers"),
    (["ema_decay=0.9", "ema_decay=0.99"], "given twice"),
])
def test_a_field_that_cannot_vary_is_refused(specs, message):
    with pytest.raises(ConfigError, match=None) as error:
        sweep_config(specs)
    assert message in str(error.value)


def test_refused_field_is_one_line_and_exit_2():
    result = runs.run_main("train", "--model=cnn", "--sweep=model.conv_features=16,32")
    line = runs.one_line_error(result, 2)
    assert line.startswith("error: --sweep=model.conv_features=16,32: model.conv_features cannot "
                           "vary between the members of one run; the fields that can: "), line
    assert "ema_decay" in line


def test_a_grid_that_cannot_fit_is_refused_before_compiling(monkeypatch):
    config = sweep_config(["optimizer.learning_rate=0.1,0.2"], num_seeds=3)
    parts = run.build(config, 256)
    abstract = jax.eval_shape(lambda: run.initial_states(config, parts))
    state, activations = sweep.member_bytes(abstract, parts.model, BATCH)
    params = sum(x.size * 4 for x in jax.tree.leaves(abstract.params)) // 6
    assert state > 3 * params  # params, best params, two Adam-free SGD buffers at least
    assert activations >= 3 * BATCH * 32 * 4  # the hidden layer's output at least
    monkeypatch.setattr(sweep, "available_bytes", lambda device: 1000 + 4 * (state + activations))
    line = sweep.check_memory(abstract, parts.model, BATCH, 1000, 4, jax.devices()[0])
    assert line.startswith("memory: 4 members, about 4 would fit")
    with pytest.raises(ConfigError, match="6 members do not fit in memory: .* so about 4 fit; "
                                          "sweep fewer values or seeds"):
        sweep.check_memory(abstract, parts.model, BATCH, 1000, 6, jax.devices()[0])


SWEEP = ("--sweep=optimizer.learning_rate=0.01,0.03", "--sweep=label_smoothing=0,0.1",
         "--seeds=2")


def train_sweep(workdir, fault=None):
    """The sweep run by the script, killed by `fault`; else through train's main in this process
    (the uninterrupted reference and the resume, whose results are compared)."""
    if fault is None:
        return runs.run_main("train", *runs.SMALL_RUN, *SWEEP, f"--workdir={workdir}")
    return runs.run("train", *runs.SMALL_RUN, *SWEEP, f"--workdir={workdir}", fault=fault)


@pytest.mark.e2e
def test_killed_sweep_resumes_to_the_uninterrupted_result_and_scripts_read_it(tmp_path):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    result = train_sweep(reference)
    assert result.returncode == 0, result.stderr
    assert "sweep: 4 settings x 2 seeds = 8 members" in result.stdout
    killed = train_sweep(stopped, fault="sigkill@24")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert runs.checkpoint_steps(stopped) == [16]
    resumed = train_sweep(stopped)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint step 16:" in resumed.stdout
    _, state, _ = runs.checkpoint(stopped)
    _, ref_state, _ = runs.checkpoint(reference)
    runs.assert_bitwise_equal(state, ref_state)
    assert runs.metrics(stopped) == runs.metrics(reference)

    summary = json.loads((reference / "summary.json").read_text())
    grouped = summary["sweep"]
    assert [s["values"] for s in grouped["settings"]] == [
        {"optimizer.learning_rate": lr, "label_smoothing": ls}
        for lr in (0.01, 0.03) for ls in (0.0, 0.1)]
    for s in grouped["settings"]:
        val = [summary["best_val_accuracy"][m] for m in s["members"]]
        assert s["val_accuracy"]["mean"] == pytest.approx(np.mean(val))
    best = grouped["best"]["setting"]
    assert grouped["settings"][best]["val_accuracy"]["mean"] == max(
        s["val_accuracy"]["mean"] for s in grouped["settings"])
    last = runs.metrics(reference)[-1]
    assert [s["setting"] for s in last["settings"]] == [0, 1, 2, 3]
    assert last["settings"][1]["val_accuracy"] == pytest.approx(
        np.mean(last["val_accuracy_members"][2:4]))
    assert (reference / "sweep.png").stat().st_size > 10_000
    assert "◀ best" in (reference / "sweep.md").read_text()

    # evaluate's main in this process (what it reads is the question here, not a process), its
    # explanations and calibration skipped: generic over the members chosen (test_evaluate.py)
    evaluated = runs.run_main("evaluate", f"--workdir={reference}", "--split=val", "--no-explain",
                              "--no-calibration")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((reference / "eval-val" / "metrics.json").read_text())
    assert metrics["setting"]["index"] == best and metrics["seeds"] == [0, 1]
    released = runs.run("export", f"--workdir={reference}", f"--out={tmp_path / 'release'}")
    assert released.returncode == 0, released.stderr
    record = json.loads((tmp_path / "release" / "release.json").read_text())
    member = grouped["best"]["best_member"]
    assert record["seeds"] == [member % 2]
    assert record["test_accuracy"] == [summary["test_accuracy"][member]]
    config = json.loads((tmp_path / "release" / "config.json").read_text())["config"]
    chosen = grouped["settings"][best]["values"]
    assert config["sweep"] == [] and config["num_seeds"] == 1
    assert config["optimizer"]["learning_rate"] == chosen["optimizer.learning_rate"]
    assert config["label_smoothing"] == chosen["label_smoothing"]
