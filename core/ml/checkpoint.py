"""Checkpoints (docs/design.md, "Checkpoints"): one directory per save, written atomically, best and latest kept.

Layout::

    <out_dir>/checkpoints/step-00000100/
        model.safetensors   learned weights (safetensors: loading never runs code)
        vocab.json          Vocab.to_dict()
        config.json         the resolved TrainConfig
        meta.json           {step, epoch, metrics, is_best, task, labels, vocab_size, architecture}
        trainer_state.pt    optimizer state, schedule, step, RNG states, loop counters;
                            plain tensors/containers only, so torch.load(weights_only=True) reads it

A save writes every file into ``.tmp-<name>-<pid>`` beside the final directory, fsyncs the files and the
directory, then renames it into place: a reader (the API, a resuming worker) sees a whole checkpoint or
none. If the disk fills up, the temp directory is removed, CheckpointError is raised and the checkpoints
already there are untouched.

In the service every run has a lease epoch (docs/design.md, "One owner per job"), part of its checkpoint
names (``step-00000100-e3``): two runs of one job, even an old owner that woke up after a takeover, never
write the same directory, and a run prunes only checkpoints of its own epoch or older ones, never a newer
owner's. ``may_commit`` is asked right before the rename and again before pruning: a run that lost its lease
before the rename leaves nothing behind; one that lost it after the rename leaves the renamed directory (the
next owner may have adopted it) and prunes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from core.ml.callbacks import CheckpointInfo
from core.ml.config import TrainConfig
from core.ml.errors import CheckpointError, OwnershipLost
from core.ml.model import ARCHITECTURE, build_model
from core.ml.tokenize import Vocab

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
STATE_FILE = "trainer_state.pt"
_TMP_PREFIX = ".tmp-"


_EPOCH_TAG = re.compile(r"-e(\d+)(?:-\d+)?$")  # "step-00000100-e3", and its temp dir ".tmp-step-...-e3-<pid>"


def checkpoint_name(step: int, lease_epoch: int | None = None) -> str:
    """``step-00000100``; ``step-00000100-e3`` for a service run under lease epoch 3."""
    return f"step-{step:08d}" + (f"-e{lease_epoch}" if lease_epoch is not None else "")


def lease_epoch_of(name: str) -> int:
    """The lease epoch a checkpoint (or temp) directory name carries; 0 when it has none."""
    m = _EPOCH_TAG.search(name)
    return int(m.group(1)) if m else 0


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def save_checkpoint(
    out_dir: str | Path,
    *,
    step: int,
    epoch: int,
    model_state: dict[str, torch.Tensor],
    vocab: dict,
    config: dict,
    meta: dict,
    trainer_state: dict,
    metrics: dict[str, float],
    is_best: bool,
    best_name: str | None,
    lease_epoch: int | None = None,
    may_commit: Callable[[], bool] | None = None,
) -> CheckpointInfo:
    """Write checkpoint ``step-<step>`` atomically, then prune all but it and ``best_name``.

    ``best_name`` is the best checkpoint after this save (this one's name when ``is_best``).
    ``lease_epoch`` scopes the name and the pruning; ``may_commit()`` False right before the rename
    removes the temp directory and raises OwnershipLost.
    Raises CheckpointError (code "checkpoint_write_failed") on any OSError; nothing is left half-written.
    """
    root = checkpoints_root(out_dir)
    name = checkpoint_name(step, lease_epoch)
    final = root / name
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    full_meta = {**meta, "step": step, "epoch": epoch, "metrics": metrics, "is_best": is_best, "name": name}
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        # safetensors refuses non-contiguous or shared tensors; the models hold neither (tied LM weights
        # are one tensor), but a clone to CPU keeps this independent of the device.
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
        _write_file(tmp / MODEL_FILE, st_save(tensors, metadata={"format": "pt"}))
        _write_file(tmp / VOCAB_FILE, _json_bytes(vocab))
        _write_file(tmp / CONFIG_FILE, _json_bytes(config))
        _write_file(tmp / META_FILE, _json_bytes(full_meta))
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(trainer_state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if may_commit is not None and not may_commit():
            shutil.rmtree(tmp, ignore_errors=True)
            raise OwnershipLost(f"not saving checkpoint {name}: this run no longer owns {out_dir}")
        if final.exists():  # the same step saved by an earlier, interrupted run: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {name} in {root}: {e.strerror or e}; free disk space "
            f"(or check permissions) and resume: the previous checkpoints are intact"
        ) from e
    size = sum(p.stat().st_size for p in final.iterdir())
    if may_commit is not None and not may_commit():
        # Paused between the rename and here, and the job taken over meanwhile: the new owner may have
        # resumed from one of this run's checkpoints, this one included (a claim adopts the previous
        # epoch's newest checkpoint on disk and records it), so touch nothing: prune nothing, and leave
        # what was renamed. Not adopted, it is a stray of an old epoch, which the new owner's next save prunes.
        raise OwnershipLost(f"not keeping checkpoint {name}: this run no longer owns {out_dir}")
    pruned = prune_checkpoints(out_dir, keep={name, best_name or name}, lease_epoch=lease_epoch)
    return CheckpointInfo(
        name=name,
        path=str(final.resolve()),
        step=step,
        epoch=epoch,
        metrics=dict(metrics),
        size_bytes=size,
        is_best=is_best,
        pruned=pruned,
    )


def prune_checkpoints(out_dir: str | Path, keep: set[str], lease_epoch: int | None = None) -> list[str]:
    """Delete checkpoint directories not in ``keep`` (and stale temp dirs). Returns the deleted names.
    With ``lease_epoch``, directories of a newer epoch (another owner's) are never touched."""
    root = checkpoints_root(out_dir)
    pruned = []
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        if lease_epoch is not None and lease_epoch_of(p.name) > lease_epoch:
            continue
        if p.name.startswith(_TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)  # left by a crash mid-save
        elif p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
            pruned.append(p.name)
    return pruned


def list_checkpoints(out_dir: str | Path) -> list[dict]:
    """Complete checkpoints under ``out_dir``, oldest first: meta.json plus ``path`` and ``size_bytes``."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if not p.is_dir() or p.name.startswith(_TMP_PREFIX) or not (p / META_FILE).is_file():
            continue
        try:
            meta = json.loads((p / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("ignoring unreadable checkpoint %s", p)
            continue
        meta["name"] = p.name
        meta["path"] = str(p.resolve())
        meta["size_bytes"] = sum(f.stat().st_size for f in p.iterdir() if f.is_file())
        out.append(meta)
    return sorted(out, key=lambda m: (m["step"], lease_epoch_of(m["name"])))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    ckpts = list_checkpoints(out_dir)
    return Path(ckpts[-1]["path"]) if ckpts else None


def best_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint marked best (by the validation metric); the latest when none was evaluated."""
    ckpts = list_checkpoints(out_dir)
    best = [c for c in ckpts if c.get("is_best")]
    if best:
        return Path(best[-1]["path"])
    return Path(ckpts[-1]["path"]) if ckpts else None


def check_architecture(meta: dict, where: str | Path) -> None:
    """Refuse a checkpoint whose weights were trained for another version of the model's code: loading
    them would not fail, it would silently predict something else."""
    saved = meta.get("architecture", 1)
    if saved != ARCHITECTURE:
        raise CheckpointError(
            f"{where} was saved by a jobformer whose model has architecture {saved} (this one builds "
            f"{ARCHITECTURE}: core/ml/model.py); its weights would compute something else. Train it again "
            "with this version, or use the version that trained it",
            code="incompatible_checkpoint",
        )


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of checkpoint directory ``path``."""
    return st_load((Path(path) / MODEL_FILE).read_bytes())


def load_json(path: str | Path, filename: str) -> Any:
    return json.loads((Path(path) / filename).read_text(encoding="utf-8"))


@dataclass
class SavedRun:
    """A checkpoint directory, read and checked: what a run resumes from and what prediction loads."""

    path: Path
    config: dict  # config.json as saved: a resume compares it field by field with the new config
    meta: dict  # meta.json
    vocab: Vocab

    @property
    def labels(self) -> list[str]:
        return list(self.meta.get("labels") or [])

    def train_config(self) -> TrainConfig:
        return TrainConfig.model_validate(self.config)

    def model(self, config: TrainConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The model ``config`` describes, with this checkpoint's weights, on ``device``."""
        model = build_model(config.task, config.model, len(self.vocab), len(self.labels))
        model.load_state_dict(load_weights(self.path))
        return model.to(device)


def load_checkpoint(path: str | Path) -> SavedRun:
    """Read checkpoint directory ``path`` (JSON files only; the weights when ``SavedRun.model`` asks).
    Raises CheckpointError ``incompatible_checkpoint`` for weights of another model architecture."""
    path = Path(path)
    meta = load_json(path, META_FILE)
    check_architecture(meta, path)
    config = load_json(path, CONFIG_FILE)
    model = config.get("model")
    if isinstance(model, dict) and "ngrams" not in model:  # saved before the n-gram bag existed: none
        model["ngrams"] = 0
    return SavedRun(path, config, meta, Vocab.from_dict(load_json(path, VOCAB_FILE)))


def load_trainer_state(path: str | Path) -> dict:
    """trainer_state.pt, with ``weights_only=True``: only tensors and plain containers are accepted."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


# --- RNG states as plain tensors and lists (weights_only=True cannot hold numpy arrays or tuples of them) ---


def capture_rng_state() -> dict:
    """Every global RNG the loop touches: torch CPU (dropout), CUDA, python ``random``, numpy."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),  # uint8 tensor
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
