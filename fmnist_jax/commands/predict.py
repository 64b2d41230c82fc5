"""Classifies image files (PNG, JPEG, ...; any size, colour or grey) with a trained workdir.

  python scripts/predict.py --workdir=DIR shirt.png boot.jpg
  python scripts/predict.py --workdir=DIR --json photos/*.jpg
  python scripts/predict.py --workdir=DIR --explain=heatmaps shirt.png   # why: heat maps

Each picture is made into a 28x28 grayscale image the way Fashion-MNIST was made (trimmed, resized,
centred; a dark garment on a light background is negated). A file that cannot be read gets an error
line and the others are still classified; the exit status is then 2 (bad input).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fmnist_jax import cli
from fmnist_jax.errors import UserError


def format_result(result: dict) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    top = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in result["top"])
    return f"{result['file']}: {top}"


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--workdir", required=True, help="a folder scripts/train.py wrote")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="each member's best-by-validation weights, or the latest ones "
                             "(the moving average of the weights when the run kept one)")
    cli.add_tta_flag(parser, "as the run or release recorded, config.tta")
    parser.add_argument("--top", type=int, default=3, help="classes to show per file (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of the results")
    parser.add_argument("--explain", metavar="DIR",
                        help="also write heat maps (Grad-CAM for convolutional models, integrated "
                             "gradients for all) of the predicted and runner-up classes to DIR")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    # pylint: disable-next=import-outside-toplevel
    from fmnist_jax import evaluation, explain, images
    restored = evaluation.for_setting(
        evaluation.load_workdir(args.workdir, args.checkpoint, tta=args.tta))
    results = images.classify(restored, args.images, args.top)
    if args.explain:
        for figure in explain.explain_files(restored, args.images, Path(args.explain)):
            print(f"wrote {figure}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(format_result(result), file=sys.stderr if "error" in result else sys.stdout)
    if any("error" in r for r in results):
        sys.exit(UserError.exit_code)

