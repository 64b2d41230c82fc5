"""Finds the training images most similar to yours, in a trained model's penultimate layer.

  python scripts/similar.py --workdir=checkpoints/pretrained/cnn shirt.png boot.jpg -k 8
  python scripts/similar.py --workdir=DIR --precision-at-k     # how often neighbours share the class

Writes OUTPUT.png (each query, then its k nearest training images) and OUTPUT.json (their indices
in the training split, classes and cosine distances). The training split's embeddings are computed
once per checkpoint and member and cached in WORKDIR/eval-embeddings/. A multi-seed run or sweep is
searched through one member: the first of those --setting, --seed or --member choose.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fmnist_jax import cli
from fmnist_jax.errors import UserError


def main(argv) -> None:
    parser = cli.Parser(description=__doc__)
    parser.add_argument("--workdir", required=True, help="a folder scripts/train.py wrote")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    parser.add_argument("-k", type=cli.whole_number(1), default=8,
                        help="neighbours per image (default 8)")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="each member's best-by-validation weights, or the latest ones")
    parser.add_argument("--output", default="similar", type=cli.output_file,
                        help="OUTPUT.png and OUTPUT.json (default similar)")
    parser.add_argument("--precision-at-k", action="store_true",
                        help="also measure precision@k on the test split (share of the k "
                             "neighbours of each test image that share its class)")
    parser.add_argument("--cache-dir", type=cli.output_dir,
                        help="where the training embeddings are cached "
                             "(default WORKDIR/eval-embeddings)")
    cli.add_member_flags(parser, "the first member; of a sweep, the best setting's first")
    cli.add_data_flag(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    choice = cli.member_choice(parser, args)
    if not args.images and not args.precision_at_k:
        raise UserError("give image files to search for, or --precision-at-k")
    # pylint: disable-next=import-outside-toplevel
    from fmnist_jax import images, plots, restore, similar
    restored = restore.select(
        restore.load_workdir(args.workdir, args.checkpoint, args.data_dir), **choice)
    similar.check_k(restored, args.k)
    if args.images:
        queries = np.stack([images.load_image(p) for p in args.images])
        names = [Path(p).name for p in args.images]
        results, train, found = similar.search(restored, queries, names, args.k, args.cache_dir)
        titles = [[f"{n['class']}\n{n['cosine_distance']:.3f}" for n in r["neighbours"]]
                  for r in results]
        output = args.output
        output.parent.mkdir(parents=True, exist_ok=True)
        plots.save(plots.neighbours_figure(queries, names, train.images[found], titles),
                   output.with_suffix(".png"))
        output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        for r in results:
            print(f"{r['query']}: " + ", ".join(n["class"] for n in r["neighbours"]))
        print(f"wrote {output.with_suffix('.png')} and {output.with_suffix('.json')}")
    if args.precision_at_k:
        score = similar.precision_at_k_on_test(restored, args.k, args.cache_dir)
        print(f"precision@{args.k} on the test split: {score:.2%} of the neighbours share the "
              f"test image's class")

