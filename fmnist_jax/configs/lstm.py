"""s003's RNN: the 28 rows as timesteps of 28 pixels, one LSTM of 128 units, Dense 10; batch 256."""

from fmnist_jax.config import base_config


def get_config():
    config = base_config()
    config.model.name = "lstm"
    config.model.hidden = (128,)
    config.batch_size = 256
    config.epochs = 8
    return config
