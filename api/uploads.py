"""Streaming multipart uploads: straight to a temp file on disk, hashed on the way, size-limited as it streams.

Starlette's ``request.form()`` spools the whole body before the route sees it, so the size limit could
only be checked afterwards. Here the body is fed chunk by chunk from ``request.stream()`` into
python-multipart's push parser: file bytes go to a temp file under ``<data_dir>/tmp`` (same filesystem
as the datasets, so the final move is an atomic rename) and into SHA-256, and the request is refused
with 413 the moment the file passes the limit, without reading the rest.

The user's filename is kept only for display, after :func:`sanitize_filename`; it is never a path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from api.errors import ProblemError

log = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 200
MAX_FIELD_BYTES = 1024 * 1024  # non-file fields (the config JSON)
MAX_JSON_BYTES = 1024 * 1024  # JSON request bodies read by hand
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries allowed on top of the file limit


def sanitize_filename(name: str | None) -> str:
    """A display name: no directories (POSIX or Windows), no control characters, at most 200 chars."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().lstrip(".").strip()
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name or "upload"


@dataclass
class StoredUpload:
    """A file received into a temp path; the caller moves it into place or calls :meth:`discard`."""

    path: Path
    filename: str
    size_bytes: int
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class MultipartForm:
    file: StoredUpload | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()


def limit_message(max_bytes: int) -> str:
    return (
        f"the upload is larger than the limit of {max_bytes // (1024 * 1024)} MB "
        "(setting JOBFORMER_MAX_UPLOAD_MB); split the file or raise the limit"
    )


class _Receiver:
    """python-multipart callbacks: one part at a time, the file to disk, small fields to memory."""

    def __init__(self, tmp_dir: Path, max_bytes: int, file_field: str, text_fields: set[str]) -> None:
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes
        self.file_field = file_field
        self.text_fields = text_fields
        self.form = MultipartForm()
        self.error: ProblemError | None = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._out: BinaryIO | None = None
        self._hash: Any = None
        self._size = 0
        self._filename: str | None = None
        self._value = bytearray()

    # header callbacks
    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None

    # python-multipart bounds a part's headers itself (8 lines of 4 KB): these never grow past that.
    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        if self.error is not None:
            return
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if name != self.file_field and name not in self.text_fields:
            # Refused at its headers, before any of its data: an unknown part is never read into memory or
            # onto disk, whatever its size.
            expected = ", ".join(f"'{f}'" for f in (self.file_field, *sorted(self.text_fields)))
            shown = name if len(name) <= 64 else name[:64] + "..."
            self.error = ProblemError(
                422,
                f"unknown form field '{shown}': this endpoint takes only {expected}",
                code="invalid_request",
                errors=[
                    {"loc": ["body", shown], "msg": "unknown field; remove it", "type": "extra_forbidden"}
                ],
            )
            return
        if name == self.file_field:
            if self.form.file is not None or self._out is not None:
                self._fail(422, f"send exactly one '{self.file_field}' part", "invalid_request")
                return
            raw = options.get(b"filename")
            self._filename = sanitize_filename(raw.decode("utf-8", "replace") if raw else None)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            path = self.tmp_dir / f"upload-{uuid.uuid4().hex}"
            self._out = open(path, "wb")  # noqa: SIM115 - closed in on_part_end / close()
            self._hash = hashlib.sha256()
            self._size = 0
        else:
            self._value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        chunk = data[start:end]
        if self._out is not None and self._name == self.file_field:
            self._size += len(chunk)
            if self._size > self.max_bytes:
                self._fail(413, limit_message(self.max_bytes), "upload_too_large")
                return
            self._out.write(chunk)
            self._hash.update(chunk)
        elif self._name in self.text_fields:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                self._fail(413, f"form field '{self._name}' is larger than 1 MB", "field_too_large")

    def on_part_end(self) -> None:
        if self.error is not None:
            return
        if self._out is not None and self._name == self.file_field:
            path = Path(self._out.name)
            self._out.close()
            self._out = None
            self.form.file = StoredUpload(
                path, self._filename or "upload", self._size, self._hash.hexdigest()
            )
        elif self._name in self.text_fields:
            try:
                self.form.fields[self._name] = bytes(self._value).decode("utf-8")
            except UnicodeDecodeError:
                self._fail(422, f"form field '{self._name}' is not valid UTF-8", "invalid_request")
        self._name = None

    def _fail(self, status: int, detail: str, code: str) -> None:
        if self.error is None:
            self.error = ProblemError(status, detail, code=code)

    def close(self) -> None:
        """Drop everything received (after an error)."""
        if self._out is not None:
            path = Path(self._out.name)
            self._out.close()
            self._out = None
            path.unlink(missing_ok=True)
        self.form.discard()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def receive_multipart(
    request: Request,
    *,
    tmp_dir: Path,
    max_bytes: int,
    file_field: str = "file",
    text_fields: tuple[str, ...] = (),
    require_file: bool = True,
) -> MultipartForm:
    """Stream a multipart body: ``file_field`` to a temp file under ``tmp_dir``, ``text_fields`` to strings.

    Raises ProblemError: 415 not multipart, 413 past ``max_bytes`` (while streaming), 422 malformed or
    no file part. On any error nothing is left on disk.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise ProblemError(
            415,
            f"send the file as multipart/form-data with a '{file_field}' part",
            code="unsupported_media_type",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ProblemError(422, "multipart body without a boundary", code="invalid_request")
    declared = request.headers.get("content-length")
    # Fast path: refuse a body announced as too large before reading any of it.
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise ProblemError(413, limit_message(max_bytes), code="upload_too_large")

    receiver = _Receiver(tmp_dir, max_bytes, file_field, set(text_fields))
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except Exception as e:  # python-multipart raises on malformed bodies
                raise ProblemError(422, f"malformed multipart body: {e}", code="invalid_request") from None
            if receiver.error is not None:
                raise receiver.error
        try:
            parser.finalize()
        except Exception as e:
            raise ProblemError(422, f"malformed multipart body: {e}", code="invalid_request") from None
        if receiver.error is not None:
            raise receiver.error
        if receiver._out is not None:
            raise ProblemError(422, "multipart body ended in the middle of the file", code="invalid_request")
        if require_file and receiver.form.file is None:
            raise ProblemError(
                422,
                f"no '{file_field}' part: send the file as multipart/form-data field '{file_field}'",
                code="invalid_request",
                errors=[{"loc": ["body", file_field], "msg": "field required", "type": "missing"}],
            )
    except BaseException:
        receiver.close()
        raise
    return receiver.form


async def read_json_body(request: Request, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The request body parsed as JSON, refusing bodies over ``max_bytes`` as they stream."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            raise ProblemError(413, f"JSON body larger than {max_bytes} bytes", code="body_too_large")
    try:
        return json.loads(bytes(buf))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProblemError(
            422,
            f"request body is not valid JSON: {e}",
            code="invalid_json",
            errors=[{"loc": ["body"], "msg": f"not valid JSON: {e}", "type": "json_invalid"}],
        ) from None


def move_into_store(upload: StoredUpload, data_dir: Path) -> str:
    """Move a received file to ``datasets/<sha[:2]>/<sha>`` (content-addressed); returns the relative path.

    The same content uploaded twice is stored once: the second temp file is simply dropped.
    """
    rel = Path("datasets") / upload.sha256[:2] / upload.sha256
    dest = data_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        upload.discard()
    else:
        os.replace(upload.path, dest)
    return rel.as_posix()
