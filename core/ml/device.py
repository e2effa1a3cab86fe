"""Where a run computes and in which precision: the ``device`` and ``training.precision`` of a config."""

from __future__ import annotations

import contextlib

import torch

from core.ml.errors import ConfigError, Problem


def resolve_device(device: str) -> torch.device:
    """``auto``: cuda when present, else cpu. Refuses a device this machine does not have."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    missing = (dev.type == "cuda" and not torch.cuda.is_available()) or (
        dev.type == "mps" and not torch.backends.mps.is_available()
    )
    if dev.type == "cuda" and not missing and (dev.index or 0) >= torch.cuda.device_count():
        missing = True
    if missing:
        raise ConfigError(
            f"device {device!r} is not available on this machine; use 'auto' or 'cpu'",
            problems=[Problem(["config", "device"], f"{device!r} is not available")],
        )
    return dev


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context forward passes run in: bf16 autocast for ``precision`` "bf16", and for "auto" on CUDA;
    else none (fp32). One object, entered anew by every forward pass."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
