"""s004's basic CNN: conv + max-pool + dense (s003's small CNN; the seed gives no sizes), Adam 1e-3,
batch 64, early stopping (patience 3) with the best weights kept, at most 30 epochs."""

from fmnist_jax.config import CONFIG_DIR, load_config_file


def get_config():
    config = load_config_file(CONFIG_DIR / "replicas" / "s003_cnn.py")
    config.batch_size = 64
    config.epochs = 30
    config.early_stopping_patience = 3
    config.data.val_fraction = 0.1
    return config
