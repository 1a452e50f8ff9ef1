"""The ``charlstm`` entry point (``charlstm.cli:main``); the commands live in :mod:`charlstm.interface.cli`."""

from .interface.cli import cli, main

__all__ = ["cli", "main"]
