"""Ringback: real-time web-behaviour personalisation and callback engine for banks."""

__version__ = "0.1.0"

__all__ = ["__version__"]
