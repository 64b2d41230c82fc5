"""s000's ANN, faithfully: 784 -> 512 -> 256 -> 128 -> 10, BatchNorm, Dropout 0.3; Adam 1e-3,
batch 128, 18 epochs, ReduceLROnPlateau on validation accuracy, 90/10 split. Reported: 88-89%."""

from fmnist_jax.config import model_config


def get_config():
    return model_config("mlp")  # configs/mlp.py is this recipe
