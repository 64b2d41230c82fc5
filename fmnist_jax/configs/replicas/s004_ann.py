"""s004's ANN: dense layers (s002's 784 -> 128 -> 64 -> 10; the seed gives no sizes), Adam 1e-3,
batch 64, early stopping (patience 3) with the best weights kept, at most 30 epochs."""

from fmnist_jax.config import CONFIG_DIR, load_config_file


def get_config():
    config = load_config_file(CONFIG_DIR / "replicas" / "s002_ann.py")
    config.epochs = 30
    config.early_stopping_patience = 3
    return config
