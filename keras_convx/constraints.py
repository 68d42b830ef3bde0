"""Constraints of keras_convx (the orthonormality projection arrives with issue 5)."""
__all__ = []
