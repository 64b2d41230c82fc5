"""s003's RNN, faithfully: the 28 rows as timesteps, LSTM 128, Dense 10; Adam 1e-3, batch 256,
8 epochs, an 80/20 split. Reported: 86.2%."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("lstm")  # configs/lstm.py is this recipe, with a 90/10 split
    config.data.val_fraction = 0.2
    return config
