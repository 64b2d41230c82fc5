"""The tuned deeper CNN: s000's three stages 32, 64, 128 with on-device augmentation (translation
by 2 pixels, horizontal flips), a warmup and cosine decay and a moving average of the weights; no
dropout in the convolution stages (BatchNorm and the augmentation regularise them), Dropout 0.3 in
the head. Budget: about 30 minutes a seed on a 2-core CPU.

Tried (seed 0; this recipe: 93.27% test): Dropout 0.1 after each stage and label smoothing 0.1:
92.97% (train accuracy under augmentation 93.4%, validation 93.4%: underfit); 8x8 random erasing
(augment.erase=8): 93.13% (best validation 93.7% against 94.0%); erasing and training on 98% of the
training set (data.val_fraction=0.02): 93.04%; AdamW with decoupled weight decay 0.05: 93.31%
(best validation 94.05%), within the seeds' spread of 0.07%."""

from fmnist_jax.config import model_config


def get_config():
    config = model_config("cnn_deep")
    config.model.conv_dropout = 0.0
    config.epochs = 30
    config.ema_decay = 0.999
    config.optimizer.learning_rate = 2e-3
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 1.0
    config.augment.translate = 2
    config.augment.flip = True
    return config
