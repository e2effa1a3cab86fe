"""One job on many processes (docs/design.md, "One job on many processes"): data-parallel training with
PyTorch's own engine, torch.distributed, and micro-batches (``training.grad_accum_steps``).

    launcher (torchrun: elastic agent, c10d rendezvous on 127.0.0.1) -> N rank processes, each:
      Dist.from_env() -> init (gloo on CPU, nccl on CUDA) -> Trainer(dist=...) -> teardown

Every rank builds the same global batch (the tasks' batches are functions of the seed, the step and the
saved generator) and takes its share of the rows: rank r the r-th of N near-equal slices, cut again into
``grad_accum_steps`` micro-batches. Each micro-batch's loss is weighted by its share of the global batch's
loss terms (rows; tokens for a language model; non-padding target tokens for text to text), so the summed
gradients are the plain path's whatever the split. DistributedDataParallel averages gradients over the
ranks (divides by N), which ``accumulate_gradients`` undoes with a factor N.

Only rank 0 talks to the outside (callbacks: metrics, progress, events, checkpoints). What rank 0 alone
knows and every rank must act on (ownership lost, a stop request, the time budget) is one all-reduce of
flags (``Dist.any``) at the step where the Trainer asks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as torch_dist

from core.ml.errors import ConfigError, Problem
from core.ml.tasks import Batch

PAD_ID = 0  # the target padding text to text's loss ignores (core.ml.model.PAD_ID)


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run; ``Dist()`` is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        """The rank torchrun gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or a single run."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: on CUDA, the GPU of its local rank (one process per GPU)."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def init(self, device: torch.device) -> None:
        """Join the process group (the rendezvous the launcher set up in MASTER_ADDR/MASTER_PORT)."""
        if not self.active or torch_dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def teardown(self) -> None:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (which broadcasts rank 0's weights), or as it is."""
        if not self.active:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sum(self, value: float | torch.Tensor) -> torch.Tensor:
        """``value`` summed over the ranks (the value itself in a single run)."""
        t = torch.as_tensor(value, dtype=torch.float64).detach().clone()
        if self.active:
            t = t.to(self._comm_device())
            torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        return t.cpu()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any rank: one all-reduce for all of them."""
        if not self.active:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=self._comm_device())
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def _comm_device(self) -> torch.device:
        if torch_dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def loss_terms(task: str, y: torch.Tensor) -> int:
    """How many terms the model's mean loss over targets ``y`` averages (core.ml.model)."""
    if task == "text_to_text":
        return int((y[:, 1:] != PAD_ID).sum())  # EncoderDecoder ignores padded targets
    return y.numel()


def micro_batches(batch: Batch, task: str, dist: Dist, accum: int) -> list[tuple[Batch, float]]:
    """This rank's micro-batches of the global ``batch``, each with its share of the global loss."""
    if not dist.active and accum == 1:
        return [(batch, 1.0)]
    rows = torch.arange(batch.x.size(0))
    mine = torch.tensor_split(rows, dist.world_size)[dist.rank]
    total = loss_terms(task, batch.y)
    parts = [(p, None) for p in torch.tensor_split(mine, accum) if len(p)]
    if not parts:  # a short last batch left this rank no row: a zero-weight pass keeps DDP's collectives
        parts = [(rows[:1], 0.0)]
    out = []
    for idx, weight in parts:
        x, y = batch.x[idx], batch.y[idx]
        share = loss_terms(task, y) / total if weight is None else weight
        out.append((Batch(x, y, 0), share))
    return out


def accumulate_gradients(
    net: torch.nn.Module, batch: Batch, task: str, dist: Dist, accum: int, autocast
) -> torch.Tensor:
    """Forward and backward this rank's micro-batches of ``batch`` into ``.grad``. Returns this rank's part
    of the global batch's loss (the ranks' parts sum to it). Gradients are all-reduced once, on the last
    micro-batch (DDP's ``no_sync`` on the others)."""
    parts = micro_batches(batch, task, dist, accum)
    loss_part = torch.zeros((), device=batch.x.device)
    for i, (micro, share) in enumerate(parts):
        last = i == len(parts) - 1
        sync = contextlib.nullcontext() if last or not dist.active else net.no_sync()
        with sync:
            with autocast:
                _, loss = net(micro.x, micro.y)
            if len(parts) == 1 and not dist.active:
                loss.backward()  # the plain path, bit for bit
            else:
                (loss * (share * dist.world_size)).backward()
        loss_part = loss_part + loss.detach() * share
    return loss_part


def check_processes(batch_size: int, nproc: int, accum: int = 1) -> None:
    """Refuse a split that cannot give every rank an equal share of every micro-batch step."""
    if nproc < 1:
        raise ConfigError(
            f"the number of processes must be at least 1, got {nproc}",
            problems=[Problem(["nproc"], "must be at least 1")],
        )
    if batch_size % nproc:
        lower, upper = batch_size - batch_size % nproc, batch_size + nproc - batch_size % nproc
        raise ConfigError(
            f"training.batch_size ({batch_size}) must be divisible by the number of processes ({nproc}): "
            f"each takes an equal share of the global batch; use {lower or upper} or {upper}",
            problems=[Problem(["config", "training", "batch_size"], f"not divisible by {nproc} processes")],
        )
    if batch_size // nproc < accum:
        raise ConfigError(
            f"training.grad_accum_steps ({accum}) is more than each of the {nproc} processes' "
            f"{batch_size // nproc} examples; lower it to at most {batch_size // nproc}",
            problems=[Problem(["config", "training", "grad_accum_steps"], "more than a process's share")],
        )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the rendezvous binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_process(nproc: int) -> int:
    """CPU threads for each of ``nproc`` processes: the cores this process may use, shared out."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // nproc)


def is_rank_process() -> bool:
    """Whether this process is one of several ranks torchrun started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_rank(code: int) -> NoReturn:
    """End a rank process with ``code`` now: logs and output flushed, then ``os._exit``. A rank that
    returned the normal way aborted now and then (about one run in three on this project's CI machine,
    torch 2.13, gloo) in the C++ destructors that run at exit ("terminate called without an active
    exception", SIGABRT), which failed an attempt whose work was done and saved."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch_command(nproc: int, module: str, args: list[str], port: int | None = None) -> list[str]:
    """The torchrun command line that runs ``python -m module args`` on ``nproc`` local ranks: one node,
    c10d rendezvous on 127.0.0.1 at a free port, no restarts (a dead rank fails the attempt; the service
    requeues the job, which resumes from its checkpoint)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port or free_port()}",
        "--max-restarts=0",
        "-m",
        module,
        "--",  # the module's own arguments: torchrun would read an option it abbreviates (--nproc) as its own
        *args,
    ]


def launch_env(nproc: int, device: str = "auto") -> dict[str, str]:
    """The ranks' environment: on CPU each gets the cores divided by ``nproc`` (a user's setting wins)."""
    env = dict(os.environ)
    if device != "cuda" and not device.startswith("cuda:"):
        env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    return env
