"""Checkpoints: layout, safe loading, best + latest kept, atomic writes that survive a full disk."""

from __future__ import annotations

import errno
import json
import random

import numpy as np
import pytest
import torch

from core.ml import checkpoint as ckpt
from core.ml.errors import CheckpointError
from core.ml.train import train
from tests.core.ml._tiny import classification_config, write_sentiment_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(out_dir, step, *, is_best, best_name, value=0.5):
    return ckpt.save_checkpoint(
        out_dir,
        step=step,
        epoch=1,
        model_state={"w": torch.full((2, 3), float(step))},
        vocab={"version": 1, "tokens": ["<pad>", "<unk>", "<cls>", "<eos>"]},
        config={"task": "classification"},
        meta={"task": "classification", "labels": ["a", "b"]},
        trainer_state={"step": step, "rng": ckpt.capture_rng_state()},
        metrics={"val_f1_macro": value},
        is_best=is_best,
        best_name=best_name,
    )


def test_a_trained_run_has_the_documented_layout(tmp_path):
    data = write_sentiment_csv(tmp_path / "s.csv")
    train(classification_config(max_steps=3), data, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "meta.json",
        "model.safetensors",
        "trainer_state.pt",
        "vocab.json",
    ]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 3 and meta["is_best"] is True and meta["labels"] == ["neg", "pos"]
    assert set(meta["metrics"]) == {"train_loss", "val_loss", "val_accuracy", "val_f1_macro"}
    assert json.loads((path / "config.json").read_text())["model"]["d_model"] == 16
    assert json.loads((path / "vocab.json").read_text())["tokens"][:4] == ["<pad>", "<unk>", "<cls>", "<eos>"]
    # Loadable without unpickling arbitrary objects.
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3
    assert state["rng"]["torch"].dtype == torch.uint8
    assert set(state["optimizer"]) == {"state", "param_groups"}
    weights = ckpt.load_weights(path)
    assert weights["head.weight"].shape == (2, 2 * 16)  # over the pooled vector and the n-gram bag's
    assert weights["ngram.emb.weight"].shape == (1024, 16)


def test_keeps_the_best_and_the_latest(tmp_path):
    a = _save(tmp_path, 10, is_best=True, best_name="step-00000010")
    assert (a.name, a.is_best, a.pruned) == ("step-00000010", True, [])
    assert a.size_bytes > 0
    b = _save(tmp_path, 20, is_best=False, best_name="step-00000010")
    assert b.pruned == []
    c = _save(tmp_path, 30, is_best=False, best_name="step-00000010")
    assert c.pruned == ["step-00000020"]
    assert [m["name"] for m in ckpt.list_checkpoints(tmp_path)] == ["step-00000010", "step-00000030"]
    assert ckpt.best_checkpoint(tmp_path).name == "step-00000010"
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000030"
    d = _save(tmp_path, 40, is_best=True, best_name="step-00000040")
    assert d.pruned == ["step-00000010", "step-00000030"]
    assert (
        ckpt.best_checkpoint(tmp_path)
        == ckpt.latest_checkpoint(tmp_path)
        == tmp_path.resolve() / ("checkpoints/step-00000040")
    )


def test_best_falls_back_to_latest_and_empty_dirs_have_none(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None and ckpt.best_checkpoint(tmp_path) is None
    _save(tmp_path, 5, is_best=False, best_name=None)
    assert ckpt.best_checkpoint(tmp_path).name == "step-00000005"


def test_a_full_disk_leaves_the_previous_checkpoints_intact(tmp_path, monkeypatch):
    _save(tmp_path, 10, is_best=True, best_name="step-00000010")
    before = (tmp_path / "checkpoints" / "step-00000010" / "model.safetensors").read_bytes()
    real_write = ckpt._write_file

    def write_until_full(path, data):
        if path.name == "meta.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_file", write_until_full)
    with pytest.raises(CheckpointError) as e:
        _save(tmp_path, 20, is_best=True, best_name="step-00000020")
    assert e.value.code == "checkpoint_write_failed"
    assert "could not write checkpoint step-00000020" in str(e.value)
    assert "No space left on device" in str(e.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000010"]  # no temp dir
    assert (tmp_path / "checkpoints" / "step-00000010" / "model.safetensors").read_bytes() == before


def test_a_stale_temp_dir_is_ignored_then_cleaned(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step-00000007-999"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    assert ckpt.list_checkpoints(tmp_path) == []
    _save(tmp_path, 8, is_best=True, best_name="step-00000008")
    assert not stale.exists()


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    state = ckpt.capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.save(state, tmp_path / "rng.pt")
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]


def _save_as(out_dir, step, lease_epoch, may_commit=None):
    name = ckpt.checkpoint_name(step, lease_epoch)
    return ckpt.save_checkpoint(
        out_dir,
        step=step,
        epoch=1,
        model_state={"w": torch.full((2, 3), float(step))},
        vocab={"version": 1, "tokens": ["<pad>"]},
        config={"task": "classification"},
        meta={"task": "classification", "labels": ["a", "b"]},
        trainer_state={"step": step},
        metrics={"val_f1_macro": 0.5},
        is_best=False,
        best_name=name,
        lease_epoch=lease_epoch,
        may_commit=may_commit,
    )


def test_lease_epochs_scope_names_and_pruning(tmp_path):
    """Two owners of one job share its directory: an old owner's save (it woke up after a takeover) never
    prunes the newer owner's checkpoints or temp directories; the newer owner prunes the old one's."""
    root = tmp_path / "checkpoints"
    assert _save_as(tmp_path, 100, 1).name == "step-00000100-e1"
    resumed = _save_as(tmp_path, 100, 2)  # the same step, saved again by the next owner: no clash
    assert (resumed.name, resumed.pruned) == ("step-00000100-e2", ["step-00000100-e1"])
    (root / ".tmp-step-00000150-e2-999").mkdir()  # the new owner's save in progress
    old = _save_as(tmp_path, 150, 1)
    assert old.pruned == []
    assert sorted(p.name for p in root.iterdir()) == [
        ".tmp-step-00000150-e2-999",
        "step-00000100-e2",
        "step-00000150-e1",
    ]
    new = _save_as(tmp_path, 200, 2)
    assert sorted(new.pruned) == ["step-00000100-e2", "step-00000150-e1"]
    assert sorted(p.name for p in root.iterdir()) == ["step-00000200-e2"]
    assert [c["name"] for c in ckpt.list_checkpoints(tmp_path)] == ["step-00000200-e2"]
    assert ckpt.lease_epoch_of("step-00000200") == 0 and ckpt.lease_epoch_of(".tmp-step-00000001-e12-7") == 12


def test_a_save_whose_lease_is_lost_leaves_nothing(tmp_path):
    from core.ml.errors import OwnershipLost

    _save_as(tmp_path, 100, 1)
    with pytest.raises(OwnershipLost):
        _save_as(tmp_path, 150, 1, may_commit=lambda: False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000100-e1"]


def test_a_run_that_loses_its_lease_after_the_rename_prunes_nothing(tmp_path):
    """Paused right after renaming a checkpoint into place, and taken over meanwhile (the new owner may
    have resumed from this run's earlier checkpoint, or adopted and recorded the one just renamed): the
    waking run prunes nothing and removes nothing. (The integration test saw the old owner prune the
    checkpoint the new owner listed, and then remove the one the new owner had adopted.)"""
    from core.ml.errors import OwnershipLost

    _save_as(tmp_path, 100, 1)
    answers = iter([True, False])  # still the owner before the rename; not any more after it
    with pytest.raises(OwnershipLost):
        _save_as(tmp_path, 150, 1, may_commit=lambda: next(answers))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000100-e1",
        "step-00000150-e1",
    ]
