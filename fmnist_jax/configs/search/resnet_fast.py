"""Search candidate 3, for time to accuracy (resnet >= 95.5% in <= 60 s of training on one
H100/H200-class GPU; stretch <= 15 s): configs/search/resnet_reg.py with batches of 512 instead of
128 and the peak learning rate scaled by the square root of the batch ratio (3e-3 -> 6e-3, the
usual rule for Adam), a 2-epoch warmup, bfloat16 compute and 30 epochs. A quarter of the steps an
epoch and half the epochs: about an eighth of the optimizer steps of the tuned recipe.

Not run yet: needs a GPU (benchmarks/resnet_search.sh)."""

from fmnist_jax.config import load_config_file, CONFIG_DIR


def get_config():
    config = load_config_file(CONFIG_DIR / "search" / "resnet_reg.py")
    config.batch_size = 512
    config.optimizer.learning_rate = 6e-3
    config.schedule.warmup_epochs = 2.0
    config.compute_dtype = "bfloat16"
    config.epochs = 30
    return config
