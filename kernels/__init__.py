"""tritoncnn.kernels: the Triton kernels, their host launchers, autograd Functions, custom ops and
the functional API.

One file per op and direction: ``conv`` (forward, and the conv / linear op), ``conv_backward``
(dX, dW and db), ``conv_pool`` (the fused conv + ReLU + max-pool), ``max_pool``; the shared
``@triton.jit`` core in ``_gemm``, the op scaffolding in ``_op``, argument checks in ``_checks``
and ``geometry``, and the tuning problems in ``problems``. Default launch configs live in
``tritoncnn.autotune.heuristics``.
"""

from tritoncnn import _runtime  # noqa: F401  (fixes the runtime mode before any @triton.jit)

from .conv import *  # noqa: F401,F403
from .max_pool import *  # noqa: F401,F403
from .avg_pool import *  # noqa: F401,F403
from .conv_pool import *  # noqa: F401,F403
from . import problems  # noqa: F401  (registers the tuning problems)
