"""Checkpoints on disk for the API: where a recorded one lives, and its download, one checkpoint directory
as a streamed .tar.gz that is whole, or never starts (docs/design.md, "Checkpoints").

A worker prunes older checkpoints (``shutil.rmtree``) while the API may be sending one. So every file is
opened before the response starts, and the opened files must add up to the size the worker recorded for
the checkpoint: a directory that pruning has begun to empty is refused (``CheckpointGone``, a 404 before
any byte of a 200). On Linux an open file stays readable after it is unlinked, so once the files are open
a prune cannot truncate the archive.

``?format=onnx`` (``onnx_download``): the classifier exported by ``core.ml.export`` into a temporary
directory, its files opened, the directory removed, and the open files streamed the same way
(docs/design.md, "Evaluations and batch predictions"). A checkpoint that cannot be exported (a language
model) or a server without the ``onnx`` extra is a 422 at ``query.format`` naming the way out.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fastapi.responses import StreamingResponse

from api.errors import ProblemError
from core.db.models import Checkpoint

log = logging.getLogger(__name__)


class CheckpointGone(Exception):
    """The checkpoint's files are not all on disk any more (pruned, or being pruned)."""


def open_checkpoint(directory: Path, expected_bytes: int | None) -> list[tuple[str, BinaryIO]]:
    """Open every regular file of ``directory`` (sorted by name) and return ``(name, file)`` pairs.

    Raises ``CheckpointGone`` when the directory or one of its files vanished while opening, or when the
    files do not add up to ``expected_bytes`` (the size recorded when the checkpoint was written; None:
    not checked). Symlinks are skipped, and never followed: a link planted in a run dir reads nothing."""
    opened: list[tuple[str, BinaryIO]] = []
    try:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False):
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                opened.append((entry.name, os.fdopen(fd, "rb")))
        total = sum(os.fstat(f.fileno()).st_size for _, f in opened)
    except OSError as e:
        _close(opened)
        raise CheckpointGone(f"{directory}: {e.strerror or e}") from None
    except BaseException:
        _close(opened)
        raise
    if not opened or (expected_bytes is not None and total != expected_bytes):
        _close(opened)
        log.warning(
            "checkpoint %s has %d bytes on disk, %s recorded: pruned?", directory, total, expected_bytes
        )
        raise CheckpointGone(f"{directory}: incomplete on disk")
    return opened


def _close(files: list[tuple[str, BinaryIO]]) -> None:
    for _, f in files:
        f.close()


class _QueueWriter:
    """A write-only file for tarfile whose bytes a generator in another thread yields as they come."""

    def __init__(self, q: queue.Queue[bytes | None | BaseException], stop: threading.Event) -> None:
        self.q = q
        self.stop = stop

    def write(self, data: bytes) -> int:
        while not self.stop.is_set():
            try:
                self.q.put(bytes(data), timeout=0.5)
                return len(data)
            except queue.Full:
                continue
        raise BrokenPipeError("download abandoned")


def stream_tar_gz(
    files: list[tuple[str, BinaryIO]], arcname: str, chunk_size: int = 256 * 1024
) -> Iterator[bytes]:
    """Yield a .tar.gz of the open ``files`` under ``arcname/``, produced in a thread with bounded memory.
    The files are closed when the archive is done or abandoned."""
    q: queue.Queue[bytes | None | BaseException] = queue.Queue(maxsize=16)
    stop = threading.Event()

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_QueueWriter(q, stop), mode="w|gz", bufsize=chunk_size) as tar:  # type: ignore[call-overload]
                for name, f in files:
                    tar.addfile(tar.gettarinfo(arcname=f"{arcname}/{name}", fileobj=f), f)
            q.put(None)
        except BaseException as e:
            if not stop.is_set():
                q.put(e)
        finally:
            _close(files)

    thread = threading.Thread(target=produce, name=f"tar-{arcname}", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                # Reading an open file failed (an I/O error). Raise, so the server drops the connection
                # without the body's end: the client sees a failed transfer, not a short archive.
                log.error("checkpoint archive %s failed: %s", arcname, item)
                raise OSError(f"checkpoint archive {arcname} failed: {item}") from item
            yield item
    finally:
        stop.set()


def checkpoint_dir(data_dir: Path, c: Checkpoint) -> Path:
    """The checkpoint's directory, refusing any recorded path that resolves outside the data dir."""
    root = data_dir.resolve()
    path = (root / c.path).resolve()
    if not path.is_relative_to(root) or not path.is_dir():
        raise _missing(c)
    return path


def checkpoint_download(data_dir: Path, c: Checkpoint, filename: str) -> StreamingResponse:
    """The checkpoint as an attachment ``filename``: a .tar.gz of its directory, or a 404 before any byte.

    Every file is opened (and checked against the recorded size) before the 200: a prune that comes later
    cannot cut the archive short."""
    try:
        files = open_checkpoint(checkpoint_dir(data_dir, c), c.size_bytes)
    except CheckpointGone:
        raise _missing(c) from None
    return StreamingResponse(
        stream_tar_gz(files, c.name),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _missing(c: Checkpoint) -> ProblemError:
    return ProblemError(404, f"checkpoint {c.name} is no longer on disk (pruned?)", code="checkpoint_missing")


def onnx_download(data_dir: Path, c: Checkpoint, filename: str) -> StreamingResponse:
    """The checkpoint exported to ONNX (model.onnx, vocab.json, labels.json, config.json, README.md) as an
    attachment ``filename`` (.tar.gz), or a 4xx before any byte: 404 when the checkpoint is gone, 422 when
    it cannot be exported here."""
    from core.ml.errors import JobformerError
    from core.ml.export import export_onnx

    source = checkpoint_dir(data_dir, c)
    work = Path(tempfile.mkdtemp(prefix="jobformer-onnx-"))
    try:
        export_onnx(source, work / "out")
        files = open_checkpoint(work / "out", None)  # open, then the directory can go (Linux keeps them)
    except FileNotFoundError:
        raise _missing(c) from None
    except JobformerError as e:
        fix = (
            "download it without ?format and run it with jobformer"
            if e.code == "export_unsupported"
            else "install the extra on the server (pip install 'jobformer[onnx]'), or download the checkpoint "
            "without ?format and run `jobformer export` where the extra is installed"
        )
        raise ProblemError(
            422,
            f"format=onnx: {e.message}; {fix}",
            code=e.code,
            errors=[{"loc": ["query", "format"], "msg": e.message, "type": e.code}],
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return StreamingResponse(
        stream_tar_gz(files, f"{c.name}-onnx"),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
