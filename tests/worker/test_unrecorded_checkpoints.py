"""A checkpoint on disk without a database row (its worker died in between) is dropped before resuming."""

from __future__ import annotations

import json
from pathlib import Path

from core.ml.checkpoint import checkpoints_root, list_checkpoints
from worker.tasks import _drop_unrecorded_checkpoints


def _fake_checkpoint(out_dir: Path, step: int) -> None:
    d = checkpoints_root(out_dir) / f"step-{step:08d}"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"step": step, "epoch": 0, "metrics": {}, "is_best": False}))


def test_checkpoints_the_database_never_recorded_are_dropped(tmp_path: Path) -> None:
    for step in (500, 550):
        _fake_checkpoint(tmp_path, step)
    _drop_unrecorded_checkpoints("job", tmp_path, {"step-00000500"})
    assert [m["name"] for m in list_checkpoints(tmp_path)] == ["step-00000500"]


def test_recorded_checkpoints_are_kept(tmp_path: Path) -> None:
    for step in (500, 550):
        _fake_checkpoint(tmp_path, step)
    _drop_unrecorded_checkpoints("job", tmp_path, {"step-00000500", "step-00000550"})
    assert [m["step"] for m in list_checkpoints(tmp_path)] == [500, 550]
