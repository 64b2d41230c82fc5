"""s001's ANN, faithfully: 784 -> 128 -> 64 -> 10 with ReLU, plain SGD lr 1e-3, batch 64,
100 epochs, an 80/20 split. Reported: 74.5% (on a small CSV subset; here the full training set)."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("mlp")
    config.model.hidden = (128, 64)
    config.model.use_batch_norm = False
    config.model.dropout = 0.0
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.0
    config.batch_size = 64
    config.epochs = 100
    config.schedule.name = "constant"
    config.data.val_fraction = 0.2
    return config
