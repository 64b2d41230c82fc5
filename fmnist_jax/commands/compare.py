"""Compares evaluated workdirs: one table of the models with paired tests between them, per-class
F1 side by side, bar charts.

  python scripts/evaluate.py --workdir=runs/mlp   # once per workdir
  python scripts/compare.py runs/mlp runs/cnn runs/cnn_deep runs/lstm --output=compare.md
  python scripts/compare.py runs/mlp /elsewhere/cnn-eval   # a folder of evaluate.py --output-dir
  python scripts/compare.py runs/mlp runs/cnn runs/cnn_deep --baseline=previous   # row vs row above

Each DIR is an evaluated workdir (its eval-SPLIT/ is read) or an evaluation folder itself (the
--output-dir of evaluate.py, wherever it is; its own split is used).

Each model is compared with its baseline on the same images: the accuracy difference with a 95%
paired bootstrap interval and the exact McNemar p-value (Holm-corrected over the table); with
several seeds on both sides, over the seeds too (Welch's t, a bootstrap over seeds and images).
Writes OUTPUT (markdown), OUTPUT with .json (the same numbers for programs), OUTPUT_f1.png and
OUTPUT_differences.png. A workdir trained with several seeds shows each number as the members'
mean ± std.
"""

from __future__ import annotations


from fmnist_jax import cli


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a workdir evaluated with scripts/evaluate.py, or an evaluation folder "
                             "(evaluate.py --output-dir): any folder holding its metrics.json")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="which evaluation of a workdir to compare: its eval-SPLIT/ (default "
                             "test); an evaluation folder is compared as it is")
    parser.add_argument("--baseline", default="first", metavar="DIR|first|previous",
                        help="what each model is compared with, image by image: one of the DIRs, "
                             "the first (default), or previous (each row with the row above)")
    parser.add_argument("--output", default="compare.md", type=cli.output_file,
                        help="markdown file (default compare.md)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    from fmnist_jax import comparison  # pylint: disable=import-outside-toplevel
    print(comparison.write_comparison(args.dirs, args.output, args.split, args.baseline))
    print(f"wrote {args.output}")

