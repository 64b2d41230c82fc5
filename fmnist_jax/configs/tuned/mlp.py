"""The tuned MLP: 784 -> 1024 -> 512 -> 256 -> 10 (BatchNorm, Dropout 0.3), on-device augmentation
(translation by 1 pixel, horizontal flips), AdamW with warmup and cosine decay, label smoothing
and a moving average of the weights. Budget: a few minutes on a 2-core CPU."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("mlp")
    config.model.hidden = (1024, 512, 256)
    config.batch_size = 128
    config.epochs = 40
    config.label_smoothing = 0.1
    config.ema_decay = 0.999
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.weight_decay = 1e-4
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 1.0
    config.augment.translate = 1
    config.augment.flip = True
    return config
