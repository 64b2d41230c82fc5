"""s001's ANN, faithfully: 784 -> 128 -> 64 -> 10 with ReLU, plain SGD lr 1e-3, batch 64,
100 epochs, an 80/20 split. Reported: 74.5% (on a small CSV subset; here the full training set)."""

from fmnist_jax.config import CONFIG_DIR, load_config_file


def get_config():
    config = load_config_file(CONFIG_DIR / "replicas" / "s002_ann.py")  # the same network
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.0
    config.epochs = 100
    return config
