"""The tuned ResNet: configs/resnet.py (pre-activation 32-64-128, two blocks a stage, AdamW with
warmup and cosine decay, label smoothing, translation, flips, random erasing) with a moving average
of the weights, for 60 epochs. Budget: a GPU; untrained on this project's 2-core CPU so far."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("resnet")
    config.epochs = 60
    config.ema_decay = 0.999
    return config
