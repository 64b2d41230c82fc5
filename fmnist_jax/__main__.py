"""`python -m fmnist_jax COMMAND ...`, the same as the installed `fmnist-jax COMMAND ...`."""

from fmnist_jax.commands import main

main()
