"""Conv kernels (placeholder until written)."""
__all__ = []
