"""Chooses the out-of-distribution method by measurement (fmnist_jax/ood.py): for each release,
every method with and without the ink veto, its threshold fit on the validation split (95%
accepted), AUROC against each outlier set (the test split as the inliers) and the share of each
set accepted (false acceptance). Needs scikit-learn (the test extra).

  python benchmarks/ood_methods.py                       # the four shipped releases
  python benchmarks/ood_methods.py --workdir=checkpoints/pretrained/cnn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# pylint: disable-next=wrong-import-position
from fmnist_jax import evaluation, ood, restore  # noqa: E402

RELEASES = [str(ROOT / "checkpoints" / "pretrained" / m)
            for m in ("mlp", "cnn", "cnn_deep", "lstm")]


def auroc(detector: ood.Detector, inliers: dict, outliers: dict) -> float:
    scores = np.concatenate([detector.ranking(inliers), detector.ranking(outliers)])
    scores = np.minimum(scores, np.finfo(np.float64).max)  # a veto ranks above every score
    truth = np.r_[np.zeros(len(inliers["ink"])), np.ones(len(outliers["ink"]))]
    return float(roc_auc_score(truth, scores))


def measure(workdir: str) -> list[str]:
    """Markdown rows: per method and veto, validation acceptance, AUROC against the digits, and
    the share accepted of each outlier set."""
    restored = restore.select(restore.load_workdir(workdir))
    function, base, val = ood.fit(restored)
    test = evaluation.load_split(restored.config, "test").images
    inliers = ood.as_dict(ood.run_chunked(function, test))
    sets = {name: ood.as_dict(ood.run_chunked(function, x))
            for name, x in ood.outlier_sets(test).items()}
    rows = []
    for method in ood.METHODS:
        for veto in (False, True):
            detector = ood.Detector(function, ood.calibrate(function, base, val, method, veto))
            accepted = [np.mean([f["in_distribution"] for f in detector.flag(
                np.stack([c[k] for k in ood.COMPONENTS], -1))]) for c in sets.values()]
            chosen = " (chosen)" if (method, veto) == (ood.METHOD, ood.VETO) else ""
            rows.append(f"| {restored.meta['model']} | {method}{' + ink veto' if veto else ''}"
                        f"{chosen} | {detector.parameters['validation_accepted']:.1%} | "
                        f"{auroc(detector, inliers, sets['digits']):.3f} | "
                        + " | ".join(f"{a:.1%}" for a in accepted) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", action="append", help="a release or workdir (repeatable)")
    args = parser.parse_args()
    print("| model | method | validation accepted | AUROC vs digits | accepted: digits | blank | "
          "noise | inverted | photo crops |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for workdir in args.workdir or RELEASES:
        print("\n".join(measure(workdir)), flush=True)


if __name__ == "__main__":
    main()
