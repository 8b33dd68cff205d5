"""tritoncnn: Triton kernels for the layers of a convolutional network.

Subpackages: ``tritoncnn.kernels`` (the ops), ``tritoncnn.autotune``, ``tritoncnn.models`` and
``tritoncnn.reports``. Importing this package fixes the runtime mode (see ``_runtime``) before any
kernel is defined; with no CUDA device the first kernel launch warns once that kernels run
interpreted (:class:`InterpreterWarning`, which ``warnings`` filters can silence).
"""

from tritoncnn import _runtime  # noqa: F401  (must run before any @triton.jit)
from tritoncnn._runtime import InterpreterWarning

__version__ = "0.1.0"

__all__ = ["InterpreterWarning", "__version__"]
