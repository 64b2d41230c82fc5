"""Evaluates a trained workdir on a split: metrics.json, predictions.csv, figures and report.md.

  python scripts/evaluate.py --workdir=checkpoints/cnn-20250101-120000
  python scripts/evaluate.py --workdir=DIR --split=val --checkpoint=latest --output-dir=OUT

Everything is rebuilt from what the workdir stored. With several seeds, the predictor is their
ensemble (the average of the members' class probabilities), and each member is reported as well.
Of a sweep (train.py --sweep), the members of one setting are evaluated: the best on validation
unless --setting says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmnist_jax import cli  # noqa: E402  pylint: disable=wrong-import-position


def main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a folder scripts/train.py wrote")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the test set, or the validation set training used (default test)")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="each member's best-by-validation weights, or the latest ones "
                             "(the moving average of the weights when the run kept one)")
    parser.add_argument("--output-dir", help="where to write (default WORKDIR/eval-SPLIT)")
    parser.add_argument("--setting", type=int, metavar="K",
                        help="of a sweep: evaluate the members of setting K (see its sweep.md); "
                             "default the best setting, chosen on the validation split")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    from fmnist_jax import evaluation, report  # pylint: disable=import-outside-toplevel
    restored = evaluation.for_setting(evaluation.load_workdir(args.workdir, args.checkpoint),
                                      args.setting)
    result = evaluation.evaluate(restored, args.split)
    summary = evaluation.summarize(result)
    out = Path(args.output_dir or evaluation.default_output_dir(args.workdir, args.split))
    written = evaluation.write_outputs(result, summary, out)
    print(report.headline(summary))
    print(report.per_class_table(summary))
    print(f"wrote {len(written)} files to {out} in {time.perf_counter() - start:.1f}s "
          f"(prediction {summary['evaluation']['seconds']:.2f}s, "
          f"{summary['evaluation']['images_per_second']:,.0f} images/s)")


if __name__ == "__main__":
    cli.main_guard(main)
