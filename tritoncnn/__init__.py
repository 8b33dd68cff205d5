"""tritoncnn: Triton kernels for the layers of a convolutional network.

Subpackages: ``tritoncnn.kernels`` (the ops), ``tritoncnn.autotune``, ``tritoncnn.models`` and
``tritoncnn.reports``. Importing this package fixes the runtime mode (see ``_runtime``) before any
kernel is defined.
"""

from tritoncnn import _runtime  # noqa: F401  (must run before any @triton.jit)

__version__ = "0.1.0"
