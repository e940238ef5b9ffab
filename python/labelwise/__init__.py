"""labelwise: active-learning primitives for medical imaging.

Uncertainty metrics (``labelwise.uncertainty``) run in one fused pass on CPU or CUDA and
take numpy, PyTorch or CuPy arrays without a copy; results come back in the caller's
framework and on the caller's device. Batch acquisition (``labelwise.acquisition``) turns
scores into the batch to label: top-k and stochastic (Gumbel-top-k) selection, mergeable
across shards. Auto-labelling (``labelwise.propagation``) labels the pool with a certified error
rate and flags likely wrong human labels.
"""

from . import acquisition, uncertainty
from . import propagation
from . import _arrays, _core
from ._core import built_with_cuda, num_threads


def set_num_threads(n: int) -> None:
    """Sets the number of CPU threads labelwise uses, process-wide; results never depend on it.

    ``n <= 0`` restores the default (``LABELWISE_NUM_THREADS``, else the machine's cores); counts
    above 1024 mean 1024. ``n`` must be an integer (``TypeError`` otherwise, bools included).
    """
    n = _arrays.check_int64(n, "n")
    _core.set_num_threads(max(-1, min(n, 1024)))

__version__ = "0.1.0"
__all__ = ["acquisition", "propagation", "uncertainty", "built_with_cuda", "num_threads", "set_num_threads", "__version__"]
