"""Max-pool kernels (placeholder until written)."""
__all__ = []
