"""Analysis tools: equivariance error, focus area, gradient flow (issues 4, 5, 8)."""
__all__ = []
