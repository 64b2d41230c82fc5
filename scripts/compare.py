"""`fmnist-jax compare` from a clone (the project installed, e.g. `pip install -e .`); see
fmnist_jax/commands/compare.py, or run it with --help."""

from fmnist_jax.commands import run

if __name__ == "__main__":
    run("compare")
