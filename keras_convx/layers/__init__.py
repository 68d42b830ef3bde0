"""Layers of keras_convx, one file per family."""
__all__ = []
