"""Connection-level pruning: schedules, strip, compact (arrives with issue 7)."""
__all__ = []
