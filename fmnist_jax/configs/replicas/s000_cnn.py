"""s000's CNN, faithfully: three stages 32, 64, 128 (conv, BatchNorm, ReLU, max-pool, light
dropout), dense 256; Adam 1e-3, batch 128, 18 epochs, ReduceLROnPlateau. Reported: 92%."""

from fmnist_jax.config import model_config


def get_config():
    return model_config("cnn_deep")  # configs/cnn_deep.py is this recipe
