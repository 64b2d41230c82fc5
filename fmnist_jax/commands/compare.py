"""Compares evaluated workdirs: one table of the models, per-class F1 side by side, a bar chart.

  python scripts/evaluate.py --workdir=runs/mlp   # once per workdir
  python scripts/compare.py runs/mlp runs/cnn runs/cnn_deep runs/lstm --output=compare.md
  python scripts/compare.py runs/mlp /elsewhere/cnn-eval   # a folder of evaluate.py --output-dir

Each DIR is an evaluated workdir (its eval-SPLIT/ is read) or an evaluation folder itself (the
--output-dir of evaluate.py, wherever it is; its own split is used).

Writes OUTPUT (markdown), OUTPUT with .json (the same numbers for programs) and OUTPUT_f1.png.
A workdir trained with several seeds shows each number as the members' mean ± std.
"""

from __future__ import annotations

from pathlib import Path

from fmnist_jax import cli


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a workdir evaluated with scripts/evaluate.py, or an evaluation folder "
                             "(evaluate.py --output-dir): any folder holding its metrics.json")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="which evaluation of a workdir to compare: its eval-SPLIT/ (default "
                             "test); an evaluation folder is compared as it is")
    parser.add_argument("--output", default="compare.md", help="markdown file (default compare.md)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    from fmnist_jax import evaluation  # pylint: disable=import-outside-toplevel
    print(evaluation.write_comparison(args.dirs, Path(args.output), args.split))
    print(f"wrote {args.output}")

