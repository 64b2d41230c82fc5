"""s001's CNN, faithfully: conv 32 and conv 64 (ReLU then BatchNorm, max-pool), dense 128 and 64
with Dropout 0.4; Adam 1e-3 constant, batch 64, 100 epochs, an 80/20 split. Reported: 89.75%."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("cnn")  # the architecture; its recipe differs below
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "constant"
    config.schedule.warmup_epochs = 0.0
    config.epochs = 100
    config.data.val_fraction = 0.2
    return config
