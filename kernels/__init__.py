"""tritoncnn.kernels: the Triton kernels, their launchers, autograd Functions, custom ops and the
functional API."""

from tritoncnn import _runtime  # noqa: F401  (fixes the runtime mode before any @triton.jit)
