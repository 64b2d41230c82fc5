"""PyTorch's speed on this machine for the benchmark's models: the reference of issue 5, measured here.

Not part of fmnist-jax (which never imports PyTorch): it runs in an environment of its own,
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python benchmarks/pytorch_reference.py [--models=cnn,lstm] [--threads=2]
and prints, per model, train and evaluation images/s in the steady state (synthetic images of the
right shape: the speed does not depend on their values), the same architectures and batch sizes as
`scripts/benchmark.py`'s cases, Adam, cross-entropy, eager mode as the seed projects ran it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


def mlp(hidden, batch_norm: bool, dropout: float) -> nn.Module:
    layers, width = [nn.Flatten()], 784
    for features in hidden:
        layers += [nn.Linear(width, features)]
        layers += [nn.BatchNorm1d(features)] if batch_norm else []
        layers += [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = features
    return nn.Sequential(*layers, nn.Linear(width, 10))


def cnn(convs, padding: int, batch_norm: bool, conv_dropout: float, dense, dropout: float,
        size: int = 28) -> nn.Module:
    layers, channels = [], 1
    for features in convs:
        layers += [nn.Conv2d(channels, features, 3, padding=padding), nn.ReLU()]
        layers += [nn.BatchNorm2d(features)] if batch_norm else []
        layers += [nn.MaxPool2d(2)] + ([nn.Dropout(conv_dropout)] if conv_dropout else [])
        channels, size = features, (size + 2 * padding - 2) // 2
    layers += [nn.Flatten()]
    width = channels * size * size
    for features in dense:
        layers += [nn.Linear(width, features), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = features
    return nn.Sequential(*layers, nn.Linear(width, 10))


class RowLSTM(nn.Module):
    """The 28 rows as timesteps of 28 pixels, one LSTM of 128 units, a dense layer on the last."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(28, 128, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        out, _ = self.lstm(x.reshape(x.shape[0], 28, 28))
        return self.head(out[:, -1])


# name: (model, batch size), as scripts/benchmark.py's CASES
CASES = {
    "mlp": (lambda: mlp((512, 256, 128), True, 0.3), 128),
    "mlp_128_64": (lambda: mlp((128, 64), False, 0.0), 64),
    "cnn": (lambda: cnn((32, 64), 1, True, 0.0, (128, 64), 0.4), 64),
    "cnn_deep": (lambda: cnn((32, 64, 128), 1, True, 0.1, (256,), 0.3), 128),
    "cnn_s003": (lambda: cnn((32, 32), 0, False, 0.0, (100,), 0.0), 256),
    "lstm": (RowLSTM, 256),
}


def timed_rate(step, images_per_call: int, min_seconds: float) -> float:
    """Images/s of `step` after a warm-up, timed for at least `min_seconds`."""
    for _ in range(5):
        step()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        step()
        calls += 1
    return calls * images_per_call / elapsed


def measure(name: str, min_seconds: float) -> dict:
    build, batch = CASES[name]
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def train_step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    model.train()
    train = timed_rate(train_step, batch, min_seconds)
    model.eval()
    test = torch.rand(1000, 1, 28, 28)
    with torch.no_grad():
        evaluation = timed_rate(lambda: model(test), 1000, min_seconds)
    return {"model": name, "batch_size": batch, "train_images_per_second": train,
            "eval_images_per_second": evaluation, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated, from "
                        + ", ".join(CASES))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="timed per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'model':<11} {'batch':>5} {'params':>10} {'train img/s':>12} {'eval img/s':>11}")
    for name in args.models.split(","):
        r = measure(name, args.min_seconds)
        print(f"{name:<11} {r['batch_size']:>5} {r['parameters']:>10,} "
              f"{r['train_images_per_second']:>12,.0f} {r['eval_images_per_second']:>11,.0f}")
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
