"""PyTorch's speed on this machine for the benchmark's models: the reference, measured here.

Not part of fmnist-jax (which never imports PyTorch): it runs where PyTorch is installed,
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python benchmarks/pytorch_reference.py [--models=cnn,lstm] [--threads=2]
    python3 benchmarks/pytorch_reference.py --device=cuda --modes=eager,compile   # on a GPU
and prints, per model and mode, train and evaluation images/s in the steady state, the same
architectures and batch sizes as `scripts/benchmark.py`'s cases, Adam, cross-entropy. Eager mode
is how the seed projects ran; `compile` is `torch.compile`, the strongest setting a PyTorch user
would pick. The training images (synthetic, of the right shape: the speed does not depend on
their values) stay resident on the device, each batch gathered there by a random permutation as
fmnist-jax does; on a GPU TF32 is allowed for matrix products and convolutions (as JAX allows it
by default) and convolutional models run channels_last. `scripts/benchmark.py --suite=accelerator`
runs this beside the JAX figures on the same device.
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


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (a 1x1 conv when the shape changes)."""

    def __init__(self, cin: int, features: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(features)
        self.conv1 = nn.Conv2d(cin, features, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, features, 1, stride, bias=False)
                         if stride != 1 or cin != features else None)

    def forward(self, x):
        y = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(y)
        y = torch.relu(self.bn2(self.conv1(y)))
        return self.conv2(y) + shortcut


def resnet(stages=(32, 64, 128), blocks: int = 2) -> nn.Module:
    """fmnist_jax's ResNet: a 3x3 stem, pre-activation stages, BN-ReLU, average pool, dense."""
    layers, cin = [nn.Conv2d(1, stages[0], 3, padding=1, bias=False)], stages[0]
    for stage, features in enumerate(stages):
        for block in range(blocks):
            layers.append(PreActBlock(cin, features, 2 if stage > 0 and block == 0 else 1))
            cin = features
    return nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(cin, 10))


# name: (model, batch size), as scripts/benchmark.py's CASES
CASES = {
    "mlp": (lambda: mlp((512, 256, 128), True, 0.3), 128),
    "mlp_128_64": (lambda: mlp((128, 64), False, 0.0), 64),
    "cnn": (lambda: cnn((32, 64), 1, True, 0.0, (128, 64), 0.4), 64),
    "cnn_deep": (lambda: cnn((32, 64, 128), 1, True, 0.1, (256,), 0.3), 128),
    "cnn_s003": (lambda: cnn((32, 32), 0, False, 0.0, (100,), 0.0), 256),
    "lstm": (RowLSTM, 256),
    "resnet": (resnet, 128),
}
CONVOLUTIONAL = ("cnn", "cnn_deep", "cnn_s003", "resnet")


def timed_rate(step, images_per_call: int, min_seconds: float, sync) -> float:
    """Images/s of `step` after a warm-up, timed for at least `min_seconds`."""
    for _ in range(5):
        step()
    sync()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        step()
        calls += 1
        if calls % 20 == 0:
            sync()
    sync()
    return calls * images_per_call / (time.perf_counter() - start)


def measure(name: str, mode: str, device: torch.device, train_images: int,
            min_seconds: float) -> dict:
    build, batch = CASES[name]
    memory_format = torch.channels_last if name in CONVOLUTIONAL and device.type == "cuda" \
        else torch.contiguous_format
    model = build().to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if mode == "compile" else model
    images = torch.rand(max(train_images, batch), 1, 28, 28, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (len(images),), device=device)

    def train_step():
        index = torch.randint(0, len(images), (batch,), device=device)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(images[index]), labels[index]).backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    start = time.perf_counter()
    train_step()  # the first call compiles in compile mode
    sync()
    first_call = time.perf_counter() - start
    train = timed_rate(train_step, batch, min_seconds, sync)
    model.eval()
    test = images[:1000] if len(images) >= 1000 else torch.rand(1000, 1, 28, 28, device=device)
    with torch.no_grad():
        evaluation = timed_rate(lambda: forward(test), len(test), min_seconds, sync)
    return {"model": name, "mode": mode, "device": str(device), "batch_size": batch,
            "first_call_seconds": first_call, "train_images_per_second": train,
            "eval_images_per_second": evaluation, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated, from "
                        + ", ".join(CASES))
    parser.add_argument("--modes", default="eager", help="eager, compile (comma-separated)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda if available)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--train-images", type=int, default=6400,
                        help="training images resident on the device")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="timed per measurement")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # JAX's default precision on a GPU allows TF32
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    print(f"{'model':<11} {'mode':<8} {'batch':>5} {'params':>10} {'train img/s':>12} "
          f"{'eval img/s':>11}")
    for mode in args.modes.split(","):  # every model eager first: compiling takes longer
        for name in args.models.split(","):
            try:
                r = measure(name, mode, device, args.train_images, args.min_seconds)
            except Exception as e:  # pylint: disable=broad-except  # e.g. no compiler for compile
                print(json.dumps({"model": name, "mode": mode, "device": str(device),
                                  "error": f"{type(e).__name__}: {str(e)[:200]}"}), flush=True)
                continue
            print(f"{name:<11} {mode:<8} {r['batch_size']:>5} {r['parameters']:>10,} "
                  f"{r['train_images_per_second']:>12,.0f} {r['eval_images_per_second']:>11,.0f}")
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
