"""s002's ANN, faithfully: 784 -> 128 -> 64 -> 10 with ReLU; Adam 1e-3, batch 64, 15 epochs,
a 20% validation split. Reported: 88%."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("mlp")
    config.model.hidden = (128, 64)
    config.model.use_batch_norm = False
    config.model.dropout = 0.0
    config.batch_size = 64
    config.epochs = 15
    config.schedule.name = "constant"
    config.data.val_fraction = 0.2
    return config
