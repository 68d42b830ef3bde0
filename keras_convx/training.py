"""Training schemes (pairwise consistency arrives with issue 8)."""
__all__ = []
