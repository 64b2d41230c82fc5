r"""Trains a model on Fashion-MNIST; run again with the same --workdir to resume.

  python scripts/train.py --model=cnn --epochs=2
  python scripts/train.py --model=cnn --seeds=8 --mesh=seeds:8   # one member per device
  python scripts/train.py --config=configs/cnn_deep.py --config.optimizer.learning_rate=3e-3

Sweeps: every combination of the --sweep values, times --seeds, trains as the members of one run
(one compiled program, one copy of the data); the best setting is chosen on the validation split,
and summary.json, sweep.md and sweep.png give each setting's mean ± std over its seeds:

  python scripts/train.py --model=cnn --config.optimizer.name=adamw --seeds=3 \
      --sweep=optimizer.learning_rate=1e-3,2e-3,4e-3 --sweep=optimizer.weight_decay=0,1e-4
"""

from __future__ import annotations

from fmnist_jax import cli, sweep


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    cli.add_config_flags(parser)
    parser.add_argument("--workdir", help="run folder (default: checkpoints/<model>-<timestamp> "
                                          "in the current folder); an existing one is resumed")
    parser.add_argument("--quiet", action="store_true", help="print only the final result")
    parser.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="train every value of FIELD as members of this run (repeat for a "
                             "grid); FIELD is one of: " + ", ".join(sweep.VARIABLE))
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    cli.add_device_flags(parser)
    args, rest = parser.parse_known_args(argv)
    config = cli.resolve_config(parser, args, rest)
    if args.sweep:
        sweep.apply(config, args.sweep)
    if args.distributed and not args.workdir:
        parser.error("--distributed needs --workdir: the same folder for every process, on a "
                     "file system they all see")
    cli.start_devices(args)
    from fmnist_jax import run  # pylint: disable=import-outside-toplevel  # keeps --help fast
    workdir = args.workdir or cli.default_workdir(config.model.name)
    run.train_and_evaluate(config, workdir, quiet=args.quiet, command=cli.command_line(),
                           mesh=args.mesh)

