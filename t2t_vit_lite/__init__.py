"""Tokens-to-Token ViT, taught by building it."""
__version__ = "0.1.0"
