"""s000's ANN: 784 -> 512 -> 256 -> 128 -> 10 with BatchNorm and Dropout 0.3, Adam 1e-3, batch 128."""

from fmnist_jax.config import base_config


def get_config():
    config = base_config()
    config.model.name = "mlp"
    config.model.hidden = (512, 256, 128)
    config.model.use_batch_norm = True
    config.model.dropout = 0.3
    config.batch_size = 128
    config.epochs = 18
    config.schedule.name = "plateau"
    return config
