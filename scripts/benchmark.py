"""Training and evaluation speed of every model on this machine: a table, or JSON lines.

  python scripts/benchmark.py                                  # every model, one seed
  python scripts/benchmark.py --models=cnn,cnn_deep --modes=loop,scan --json
  python scripts/benchmark.py --seeds=1,4,8,16 --train-images=1024   # multi-seed scaling
  python scripts/benchmark.py --models=cnn --config.model.conv_impl=matmul

Per model: compile time, steady-state train images/s (median epoch), evaluation images/s over
the 10,000 test images, FLOPs per image from XLA's cost analysis and the GFLOP/s that makes, peak
host memory (and device memory where the device reports it). Each measurement runs in a fresh
process, through the same Trainer and compiled span as scripts/train.py, on the first
--train-images training images (the speed is the steady state, so a slice suffices).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmnist_jax import benchmark, cli, data  # noqa: E402  pylint: disable=wrong-import-position


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--models", default=",".join(benchmark.CASES),
                        help=f"comma-separated, from {', '.join(benchmark.CASES)} (default all)")
    parser.add_argument("--seeds", type=_ints, default=[1],
                        help="member counts, e.g. 1,4,8,16: time per epoch and time(N)/(N time(1))")
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
    cases, modes = args.models.split(","), args.modes.split(",")
    # a bad name, field or data location fails now, not after minutes of measuring
    configs = [benchmark.case_config(case, 1, modes[0], settings) for case in cases]
    data.load_raw(configs[0].data.dir or None)
    tables = sys.stderr if args.json else sys.stdout
    results = []
    for result in benchmark.run_all(cases, args.seeds, modes, settings):
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
    if len(args.seeds) > 1:
        print("\n" + benchmark.seed_scaling(results), file=tables)


if __name__ == "__main__":
    cli.main_guard(main)
