"""What the checkpoint checksums cost: time per save of the resnet's training state, with and
without them, and the hashing alone (see fmnist_jax/checkpointing.py).

  python benchmarks/checkpoint_checksums.py --repeats=5

Saves alternate between the two settings, so that a machine busy with other work slows both
alike. "returns" is the time `Checkpoints.save` blocks the training loop; "committed" runs until
the asynchronous write has committed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flax.serialization  # noqa: E402  pylint: disable=wrong-import-position
import jax  # noqa: E402  pylint: disable=wrong-import-position

from fmnist_jax import checkpointing, run  # noqa: E402  pylint: disable=wrong-import-position
from fmnist_jax import config as config_lib  # noqa: E402  pylint: disable=wrong-import-position

TRAIN_SIZE = 54_000  # the training split after the validation split


def _timed_save(ckpts: checkpointing.Checkpoints, step: int, states) -> tuple[float, float]:
    start = time.perf_counter()
    ckpts.save(step, states, {"step": step})
    returned = time.perf_counter() - start
    ckpts.wait()
    return returned, time.perf_counter() - start


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = config_lib.model_config(args.model)
    states = run.initial_states(config, run.build(config, TRAIN_SIZE))
    leaves = jax.tree.leaves(flax.serialization.to_state_dict(states))
    print(f"{args.model} training state: {len(leaves)} arrays, "
          f"{sum(x.nbytes for x in leaves) / 2**20:.1f} MiB; {jax.devices()[0].device_kind}")
    hashing = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        checkpointing.checksums(flax.serialization.to_state_dict(states))
        hashing.append(time.perf_counter() - start)
    print(f"checksums alone: {_median(hashing)}")
    with_sums = checkpointing.checksums
    times: dict[str, list[tuple[float, float]]] = {"with checksums": [], "without": []}
    with tempfile.TemporaryDirectory() as folder:
        with checkpointing.Checkpoints(folder, keep=2) as ckpts:
            _timed_save(ckpts, 0, states)  # orbax sets itself up on the first save
            for step in range(1, 2 * args.repeats + 1):
                label = "with checksums" if step % 2 else "without"
                checkpointing.checksums = with_sums if step % 2 else lambda tree: None
                times[label].append(_timed_save(ckpts, step, states))
    checkpointing.checksums = with_sums
    for label, pairs in times.items():
        print(f"save {label}: returns in {_median([p[0] for p in pairs])}, committed in "
              f"{_median([p[1] for p in pairs])} over {len(pairs)} saves")


if __name__ == "__main__":
    main()
