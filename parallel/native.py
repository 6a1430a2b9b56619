"""The planner's kernels: the C++ build (parallel._native) when it was built, else the pure-Python
twins with a warning. `BACKEND` says which one is in use."""
from __future__ import annotations

import logging

from parallel.planner import kernels_py

log = logging.getLogger(__name__)

try:
    from parallel import _native as _impl

    BACKEND = "cpp"
except ImportError as exc:  # no compiler at install time, or the build failed
    _impl = kernels_py
    BACKEND = "python"
    log.warning("parallel._native is not built (%s); the planner uses its pure-Python twins, "
                "which are much slower. Reinstall with a C++17 compiler to build it.", exc)

bucket_lengths = _impl.bucket_lengths
partition_microbatches = _impl.partition_microbatches
pack_microbatch = _impl.pack_microbatch
fill_microbatch = _impl.fill_microbatch
