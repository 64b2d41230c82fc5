"""Search candidate 1 for the resnet goals (>= 95.5% one model, >= 96.0% ensemble): the tuned
recipe (configs/tuned/resnet.py, 95.01% test on one H200, overfitting: train 98.3%, validation
falling over the last 20 epochs) with stronger regularisation: 12x12 erasing instead of 8x8,
rotation by up to 10 degrees and zoom by up to 10% (augment.rotate, augment.zoom), and AdamW weight
decay 0.05 instead of 5e-4 (decoupled, so 5e-4 hardly decayed at all). Same 60 epochs, EMA 0.999.

Not run yet: needs a GPU (about a minute of training on an H200; ~8 h a seed on the 2-core CPU).
Run by benchmarks/resnet_search.sh, alone and as a 3-seed ensemble, each evaluated with and
without flip test-time augmentation."""

from fmnist_jax.config import load_config_file, CONFIG_DIR


def get_config():
    config = load_config_file(CONFIG_DIR / "tuned" / "resnet.py")
    config.augment.erase = 12
    config.augment.rotate = 10.0
    config.augment.zoom = 0.1
    config.optimizer.weight_decay = 0.05
    return config
