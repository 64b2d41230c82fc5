"""Evaluates a trained workdir on a split: metrics.json, predictions.csv, figures and report.md.

  python scripts/evaluate.py --workdir=checkpoints/cnn-20250101-120000
  python scripts/evaluate.py --workdir=DIR --split=val --checkpoint=latest --output-dir=OUT
  python scripts/evaluate.py --workdir=A --workdir=B --output-dir=OUT [--ensemble-weights=val]
  python scripts/evaluate.py --workdir=checkpoints/pretrained/cnn --tta   # image and mirror

Everything is rebuilt from what the workdir stored. With several seeds, the predictor is their
ensemble (the average of the members' class probabilities), and each member is reported as well.
With several workdirs, the predictor averages their probabilities (equal weights, or weights
fitted on the validation split), and each part is reported beside it. One workdir's evaluation
explains its predictions too (Grad-CAM, integrated gradients and their sanity checks) and
calibrates them: a temperature fitted on the validation split, the ECE and log loss before and after
it, a reliability diagram and an accuracy-coverage curve (`export.py --calibrated` ships it).
Of a sweep (train.py --sweep), the members of one setting are evaluated: the best on validation
unless --setting says otherwise; --seed or --member evaluates one member alone. The explanations
and the embedding map are of the first member evaluated.
"""

from __future__ import annotations

import time
from pathlib import Path

from fmnist_jax import cli
from fmnist_jax.errors import UserError


def evaluate_one(args, out: Path, choice: dict) -> tuple[dict, list[Path]]:
    """One workdir's members of `choice` (`restore.select`): their metrics, files, figures,
    embedding map and explanations."""
    # pylint: disable-next=import-outside-toplevel
    from fmnist_jax import calibration, evaluation, explain, locking, restore, similar
    restored = restore.select(restore.load_workdir(
        args.workdir[0], args.checkpoint, args.data_dir, args.tta), **choice)
    result = evaluation.evaluate(restored, args.split)
    summary = evaluation.summarize(result)
    with locking.exclusive(out):  # one evaluation at a time writes `out`
        title = f"Penultimate-layer embedding, {restored.meta['model']}, {args.split} split (PCA)"
        figures = [similar.embedding_map(restored, result.images, result.labels, title, out)]
        if not args.no_calibration:
            summary["calibration"], figure = calibration.of_evaluation(result, out)
            figures.append(figure)
        if not args.no_explain:
            summary["explanations"], explained = explain.explain_evaluation(result, out)
            figures += explained
        return summary, evaluation.write_outputs(result, summary, out, figures)


def evaluate_ensemble(args, out: Path) -> tuple[dict, list[Path]]:
    """Several workdirs: their averaged probabilities, each part printed beside the whole."""
    from fmnist_jax import ensemble, locking, report  # pylint: disable=import-outside-toplevel
    parts, summary, probabilities = ensemble.evaluate_ensemble(
        args.workdir, args.split, args.checkpoint, args.ensemble_weights, args.data_dir, args.tta)
    for part in summary["parts"]:
        print(f"  part (weight {part['weight']:.3f}): {report.headline(part)}")
    with locking.exclusive(out):
        return summary, ensemble.write_outputs(parts, summary, probabilities, out)


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
    parser.add_argument("--output-dir", type=cli.output_dir,
                        help="where to write (default WORKDIR/eval-SPLIT; required with several "
                             "workdirs)")
    parser.add_argument("--ensemble-weights", choices=("equal", "val"), default="equal",
                        help="with several workdirs: equal weights, or weights fitted on the "
                             "validation split (which the workdirs must share)")
    parser.add_argument("--no-explain", action="store_true",
                        help="skip the explanations (Grad-CAM, integrated gradients and their "
                             "sanity checks on a few hundred images)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="skip the calibration (temperature scaling fitted on the validation "
                             "split, ECE and log loss before and after, reliability diagram, "
                             "accuracy-coverage curve)")
    cli.add_member_flags(parser, "all members; of a sweep, the best setting's")
    cli.add_data_flag(parser)
    cli.add_tta_flag(parser, "as the run or release recorded, config.tta")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    choice = cli.member_choice(parser, args)
    given = [f"--{flag}" for flag, value in choice.items() if value is not None]
    if len(args.workdir) > 1 and given:
        parser.error(f"{', '.join(given)} picks members of one --workdir; an ensemble of several "
                     f"takes all members of each (of a sweep, its best setting's)")
    if len(args.workdir) == 1 and args.ensemble_weights != "equal":
        parser.error("--ensemble-weights weighs several --workdir; give two or more")
    start = time.perf_counter()
    # pylint: disable-next=import-outside-toplevel
    from fmnist_jax import evaluation, report
    if len(args.workdir) > 1 and not args.output_dir:
        raise UserError("several --workdir make an ensemble: give --output-dir=DIR for it")
    out = Path(args.output_dir or evaluation.default_output_dir(args.workdir[0], args.split))
    summary, written = (evaluate_ensemble(args, out) if len(args.workdir) > 1
                        else evaluate_one(args, out, choice))
    print(report.headline(summary))
    print(report.per_class_table(summary))
    print(f"wrote {len(written)} files to {out} in {time.perf_counter() - start:.1f}s "
          f"(prediction {summary['evaluation']['seconds']:.2f}s, "
          f"{summary['evaluation']['images_per_second']:,.0f} images/s)")

