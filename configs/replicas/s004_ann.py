"""s004's ANN: dense layers (784 -> 128 -> 64 -> 10, ReLU; the seed gives no sizes), Adam 1e-3,
batch 64, early stopping (patience 3) with the best weights kept, at most 30 epochs."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("mlp")
    config.model.hidden = (128, 64)
    config.model.use_batch_norm = False
    config.model.dropout = 0.0
    config.batch_size = 64
    config.epochs = 30
    config.schedule.name = "constant"
    config.early_stopping_patience = 3
    return config
