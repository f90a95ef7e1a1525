"""`python -m mlx_partner` runs the CLI."""

from .cli import main

main()
