"""mlx-partner: turn your own writing into a private, offline thinking-partner model."""

__version__ = "0.1.0"
