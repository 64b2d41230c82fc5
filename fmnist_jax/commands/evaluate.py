"""Evaluates a trained workdir on a split: metrics.json, predictions.csv, figures and report.md.

  python scripts/evaluate.py --workdir=checkpoints/cnn-20250101-120000
  python scripts/evaluate.py --workdir=DIR --split=val --checkpoint=latest --output-dir=OUT
  python scripts/evaluate.py --workdir=A --workdir=B --output-dir=OUT [--ensemble-weights=val]
  python scripts/evaluate.py --workdir=checkpoints/pretrained/cnn --tta   # image and mirror

Everything is rebuilt from what the workdir stored. With several seeds, the predictor is their
ensemble (the average of the members' class probabilities), and each member is reported as well.
With several workdirs, the predictor averages their probabilities (equal weights, or weights
fitted on the validation split), and each part is reported beside it. One workdir's evaluation
explains its predictions too (Grad-CAM, integrated gradients and their sanity checks).
Of a sweep (train.py --sweep), the members of one setting are evaluated: the best on validation
unless --setting says otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

from fmnist_jax import cli
from fmnist_jax.errors import UserError


def evaluate_one(args) -> tuple[dict, list[Path], Path]:
    """One workdir: its metrics, files, figures, embedding map and explanations."""
    # pylint: disable-next=import-outside-toplevel
    from fmnist_jax import evaluation, explain, similar
    restored = evaluation.for_setting(evaluation.load_workdir(
        args.workdir[0], args.checkpoint, args.data_dir, args.tta), args.setting)
    result = evaluation.evaluate(restored, args.split)
    summary = evaluation.summarize(result)
    out = Path(args.output_dir or evaluation.default_output_dir(args.workdir[0], args.split))
    figures = [similar.embedding_map(
        restored, result.images, result.labels,
        f"Penultimate-layer embedding, {restored.meta['model']}, {args.split} split (PCA)", out)]
    if not args.no_explain:
        summary["explanations"], explained = explain.explain_evaluation(result, out)
        figures += explained
    return summary, evaluation.write_outputs(result, summary, out, figures), out


def evaluate_ensemble(args) -> tuple[dict, list[Path], Path]:
    """Several workdirs: their averaged probabilities, each part printed beside the whole."""
    from fmnist_jax import ensemble, report  # pylint: disable=import-outside-toplevel
    if not args.output_dir:
        raise UserError("several --workdir make an ensemble: give --output-dir=DIR for it")
    out = Path(args.output_dir)
    parts, summary, probabilities = ensemble.evaluate_ensemble(
        args.workdir, args.split, args.checkpoint, args.ensemble_weights, args.data_dir, args.tta)
    for part in summary["parts"]:
        print(f"  part (weight {part['weight']:.3f}): {report.headline(part)}")
    return summary, ensemble.write_outputs(parts, summary, probabilities, out), out


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--workdir", required=True, action="append",
                        help="a folder scripts/train.py wrote (or a release); repeat it to "
                             "evaluate the ensemble of several")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the test set, or the validation set training used (default test)")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="each member's best-by-validation weights, or the latest ones "
                             "(the moving average of the weights when the run kept one)")
    parser.add_argument("--output-dir", help="where to write (default WORKDIR/eval-SPLIT; "
                                             "required with several workdirs)")
    parser.add_argument("--ensemble-weights", choices=("equal", "val"), default="equal",
                        help="with several workdirs: equal weights, or weights fitted on the "
                             "validation split (which the workdirs must share)")
    parser.add_argument("--no-explain", action="store_true",
                        help="skip the explanations (Grad-CAM, integrated gradients and their "
                             "sanity checks on a few hundred images)")
    parser.add_argument("--setting", type=int, metavar="K",
                        help="of a sweep: evaluate the members of setting K (see its sweep.md); "
                             "default the best setting, chosen on the validation split")
    cli.add_data_flag(parser)
    cli.add_tta_flag(parser, "as the run or release recorded, config.tta")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    from fmnist_jax import report  # pylint: disable=import-outside-toplevel
    summary, written, out = (evaluate_ensemble if len(args.workdir) > 1 else evaluate_one)(args)
    print(report.headline(summary))
    print(report.per_class_table(summary))
    print(f"wrote {len(written)} files to {out} in {time.perf_counter() - start:.1f}s "
          f"(prediction {summary['evaluation']['seconds']:.2f}s, "
          f"{summary['evaluation']['images_per_second']:,.0f} images/s)")

