"""fmnist-jax: a JAX/Flax training pipeline for Fashion-MNIST."""

__version__ = "0.1.0"
