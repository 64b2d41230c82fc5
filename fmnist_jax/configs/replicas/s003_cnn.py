"""s003's CNN, faithfully: conv 32, max-pool, conv 32, max-pool (3x3 VALID, ReLU, no BatchNorm),
Dense 100, Dense 10; Adam 1e-3, batch 256, 8 epochs, an 80/20 split. Reported: 88.0%."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("cnn")
    config.model.conv_features = (32, 32)
    config.model.padding = "VALID"
    config.model.use_batch_norm = False
    config.model.dense_features = (100,)
    config.model.dropout = 0.0
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "constant"
    config.schedule.warmup_epochs = 0.0
    config.batch_size = 256
    config.epochs = 8
    config.data.val_fraction = 0.2
    return config
