"""CPU threading defaults for processes that train, set before torch is imported.

PyTorch's CPU build uses GNU OpenMP, whose threads spin for a long time (GOMP_SPINCOUNT, about 300k
iterations) waiting for work between kernels. On a machine where anything else runs (the API answering
pollers, another job) the spinning threads steal the cores the computing threads need: on 2 cores at load
average 4 we measured 2.5k tokens/s with the default and 14.8k with a short spin, and no change when
the machine is quiet (bench/README.md). A user's own setting always wins.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "1000"


def set_cpu_thread_defaults() -> None:
    """Shorten OpenMP's busy-wait unless the user set it; must run before torch is imported."""
    if "torch" in sys.modules:  # too late to matter: libgomp read its environment when torch loaded
        return
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
