"""Regularizers of keras_convx (the orthonormality regularizer arrives with issue 5)."""
__all__ = []
