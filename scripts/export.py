"""Releases a finished training run: its best weights in a small workdir that evaluate.py and
predict.py read as they read the run itself (see fmnist_jax/release.py).

  python scripts/export.py --workdir=checkpoints/cnn-20250101-120000 --out=checkpoints/pretrained/cnn
  python scripts/export.py --workdir=RUN --out=DIR --seed=2   # one member of a multi-seed run

Of a sweep (train.py --sweep), one member is released: the best setting's (chosen on validation)
best member, or its member of --seed, or any --member=K.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmnist_jax import cli  # noqa: E402  pylint: disable=wrong-import-position


def main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished run of scripts/train.py")
    parser.add_argument("--out", required=True, help="the release folder (replaced if present)")
    parser.add_argument("--seed", type=int, help="release this member only (default: all)")
    parser.add_argument("--member", type=int, metavar="K",
                        help="release member K only (of a sweep: setting K // seeds, seed "
                             "SEED + K %% seeds)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    from fmnist_jax import release  # pylint: disable=import-outside-toplevel
    record = release.export(args.workdir, args.out, args.seed, cli.command_line(), args.member)
    accuracy = ", ".join(f"{a:.2%}" for a in record["test_accuracy"])
    print(f"released {record['model']} (seeds {record['seeds']}, test accuracy {accuracy}) to "
          f"{args.out}: {release.size_bytes(args.out) / 2**20:.1f} MiB")


if __name__ == "__main__":
    cli.main_guard(main)
