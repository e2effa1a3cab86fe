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
import time

SPIN_COUNT = "1000"


def set_cpu_thread_defaults() -> None:
    """Shorten OpenMP's busy-wait unless the user set it; must run before torch is imported."""
    if "torch" in sys.modules:  # too late to matter: libgomp read its environment when torch loaded
        return
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def lower_priority(nice: int) -> None:
    """Add ``nice`` to this process's niceness, and to its autogroup's when it leads a session of its own.

    Linux with ``CONFIG_SCHED_AUTOGROUP`` (most desktop and VM kernels; not inside a container's cgroup)
    puts each session in a scheduling group of its own and shares the CPU fairly between groups first:
    a process's niceness then only orders it against its own session. A worker started in a session of its
    own (``jobformer up`` starts each process so) would compete with the API at equal weight whatever its
    niceness; the autogroup's own nice value (``/proc/self/autogroup``) is what yields. A worker that does
    not lead its session shares it with its caller's other processes, whose priority is not its to lower,
    and plain niceness already orders it against the API when they share one.
    """
    if nice <= 0:
        return
    os.nice(nice)
    autogroup = "/proc/self/autogroup"
    if os.getsid(0) == os.getpid() and os.path.exists(autogroup):
        # The kernel takes one such write a tenth of a second from unprivileged processes (EAGAIN): workers
        # started together retry once.
        for attempt in range(2):
            try:
                with open(autogroup, "w") as f:
                    f.write(str(nice))
                return
            except BlockingIOError:
                time.sleep(0.11 * (attempt + 1))
            except OSError:  # a kernel without the knob's write, or not allowed: the niceness above stands
                return
