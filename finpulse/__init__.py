"""Shared core of finpulse: settings, the document contract, the database handle and the CLI."""

__version__ = "0.1.0"
