"""Training and evaluation speed of the real training path, model by model (scripts/benchmark.py).

Each measurement runs in a fresh process (so its peak memory is its own): it builds the run as
`run.train_and_evaluate` does (same config, `Trainer`, compiled span and epoch loop) on the first
`train_images` training images, compiles, trains one warm-up epoch, then times epochs until at
least `min_epochs` and `min_seconds` are done, and times evaluation of the 10,000 test images.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import ml_collections

from fmnist_jax import config as config_lib
from fmnist_jax import components, data, run, sharding
from fmnist_jax import flops as flops_lib
from fmnist_jax import train as train_lib
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.errors import ConfigError
from fmnist_jax.models import layers

# name -> (config file, fields that differ from it): the seeds' models at their batch sizes, and
# the resnet (no seed has one).
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {}),
    "mlp_128_64": ("mlp", {"model.hidden": (128, 64), "model.use_batch_norm": False,
                           "model.dropout": 0.0, "batch_size": 64}),
    "cnn": ("cnn", {}),
    "cnn_deep": ("cnn_deep", {}),
    "cnn_s003": ("cnn", {"model.conv_features": (32, 32), "model.padding": "VALID",
                         "model.use_batch_norm": False, "model.dense_features": (100,),
                         "model.dropout": 0.0, "batch_size": 256}),
    "lstm": ("lstm", {}),
    "resnet": ("resnet", {}),
}

@dataclasses.dataclass(frozen=True)
class Settings:
    """What every measurement shares."""

    train_images: int = 6400  # per member and epoch, rounded down to whole batches
    min_epochs: int = 3
    min_seconds: float = 2.0
    batch_size: int = 0  # 0: each model's own
    eval_repeats: int = 3  # timed evaluations of the test split (best kept); 0: not timed
    overrides: tuple[str, ...] = ()  # "field=value" for every model's config


def case_config(case: str, seeds: int, mode: str, settings: Settings) -> ml_collections.ConfigDict:
    """The config a run of `case` would use, with the benchmark's overrides."""
    if case not in CASES:
        raise ConfigError(f"unknown model {case!r}; valid: {', '.join(CASES)}")
    base, fields = CASES[case]
    config = config_lib.model_config(base)
    for field, value in fields.items():
        config_lib.set_field(config, field, value)
    for item in settings.overrides:
        field, _, text = item.partition("=")
        config_lib.apply_override(config, field, text)
    if settings.batch_size:
        config.batch_size = settings.batch_size
    config.num_seeds, config.epoch_mode = seeds, mode
    config.data.train_limit = max(settings.train_images // config.batch_size, 1) * config.batch_size
    config_lib.validate(config)
    return config


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _implementations(model_config: ml_collections.ConfigDict) -> dict[str, str]:
    """The conv and pool implementations a CNN trains and evaluates with ('auto' resolved)."""
    if "conv_impl" not in model_config:
        return {}
    conv, pool = model_config.conv_impl, model_config.pool_impl
    return {"conv_impl_train": layers.resolve_conv_impl(conv, train=True),
            "conv_impl_eval": layers.resolve_conv_impl(conv, train=False),
            "pool_impl": layers.resolve_pool_impl(pool)}


def _trainer(config: ml_collections.ConfigDict) -> tuple[run.Trainer, Any, data.Dataset]:
    """The run's Trainer, its initial states on the devices, and the dataset."""
    layout = sharding.make_layout("", config.num_seeds)
    layout.check(config.batch_size, config.num_seeds)
    dataset = data.load_for_config(config)
    parts = components.build(config, len(dataset.train))
    states = layout.put_members(components.initial_states(config, parts))
    return run.Trainer(config, None, dataset, parts, True, layout), states, dataset


def measure(case: str, seeds: int, mode: str, settings: Settings) -> dict[str, Any]:
    """One model's speed with `seeds` members in epoch `mode`, in this process."""
    config = case_config(case, seeds, mode, settings)
    trainer, states, dataset = _trainer(config)
    acc = train_lib.init_accumulator(seeds)
    trainer.compile(states, acc)
    on_devices = trainer.layout.put_members((states, acc))
    span_args = (*on_devices, trainer.images, trainer.labels, trainer.permutations(0), 0, 0,
                 trainer.keys["dropout"])
    images_per_step = config.batch_size * seeds
    traced = trainer.span.trace(*span_args, length=1)  # traced once: counted, then lowered
    flops = flops_lib.jaxpr_flops(traced.jaxpr.jaxpr) / images_per_step
    xla = flops_lib.xla_flops(traced.lower())  # no second compile
    peak = flops_lib.device_peak(config.compute_dtype)

    def epoch(index: int) -> None:
        nonlocal states
        states = jax.block_until_ready(trainer.run_epoch(
            states, train_lib.init_accumulator(seeds), run.Position(index), run.Interrupt(),
            None)[0])

    epoch(0)  # warm-up: first use of every buffer
    seconds: list[float] = []
    while len(seconds) < settings.min_epochs or sum(seconds) < settings.min_seconds:
        seconds.append(_timed(lambda: epoch(len(seconds) + 1)))
    test = dataset.test
    images, labels = trainer.layout.put_host(test.images), trainer.layout.put_host(test.labels)
    evaluate = lambda: trainer.evaluate(states.params, states.batch_stats, images, labels)
    eval_compile = _timed(evaluate) if settings.eval_repeats else None
    eval_seconds = min((_timed(evaluate) for _ in range(settings.eval_repeats)), default=None)
    images_per_epoch = trainer.steps_per_epoch * config.batch_size * seeds
    train_ips = images_per_epoch / statistics.median(seconds)
    memory = jax.local_devices()[0].memory_stats() or {}
    return {
        "model": case, "seeds": seeds, "mode": trainer.mode, "batch_size": config.batch_size,
        **_implementations(config.model), "steps_per_epoch": trainer.steps_per_epoch,
        "compile_seconds": trainer.compile_seconds, "eval_compile_seconds": eval_compile,
        "epoch_seconds": statistics.median(seconds), "epoch_seconds_all": seconds,
        "train_images_per_second": train_ips,
        "train_images_per_second_best": images_per_epoch / min(seconds),
        "eval_images_per_second": eval_seconds and len(test) * seeds / eval_seconds,
        "flops_per_image": flops, "gflops_per_second": flops * train_ips / 1e9,
        "flops_source": "jaxpr: 2 x multiply-adds of matrix products and convolutions",
        "xla_flops_per_image": xla and xla / images_per_step,  # cost analysis; None on some
        "eval_flops_per_image": flops_lib.forward_flops_per_image(trainer.parts.model),
        "fraction_of_peak": flops * train_ips / peak.flops_per_second,
        "peak_tflops": peak.flops_per_second / 1e12, "peak_precision": peak.precision,
        "peak_source": peak.source, "compute_dtype": config.compute_dtype,
        "member_strategy": train_lib.resolve_member_strategy(config.member_strategy, seeds),
        "peak_host_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mib": memory.get("peak_bytes_in_use", 0) / 2**20 or None,
        "device": workdir_lib.device_description(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
    }


def measure_in_subprocess(case: str, seeds: int, mode: str, settings: Settings,
                          timeout: float | None = None) -> dict[str, Any]:
    """`measure` in a fresh Python process: its own peak memory, nothing carried over from the last.

    A plain subprocess (`python -m fmnist_jax.benchmark`) rather than a multiprocessing pool:
    nothing to pickle, no pool left behind, the child's errors reach the terminal, and its result
    comes back as one JSON line. Past `timeout` seconds the child is killed and
    `subprocess.TimeoutExpired` raised.
    """
    request = json.dumps([case, seeds, mode, dataclasses.asdict(settings)])
    done = subprocess.run([sys.executable, "-m", "fmnist_jax.benchmark", request], check=False,
                          stdout=subprocess.PIPE, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"measuring {case} with {seeds} seed(s) failed (exit {done.returncode})")
    return json.loads(done.stdout.splitlines()[-1])


def run_all(cases: Sequence[str], seeds: Sequence[int], modes: Sequence[str],
            settings: Settings) -> Iterable[dict[str, Any]]:
    """Every case with every seed count and mode, one result at a time."""
    for case in cases:
        for mode in modes:
            for n in seeds:
                yield measure_in_subprocess(case, n, mode, settings)


def format_rate(images_per_second: float | None) -> str:
    return f"{images_per_second:,.0f}" if images_per_second else "-"


def table(results: Sequence[dict[str, Any]]) -> str:
    """The results as a fixed-width table: what was measured here, and nothing else."""
    head = ("model", "batch", "seeds", "members", "dtype", "compile s", "train img/s",
            "eval img/s", "MFLOP/img", "GFLOP/s", "% of peak", "peak MiB")
    rows = [head]
    for r in results:
        rows.append((
            r["model"], str(r["batch_size"]), str(r["seeds"]), r["member_strategy"],
            r["compute_dtype"], f"{r['compile_seconds']:.1f}",
            f"{r['train_images_per_second']:,.0f}", format_rate(r["eval_images_per_second"]),
            f"{r['flops_per_image'] / 1e6:.1f}", f"{r['gflops_per_second']:.1f}",
            f"{100 * r['fraction_of_peak']:.1f}",
            f"{r['peak_host_mib']:,.0f}" + (f" / {r['peak_device_mib']:,.0f} dev"
                                            if r["peak_device_mib"] else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append("MFLOP/img: training FLOPs per image (2 x multiply-adds of matrix products and "
                 "convolutions, counted from the step's jaxpr); % of peak: of " +
                 "; ".join(sorted({f"{r['peak_tflops']:.3g} TFLOP/s ({r['peak_precision']}; "
                                   f"{r['peak_source']})" for r in results})))
    return "\n".join(lines)


def seed_scaling(results: Sequence[dict[str, Any]]) -> str:
    """Per model and mode: epoch time with N seeds against N separate runs, time(N) / (N time(1))."""
    single = {(r["model"], r["mode"]): r["epoch_seconds"] for r in results if r["seeds"] == 1}
    lines = ["model      | mode | seeds | epoch s | train img/s | time(N) / (N x time(1))"]
    for r in results:
        base = single.get((r["model"], r["mode"]))
        ratio = f"{r['epoch_seconds'] / (r['seeds'] * base):.3f}" if base else "-"
        lines.append(f"{r['model']:<10} | {r['mode']:<4} | {r['seeds']:>5} | "
                     f"{r['epoch_seconds']:>7.2f} | {r['train_images_per_second']:>11,.0f} | "
                     f"{ratio}")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True)


if __name__ == "__main__":  # one measurement, for measure_in_subprocess
    _case, _seeds, _mode, _settings = json.loads(sys.argv[1])
    _settings["overrides"] = tuple(_settings["overrides"])
    print(to_json(measure(_case, _seeds, _mode, Settings(**_settings))), flush=True)
