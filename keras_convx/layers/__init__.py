"""Layers of keras_convx, one file per family."""

from keras_convx.layers.log_polar import LogPolarConv2D

__all__ = ["LogPolarConv2D"]
