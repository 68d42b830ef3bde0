"""Fold to core Keras layers; ONNX and LiteRT export with verification (issue 9)."""
__all__ = []
