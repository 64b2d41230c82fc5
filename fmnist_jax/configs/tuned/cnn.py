"""The tuned CNN: s001's architecture (conv 32, conv 64, dense 128 and 64; Dropout 0.2 where the
seed has 0.4) with on-device augmentation (translation by 2 pixels, horizontal flips), a warmup and
cosine decay and a moving average of the weights. Budget: under 15 minutes on a 2-core CPU.

Tried: Dropout 0.4 without the average, same schedule: 92.36% test (val 92.95%, train 91.6%:
underfit)."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("cnn")
    config.model.dropout = 0.2
    config.epochs = 20
    config.ema_decay = 0.999
    config.augment.translate = 2
    config.augment.flip = True
    return config
