"""Training and evaluation speed of every model on this machine: a table, or JSON lines.

  python scripts/benchmark.py                                  # every model, one seed
  python scripts/benchmark.py --models=cnn,cnn_deep --modes=loop,scan --json
  python scripts/benchmark.py --seeds=1,4,8,16 --train-images=1024   # multi-seed scaling
  python scripts/benchmark.py --models=cnn --config.model.conv_impl=matmul
  python scripts/benchmark.py --suite=accelerator --out=DIR   # a GPU/TPU end to end, < 8 min

Per model: compile time, steady-state train images/s (median epoch), evaluation images/s over
the 10,000 test images, training FLOPs per image (2 x multiply-adds of matrix products and
convolutions, counted from the step's jaxpr: the same on every backend), the GFLOP/s that makes
and its fraction of the device's peak (a table of known accelerators; on a CPU a measured float32
matrix product), peak host memory (and device memory where the device reports it). Each
measurement runs in a fresh process, through the same Trainer and compiled span as
scripts/train.py, on the first --train-images training images (the speed is the steady state, so
a slice suffices). `--suite=accelerator` runs fmnist_jax/accelerator_check.py's steps (seed
scaling per candidate strategy, bfloat16, the tuned resnet's recipe, PyTorch on the same device)
inside --budget-seconds and writes DIR/accelerator_check.{json,md}.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from fmnist_jax import accelerator_check, benchmark, cli, data


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--models", default="",
                        help=f"comma-separated, from {', '.join(benchmark.CASES)} (default all; "
                             f"the suite: {', '.join(accelerator_check.MODELS)})")
    parser.add_argument("--seeds", type=_ints, default=[],
                        help="member counts, e.g. 1,4,8,16: time per epoch and time(N)/(N time(1)) "
                             "(default 1; the suite: 1,4,8)")
    parser.add_argument("--modes", default="auto",
                        help="epoch modes to measure: auto, loop, scan (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=0, help="every model's (default: its own)")
    parser.add_argument("--train-images", type=int, default=benchmark.Settings.train_images,
                        help="training images per member and epoch")
    parser.add_argument("--min-epochs", type=int, default=benchmark.Settings.min_epochs)
    parser.add_argument("--min-seconds", type=float, default=benchmark.Settings.min_seconds,
                        help="time at least this long per model, after a warm-up epoch")
    parser.add_argument("--eval-repeats", type=int, default=benchmark.Settings.eval_repeats,
                        help="timed evaluations of the 10,000 test images, the best kept "
                             "(0: evaluation not timed, e.g. for seed scaling)")
    cli.add_data_flag(parser, default="the usual search, see docs/data.md")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout; tables on stderr")
    parser.add_argument("--suite", choices=("models", "accelerator"), default="models",
                        help="models: the table of --models; accelerator: the end-to-end check")
    parser.add_argument("--out", default="", help="--suite=accelerator: folder of its report")
    parser.add_argument("--budget-seconds", type=float, default=450.0,
                        help="--suite=accelerator: the whole check ends within this")
    parser.add_argument("--recipe", default="configs/tuned/resnet.py",
                        help="--suite=accelerator: the config trained in full and timed")
    parser.add_argument("--recipe-args", default="",
                        help="--suite=accelerator: more scripts/train.py flags for the recipe")
    parser.add_argument("--steps", default=",".join(accelerator_check.STEP_SHARES),
                        help="--suite=accelerator: the steps to run, in order (comma-separated)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.eval_repeats < 0:
        parser.error(f"--eval-repeats={args.eval_repeats} must be 0 or more")
    overrides = tuple(a.removeprefix("--config.") for a in rest)
    overrides += (f"data.dir={args.data_dir}",) if args.data_dir else ()
    settings = benchmark.Settings(args.train_images, args.min_epochs, args.min_seconds,
                                  args.batch_size, args.eval_repeats, overrides)
    suite = args.suite == "accelerator"
    cases = args.models.split(",") if args.models else list(
        accelerator_check.MODELS if suite else benchmark.CASES)
    seeds = args.seeds or ([1, 4, 8] if suite else [1])
    modes = args.modes.split(",")
    # a bad name, field or data location fails now, not after minutes of measuring
    configs = [benchmark.case_config(case, 1, modes[0], settings) for case in cases]
    data.load_raw(configs[0].data.dir or None)
    if suite:
        if not args.out:
            parser.error("--suite=accelerator needs --out=DIR for its report")
        steps = args.steps.split(",")
        if set(steps) - set(accelerator_check.STEP_SHARES):
            parser.error(f"--steps: unknown {sorted(set(steps) - set(accelerator_check.STEP_SHARES))}; "
                         f"valid: {', '.join(accelerator_check.STEP_SHARES)}")
        check = accelerator_check.Check(Path(args.out), cases, seeds, settings,
                                        args.budget_seconds, args.recipe,
                                        shlex.split(args.recipe_args), steps)
        check.run()
        print(accelerator_check.markdown(check.report))
        return
    tables = sys.stderr if args.json else sys.stdout
    results = []
    for result in benchmark.run_all(cases, seeds, modes, settings):
        results.append(result)
        if args.json:
            print(benchmark.to_json(result), flush=True)
        print(f"{result['model']} ({result['seeds']} seed(s), {result['mode']}): "
              f"{result['train_images_per_second']:,.0f} train img/s, "
              f"{benchmark.format_rate(result['eval_images_per_second'])} eval img/s",
              file=sys.stderr, flush=True)
    print(f"\ndevice: {results[0]['device']} | jax {results[0]['jax']} | XLA_FLAGS="
          f"{results[0]['xla_flags'] or '(none)'}", file=tables)
    print(benchmark.table(results), file=tables)
    if len(seeds) > 1:
        print("\n" + benchmark.seed_scaling(results), file=tables)

