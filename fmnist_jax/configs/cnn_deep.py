"""s000's CNN: three stages 32, 64, 128 (conv, BatchNorm, ReLU, max-pool, Dropout 0.1), dense 256.

The seed recipe: Adam 1e-3, batch 128, 18 epochs, ReduceLROnPlateau on validation accuracy.
"""

from fmnist_jax.config import base_config


def get_config():
    config = base_config()
    config.model.name = "cnn_deep"
    config.model.conv_features = (32, 64, 128)
    config.model.padding = "SAME"
    config.model.use_batch_norm = True
    config.model.norm_before_relu = True
    config.model.conv_dropout = 0.1  # "light"; 0.25 with 0.4 below underfit (91.98% test)
    config.model.dense_features = (256,)
    config.model.dropout = 0.3
    config.model.conv_impl = "auto"  # xla (nn.Conv) or matmul (patches + one matmul): equal results
    config.model.pool_impl = "auto"  # window (nn.max_pool) or slices (elementwise): equal results
    config.batch_size = 128
    config.epochs = 18
    config.schedule.name = "plateau"
    return config
