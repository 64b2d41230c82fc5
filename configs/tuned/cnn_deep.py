"""The tuned deeper CNN: s000's three stages 32, 64, 128 with on-device augmentation (translation
by 2 pixels, horizontal flips), a warmup and cosine decay, label smoothing and a moving average of
the weights. Budget: about 30 minutes on a 2-core CPU."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("cnn_deep")
    config.epochs = 30
    config.label_smoothing = 0.1
    config.ema_decay = 0.999
    config.optimizer.learning_rate = 2e-3
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 1.0
    config.augment.translate = 2
    config.augment.flip = True
    return config
