"""The papers' architectures as builder functions returning uncompiled `keras.Model`s."""
__all__ = []
