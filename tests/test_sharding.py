"""Meshes: the mesh rules, one device unchanged, 8 simulated devices, checkpoints moving between
meshes, and two processes joined by `jax.distributed` on loopback.

This session has one device; everything with more runs in subprocesses with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import chex
import flax.serialization
import jax
import pytest
from jax.sharding import AbstractMesh

import subprocess_runs
from fmnist_jax import restore, run, sharding
from fmnist_jax import train as train_lib
from fmnist_jax.checkpointing import Checkpoints
from fmnist_jax.errors import ConfigError
from multidevice_checks import train_epoch
from subprocess_runs import SMALL_RUN, STEPS_PER_EPOCH
from test_train import small_config

# gloo's threads print "[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected
# peer ranks is : 1", at times interleaved mid-line; the other process must print nothing of its own.
GLOO_WORDS = set("Gloo Rank is connected to peer ranks Expected number of".split())

HELPER = Path(__file__).resolve().parent / "multidevice_checks.py"
# SMALL_RUN with two seeds, and SGD at a constant rate: float noise from summing in another
# order stays at the float level (Adam turns the noise in a bias before BatchNorm into +-lr steps).
RUN = (*SMALL_RUN, "--seeds=2", "--config.optimizer.name=sgd", "--learning-rate=0.05",
       "--config.schedule.name=constant")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def devices_env(count: int) -> dict[str, str]:
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}


@pytest.mark.parametrize("text, expected", [
    ("", {}), ("data:4", {"data": 4}), ("data:4,seeds:2", {"data": 4, "seeds": 2}),
    (" seeds:8 ", {"seeds": 8})])
def test_parse_mesh(text, expected):
    assert sharding.parse_mesh(text) == expected


@pytest.mark.parametrize("text", ["model:2", "data", "data:0", "data:x", "data:2,data:2"])
def test_parse_mesh_refuses_bad_axes(text):
    with pytest.raises(ConfigError, match="--mesh=.*data:4,seeds:2"):
        sharding.parse_mesh(text)


@pytest.mark.parametrize("num_seeds, devices, seeds_axis", [
    (1, 8, 1), (8, 8, 8), (16, 8, 8), (2, 8, 2), (3, 8, 1), (12, 8, 4), (5, 1, 1)])
def test_default_mesh_puts_seeds_on_devices_first(num_seeds, devices, seeds_axis):
    assert sharding.mesh_shape({}, devices, num_seeds) == {
        "seeds": seeds_axis, "data": devices // seeds_axis}


@pytest.mark.parametrize("requested, expected", [
    ({"data": 4}, {"seeds": 2, "data": 4}), ({"seeds": 8}, {"seeds": 8, "data": 1}),
    ({"data": 2, "seeds": 2}, {"seeds": 2, "data": 2})])  # a full mesh may leave devices idle
def test_requested_mesh_is_completed(requested, expected):
    assert sharding.mesh_shape(requested, 8, 1) == expected


@pytest.mark.parametrize("requested", [{"data": 3}, {"data": 4, "seeds": 4}, {"seeds": 16}])
def test_mesh_larger_than_the_devices_is_refused(requested):
    with pytest.raises(ConfigError, match="8 are available"):
        sharding.mesh_shape(requested, 8, 1)


def test_layout_refuses_what_the_mesh_cannot_split():
    layout = sharding.Layout(AbstractMesh((2, 4), sharding.AXES))
    layout.check(batch_size=64, num_seeds=4)
    assert layout.per_device_batch(64) == 16
    with pytest.raises(ConfigError, match="batch size 90 .* 4 devices .* multiple of 4"):
        layout.check(batch_size=90, num_seeds=2)
    with pytest.raises(ConfigError, match="3 seeds .* 2 devices"):
        layout.check(batch_size=64, num_seeds=3)


@pytest.mark.parametrize("length", [1, 8])
def test_one_device_mesh_trains_bitwise_as_without_one(length):
    config = small_config(num_seeds=2)
    layout = sharding.make_layout("", config.num_seeds)
    assert dict(layout.mesh.shape) == {"seeds": 1, "data": 1}
    with_mesh = train_lib.to_host(train_epoch(config, layout, length))
    without = train_lib.to_host(train_epoch(config, None, length))
    subprocess_runs.assert_bitwise_equal(flax.serialization.to_state_dict(with_mesh[0]),
                                         flax.serialization.to_state_dict(without[0]))
    subprocess_runs.assert_bitwise_equal(with_mesh[1], without[1])


@pytest.mark.e2e
def test_eight_simulated_devices(tmp_path):
    """tests/multidevice_checks.py: data-parallel and seeds meshes against one device."""
    out = tmp_path / "checks.json"
    result = subprocess.run([sys.executable, str(HELPER), str(out)], capture_output=True,
                            text=True, timeout=600, env=subprocess_runs.script_env(**devices_env(8)))
    assert result.returncode == 0, result.stderr[-3000:]
    failed = {k: v for k, v in json.loads(out.read_text()).items() if v != "ok"}
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())


@pytest.mark.parametrize("args, message", [
    (["--mesh=data:2"], "--mesh=data:2 needs a multiple of 2 devices, but 1 are available"),
    (["--mesh=data:1,seeds:2"], "--mesh=seeds:2,data:1 needs 2 devices, but 1 are available"),
    (["--mesh=model:2"], "--mesh='model:2' is not valid"),
    (["--process-id=1"], "need --distributed"),
])
def test_device_flag_errors_are_one_line(tmp_path, args, message):
    result = subprocess_runs.run_main("train", "--model=mlp", f"--workdir={tmp_path}", *args)
    assert message in subprocess_runs.one_line_error(result, 2)


def test_distributed_needs_a_workdir():
    result = subprocess_runs.run_main("train", "--model=mlp", "--distributed")
    assert "--distributed needs --workdir" in subprocess_runs.one_line_error(result, 2)


@pytest.mark.e2e
def test_distributed_without_coordinates_is_one_line(tmp_path):
    env = {k: "" for k in sharding.PROCESS_ENV}  # empty: unset, whatever this shell exports
    result = subprocess_runs.run("train", "--model=mlp", f"--workdir={tmp_path}", "--distributed",
                                 env=env)
    assert "--distributed could not start" in subprocess_runs.one_line_error(result, 2)


def test_process_count_from_the_environment_must_be_a_number(monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two' is not a non-negative integer"):
        sharding.initialize_distributed("127.0.0.1:1234")


def read_state(workdir: Path, step: int) -> dict:
    """The state a checkpoint holds, restored onto this session's one device (an abstract
    template, as `restore` reads a workdir: shapes only, so no initialisation is compiled)."""
    with Checkpoints(workdir, read_only=True) as ckpts:
        _, meta = ckpts.restore_meta(step)
        config = restore.config_from_meta(meta)
        parts = run.build(config, meta["data"]["train_size"])
        template = jax.eval_shape(lambda: run.initial_states(config, parts))
        return flax.serialization.to_state_dict(train_lib.to_host(ckpts.restore_state(step, template)))


def assert_runs_agree(workdir: Path, reference: Path, epochs: int, steps: list[int]) -> None:
    """The metrics of `epochs` epochs and the states checkpointed at `steps` agree to float
    tolerance."""
    got, want = subprocess_runs.metrics(workdir), subprocess_runs.metrics(reference)[:epochs]
    assert len(got) == epochs
    chex.assert_trees_all_close(got, want, **TOLERANCE)
    for step in steps:
        chex.assert_trees_all_close(read_state(workdir, step), read_state(reference, step),
                                    **TOLERANCE)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, real_data_dir) -> Path:
    """RUN for 3 epochs on one device: the reference (its last two checkpoints kept), through
    train's main in this process, which has one device."""
    assert jax.device_count() == 1, "the pytest process must have one device: unset XLA_FLAGS"
    workdir = tmp_path_factory.mktemp("one-device")
    result = subprocess_runs.run_main("train", *RUN, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    assert "mesh seeds:1,data:1, batch 64 = 64 per device" in result.stdout
    return workdir


@pytest.mark.e2e
def test_checkpoints_move_between_meshes(tmp_path, one_device_run):
    """Epoch 1 on 8 devices, epoch 2 resumed on 1, epoch 3 resumed on 8 again."""
    eight = "mesh seeds:2,data:4, batch 64 = 16 per device"
    for epochs, devices, mesh in ((1, 8, eight), (2, 1, "mesh seeds:1,data:1, batch 64 = 64 per"),
                                  (3, 8, eight)):
        result = subprocess_runs.run("train", *RUN, f"--epochs={epochs}", f"--workdir={tmp_path}",
                                     env=devices_env(devices))
        assert result.returncode == 0, result.stderr
        assert mesh in result.stdout, result.stdout
        assert epochs == 1 or "resumed from checkpoint" in result.stdout
    record = json.loads((tmp_path / "config.json").read_text())["environment"]
    assert record["mesh"] == {"seeds": 2, "data": 4} and len(record["devices"]) == 8
    assert_runs_agree(tmp_path, one_device_run, 3, [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH])


@pytest.mark.e2e
def test_two_processes_on_loopback_agree_with_one(tmp_path, one_device_run):
    """Two processes of 2 CPU devices each, joined by jax.distributed over gloo: a seeds:2,data:2
    mesh with the members on separate processes and each batch split within one."""
    args = [*RUN, "--epochs=2", f"--workdir={tmp_path}", "--distributed",
            f"--coordinator-address=127.0.0.1:{subprocess_runs.free_port()}", "--num-processes=2"]
    processes = [subprocess.Popen(subprocess_runs.command("train", *args, f"--process-id={i}"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=subprocess_runs.script_env(**devices_env(2)),
                                  cwd=subprocess_runs.ROOT)
                 for i in range(2)]
    try:
        outputs = [p.communicate(timeout=300) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    primary, other = outputs[0][0], outputs[1][0]
    assert "4 x cpu (cpu), 2 process(es) | mesh seeds:2,data:2, batch 64 = 32 per device" in primary
    assert "test accuracy" in primary
    assert set(re.findall(r"[A-Za-z]+", other)) <= GLOO_WORDS, other  # only gloo's own lines
    assert_runs_agree(tmp_path, one_device_run, 2, [2 * STEPS_PER_EPOCH])
