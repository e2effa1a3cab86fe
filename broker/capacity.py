"""Which list a job waits in, and which lists a worker consumes (docs/design.md, "Queues" and "Memory").

A job needs processes (``resources.processes``) and memory per process (``resources.memory_gb``, else
``core.ml.resources.memory_gib``'s estimate). Both are routing, the Celery way, not refusal: the job
waits in ``<queue>[.p<N>][.m<T>]``, N its processes when more than one, T its memory tier (GiB, one of
``MEMORY_TIERS``, the first at or above its need) when more than ``PLAIN_TIER_GIB``; a worker consumes
only the lists whose jobs it can run (``consumed_queues``), so a job reaches only such workers. A worker
offers (``Offer``) the processes it gives one job and the memory each may use: on a GPU worker each
process has a GPU's memory, on a CPU worker the processes of a job share the machine's.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from typing import Any, NamedTuple

from core.settings import Settings

log = logging.getLogger(__name__)

PLAIN_TIER_GIB = 4.0  # every worker serves jobs needing this much per process (the plain lists)
# Steps of about 1.4x: a 16 GB machine (15.6 GiB) serves tier 12, a 24 GB one tier 16.
MEMORY_TIERS = (6, *(t for k in range(2, 16) for t in (2 ** (k + 1), 3 * 2**k)))
MAX_PROCESSES = 64  # resources.processes' bound


class Needs(NamedTuple):
    """What a job needs from one worker: processes, and the memory tier of each (0: the plain tier)."""

    processes: int = 1
    memory_tier: int = 0


class Offer(NamedTuple):
    """What a worker gives one job: processes, GiB of memory (None: unknown, so only the plain tier),
    and whether that is each GPU's memory (else the processes share it)."""

    processes: int
    memory_gib: float | None
    gpu: bool = False


def memory_tier(gib: float) -> int:
    """The tier a job needing ``gib`` per process waits in: 0 up to ``PLAIN_TIER_GIB``, else the
    smallest of ``MEMORY_TIERS`` at or above it (the largest beyond them all)."""
    if gib <= PLAIN_TIER_GIB:
        return 0
    return next((t for t in MEMORY_TIERS if t >= gib), MEMORY_TIERS[-1])


def job_needs(config: dict | None) -> Needs:
    """A stored (resolved) config's needs; the plain list for one process when it cannot be read."""
    from core.ml.config import TrainConfig
    from core.ml.resources import memory_gib

    processes = ((config or {}).get("resources") or {}).get("processes", 1)
    processes = processes if isinstance(processes, int) and processes > 1 else 1
    try:
        gib = memory_gib(TrainConfig.model_validate(config or {}))
    except Exception as exc:  # noqa: BLE001 - a config stored by an older version: route it as before
        log.warning("cannot estimate a job's memory from its config (%s): plain tier", exc)
        return Needs(processes)
    return Needs(processes, memory_tier(gib))


def job_processes(config: dict | None) -> int:
    """The processes a job's stored config asks for (``resources.processes``; 1 when it says nothing)."""
    return job_needs(config).processes


def capacity_queue(queue: str, processes: int = 1, memory_tier: int = 0) -> str:
    """Where a job of ``queue`` with these needs waits: ``queue`` itself for one process in the plain
    tier, else ``<queue>.p<N>`` (N > 1 processes) and/or ``.m<T>`` (memory tier T)."""
    name = queue if processes <= 1 else f"{queue}.p{processes}"
    return name if not memory_tier else f"{name}.m{memory_tier}"


def fits(offer: Offer, needs: Needs) -> bool:
    """Whether a worker offering ``offer`` can run a job needing ``needs``."""
    if needs.processes > offer.processes:
        return False
    if not needs.memory_tier:
        return True
    if offer.memory_gib is None:
        return False
    shared = 1 if offer.gpu else needs.processes  # a CPU job's processes share the machine's memory
    return needs.memory_tier * shared <= offer.memory_gib


def consumed_queues(queue: str, offer: Offer) -> list[str]:
    """The lists a worker of ``queue`` offering ``offer`` consumes: every ``capacity_queue`` whose jobs
    it can run."""
    names = []
    for n in range(1, min(offer.processes, MAX_PROCESSES) + 1):
        for tier in (0, *MEMORY_TIERS):
            if fits(offer, Needs(n, tier)):
                names.append(capacity_queue(queue, n, tier))
            elif tier:
                break  # tiers only grow
    return names


def worker_capacity(settings: Settings) -> int:
    """The processes this worker gives one job: ``worker_processes``, else ``local_processes()``."""
    return settings.worker_processes or local_processes()


def local_gpus() -> int:
    """This host's GPUs (``CUDA_VISIBLE_DEVICES`` when set, else the NVIDIA driver's list; no torch)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def local_processes() -> int:
    """The processes this host can give one job: its GPUs, else its CPU cores."""
    gpus = local_gpus()
    if gpus:
        return gpus
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_offer(settings: Settings) -> Offer:
    """What this worker offers: ``worker_processes`` and ``worker_memory_gb`` where set, else measured
    (the smallest visible GPU's memory, or the RAM this process may use)."""
    gpu = local_gpus() > 0
    memory = settings.worker_memory_gb
    if memory is None:
        memory = _gpu_memory_gib() if gpu else _ram_gib()
    return Offer(worker_capacity(settings), memory, gpu)


@functools.cache
def _gpu_memory_gib() -> float | None:
    """The smallest visible GPU's memory, from ``nvidia-smi`` (the worker's main process never imports
    torch); None without it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        log.warning(
            "no nvidia-smi: this GPU worker takes only jobs of the plain memory tier; set "
            "JOBFORMER_WORKER_MEMORY_GB to its GPUs' memory"
        )
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): set JOBFORMER_WORKER_MEMORY_GB to the GPUs' memory", exc)
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    sizes = [float(x) / 1024 for x in re.findall(r"\d+(?:\.\d+)?", out)]  # MiB each
    if visible and all(d.strip().isdigit() for d in visible.split(",")):
        sizes = [sizes[int(d)] for d in visible.split(",") if int(d) < len(sizes)] or sizes
    return min(sizes) if sizes else None


def _ram_gib() -> float:
    """The RAM this process may use: the machine's, or its cgroup's limit when lower (a container)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:  # noqa: PTH123
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total / 1024**3


def capacity_queues_present(client: Any, queue: str) -> list[str]:
    """``queue`` and those of its capacity queues that exist in Redis now (a list with messages), read
    with one SCAN: every tier of every process count would be thousands of names."""
    pattern = re.compile(rf"{re.escape(queue)}(\.p[0-9]+)?(\.m[0-9]+)?")
    found = {k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(match=f"{queue}.[pm]*")}
    return [queue, *sorted(k for k in found if pattern.fullmatch(k))]
