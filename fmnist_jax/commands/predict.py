"""Classifies image files (PNG, JPEG, ...; any size, colour or grey) with a trained workdir.

  python scripts/predict.py --workdir=DIR shirt.png boot.jpg
  python scripts/predict.py --workdir=DIR --json photos/*.jpg
  python scripts/predict.py --workdir=DIR --explain=heatmaps shirt.png   # why: heat maps
  python scripts/predict.py --workdir=DIR --runtime=onnx shirt.png      # model.onnx, onnxruntime

Each picture is made into a 28x28 grayscale image the way Fashion-MNIST was made (trimmed, resized,
centred; a dark garment on a light background is negated). A file that cannot be read gets an error
line and the others are still classified; the exit status is then 2 (bad input). A release with an
out-of-distribution detector (ood.json, fmnist_jax/ood.py) also says of each picture whether it
looks like Fashion-MNIST at all (`in_distribution`, `ood_score`; null without one).
"""

from __future__ import annotations

import json
import sys

from fmnist_jax import cli, images
from fmnist_jax.errors import UserError


def format_result(result: dict) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    top = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in result["top"])
    warning = (f" (does not look like Fashion-MNIST: ood score {result['ood_score']:.2f})"
               if result["in_distribution"] is False else "")
    return f"{result['file']}: {top}{warning}"


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--workdir", required=True,
                        help="a folder scripts/train.py or export.py wrote (with --runtime=onnx "
                             "also a model.onnx file)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="each member's best-by-validation weights, or the latest ones "
                             "(the moving average of the weights when the run kept one)")
    cli.add_tta_flag(parser, "as the run or release recorded, config.tta")
    parser.add_argument("--top", type=cli.whole_number(1, images.MAX_TOP), default=3,
                        help=f"classes to show per file, 1 to {images.MAX_TOP} (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of the results")
    parser.add_argument("--explain", metavar="DIR", type=cli.output_dir,
                        help="also write heat maps (Grad-CAM for convolutional models, integrated "
                             "gradients for all) of the predicted and runner-up classes to DIR")
    cli.add_member_flags(parser, "all members; of a sweep, the best setting's")
    cli.add_runtime_flag(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    choice = cli.member_choice(parser, args)
    from fmnist_jax import ood  # pylint: disable=import-outside-toplevel
    detector = ood.load(args.workdir) if args.checkpoint == "best" else None
    if args.runtime != "jax":
        given = [flag for flag, given in (("--explain", args.explain is not None),
                                          ("--tta/--no-tta", args.tta is not None),
                                          ("--checkpoint=latest", args.checkpoint == "latest"),
                                          *((f"--{f}", v is not None) for f, v in choice.items()))
                 if given]
        if given:
            parser.error(f"{', '.join(given)} needs the jax runtime: --runtime={args.runtime} runs "
                         f"the exported model as released (best weights, its recorded tta)")
        from fmnist_jax import metrics, runtime  # pylint: disable=import-outside-toplevel
        model = runtime.load(args.workdir, args.runtime)
        results = images.classify(
            lambda x: metrics.check_finite(model.probabilities(x), args.workdir),
            model.class_names, args.images, args.top, detector)
    else:
        from fmnist_jax import explain, restore  # pylint: disable=import-outside-toplevel
        restored = restore.select(
            restore.load_workdir(args.workdir, args.checkpoint, tta=args.tta), **choice)
        results = images.classify(lambda x: restored.probabilities(x).mean(0),
                                  restored.class_names, args.images, args.top, detector)
        if args.explain:
            for figure in explain.explain_files(restored, args.images, args.explain):
                print(f"wrote {figure}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(format_result(result), file=sys.stderr if "error" in result else sys.stdout)
    if any("error" in r for r in results):
        sys.exit(UserError.exit_code)

