"""Releases a finished training run: its best weights in a small workdir that evaluate.py and
predict.py read as they read the run itself (see fmnist_jax/release.py).

  python scripts/export.py --workdir=checkpoints/cnn-20250101-120000 --out=checkpoints/pretrained/cnn
  python scripts/export.py --workdir=RUN --out=DIR --seed=2   # one member of a multi-seed run
  python scripts/export.py --workdir=DIR --portable-only        # add model.jaxexport, model.onnx
  python scripts/export.py --workdir=RUN --out=checkpoints/pretrained/cnn --overwrite  # replace it
  python scripts/export.py --workdir=RUN --out=DIR --tta      # predicts on image and mirror
  python scripts/export.py --workdir=RUN --out=DIR --calibrated   # temperature fitted on validation

Of a sweep (train.py --sweep), one member is released: the best setting's (chosen on validation)
best member, or its member of --seed, or the best member of --setting=K, or any --member=K.
"""

from __future__ import annotations

from fmnist_jax import cli


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--workdir", required=True, help="a finished run of scripts/train.py")
    parser.add_argument("--out", help="the release folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the release in --out (only a release, never another folder)")
    parser.add_argument("--portable-only", action="store_true",
                        help="write only the portable model (model.jaxexport, model.json, and "
                             "model.onnx with the [onnx] extra) into --workdir, a run or a "
                             "release, instead of a release")
    cli.add_tta_flag(parser, "as the run did; the release records it and its test accuracy")
    parser.add_argument("--calibrated", action="store_true",
                        help="divide the model's logits by a temperature fitted on the validation "
                             "split, so that its probabilities match its accuracy (recorded in "
                             "release.json and model.json)")
    cli.add_member_flags(parser, "all members; of a sweep, the best setting's best member")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    if (args.out is None) != args.portable_only:
        parser.error("give either --out=DIR (a release) or --portable-only")
    choice = cli.member_choice(parser, args)
    cli.refuse_together(parser, args, "--portable-only",
                        [*cli.MEMBER_FLAGS, "overwrite", "tta"],
                        "it exports the model of --workdir as it is, into --workdir")
    from fmnist_jax import release  # pylint: disable=import-outside-toplevel
    if args.portable_only:
        paths = release.write_portable(args.workdir)
        print(f"wrote {', '.join(str(p) for p in paths)}: "
              f"{sum(p.stat().st_size for p in paths) / 2**20:.1f} MiB")
        return
    record = release.export(args.workdir, args.out, command=cli.command_line(),
                            overwrite=args.overwrite, tta=args.tta, calibrated=args.calibrated,
                            **choice)
    accuracy = ", ".join(f"{a:.2%}" for a in record["test_accuracy"])
    tta = " with flip TTA" if record["tta"] else ""
    if record["calibrated"]:
        tta += f", calibrated (temperature {record['temperature']:.4f})"
    print(f"released {record['model']} (seeds {record['seeds']}, test accuracy {accuracy}{tta}) to "
          f"{args.out}: {release.size_bytes(args.out) / 2**20:.1f} MiB")

