"""s004's deeper CNN: several conv blocks with BatchNorm and Dropout (s000's three-stage CNN; the
seed gives no sizes), Adam 1e-3 constant, batch 64, early stopping (patience 3), at most 30 epochs."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("cnn_deep")
    config.schedule.name = "constant"
    config.batch_size = 64
    config.epochs = 30
    config.early_stopping_patience = 3
    return config
