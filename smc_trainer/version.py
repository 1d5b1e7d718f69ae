"""The package version, in one place (setup.py, ledgers and cache keys read it)."""

__version__ = "0.1.0"
