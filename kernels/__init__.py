"""tritoncnn.kernels: the Triton kernels, their host launchers, autograd Functions, custom ops and
the functional API."""

from tritoncnn import _runtime  # noqa: F401  (fixes the runtime mode before any @triton.jit)

from .conv import *  # noqa: F401,F403
from .max_pool import *  # noqa: F401,F403
from .avg_pool import *  # noqa: F401,F403
from .conv_pool import *  # noqa: F401,F403
