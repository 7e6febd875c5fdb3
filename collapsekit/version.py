"""The package version, importable without importing the stages."""
__version__ = "0.1.0"
