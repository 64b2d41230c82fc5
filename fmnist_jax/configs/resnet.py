"""A small pre-activation ResNet (32-64-128, two blocks a stage) with on-device augmentation.

AdamW with warmup and cosine decay, label smoothing, random translation by 2 pixels, horizontal
flips and 8x8 random erasing. A starting point: this recipe has not yet been tuned on a full run.
"""

from fmnist_jax.config import base_config


def get_config():
    config = base_config()
    config.model.name = "resnet"
    config.model.stage_features = (32, 64, 128)
    config.model.blocks_per_stage = 2
    config.batch_size = 128
    config.epochs = 30
    config.label_smoothing = 0.1
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 1.0
    config.augment.translate = 2
    config.augment.flip = True
    config.augment.erase = 8
    return config
