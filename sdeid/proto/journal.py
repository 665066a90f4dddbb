"""Crash-safe persistence for the v2 back-end: a checkpoint plus a journal.

The file starts with a checkpoint (the dispatcher blob and the stored
replies) and continues with one record per committed input.  A record is
written with one ``os.write`` before the reply it belongs to is sent: the
page cache keeps it when this process is killed, and nothing pays an fsync
for a host crash, which ends the VM as well.  At start-up the checkpoint is
restored and the records replayed through the deterministic model
(sdeid.proto.session.replay); every `COMPACT_AFTER` records, and at a clean
stop, a new file with a fresh checkpoint replaces the old one atomically.

Record framing: u32 length (little-endian), then the body.  A vCPU
request (the hot path: every guest call) is a binary body, b"V", u64
instance, u32 PE, the request as it came; anything else is JSON (a list;
``bytes`` values as {"b": HEX}).  A torn last record (the process died
inside the write) is ignored: its reply was never sent.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from sdeid.errors import StateError
from sdeid.model.dispatcher import Dispatcher
from sdeid.proto.session import Backend, StoredReply, replay

log = logging.getLogger("sdeid.journal")
_LEN = struct.Struct("<I")
MAGIC = ["sdeid-journal", 1]
COMPACT_AFTER = 20000
MAX_RECORD = 32 * 1024 * 1024


def _enc(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"b": v.hex()}
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict):
        return bytes.fromhex(v["b"])
    if isinstance(v, list):
        return tuple(_dec(x) for x in v)
    return v


_VCPU = struct.Struct("<IcQI")   # length, b"V", instance, pe


def _frame(record: tuple[Any, ...] | list[Any]) -> bytes:
    if record[0] == "vcpu":
        _kind, instance, pe, data = record
        head = _VCPU.pack(_VCPU.size - _LEN.size + len(data), b"V", instance, pe)
        return head + bytes(data)
    body = json.dumps(_enc(record), separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


def _parse(body: bytes) -> tuple[Any, ...]:
    if body[:1] == b"V":
        _n, _v, instance, pe = _VCPU.unpack_from(_LEN.pack(0) + body[:_VCPU.size - _LEN.size])
        return ("vcpu", instance, pe, bytes(body[_VCPU.size - _LEN.size:]))
    return tuple(_dec(json.loads(body)))


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.records = 0

    def load(self, backend: Backend) -> int:
        """Restore `backend` from the file, if there is one; returns the
        number of records replayed.  StateError says why it cannot be."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        records: list[tuple[Any, ...]] = []
        off = 0
        while off + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, off)
            if n > MAX_RECORD or off + _LEN.size + n > len(data):
                log.warning("%s: ignoring a torn last record at byte %d", self.path, off)
                break
            try:
                records.append(_parse(data[off + _LEN.size:off + _LEN.size + n]))
            except (ValueError, KeyError, TypeError, struct.error) as e:
                raise StateError(f"{self.path}: record at byte {off} is corrupt: {e}") from e
            off += _LEN.size + n
        if not records or list(records[0][:2]) != MAGIC:
            raise StateError(f"{self.path} is not an sdeid journal")
        _magic, _ver, blob, replies = records[0]
        try:
            if blob:
                backend.dispatcher = Dispatcher.restore(blob)
            backend.replies = {int(pe): StoredReply(int(i), int(q), raw)
                               for pe, i, q, raw in replies}
            replay(backend, list(records[1:]))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise StateError(f"{self.path}: cannot replay: {e}") from e
        return len(records) - 1

    def open(self, backend: Backend) -> None:
        """Start a fresh file holding a checkpoint of `backend`."""
        self.checkpoint(backend)

    def checkpoint(self, backend: Backend) -> None:
        d = backend.dispatcher
        head = _frame(MAGIC + [d.snapshot() if d is not None else b"",
                               [[pe, r.instance, r.seq, r.data]
                                for pe, r in sorted(backend.replies.items())]])
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            os.write(fd, head)
            os.fsync(fd)       # a checkpoint is rare: make the rename safe
        except BaseException:
            os.close(fd)
            raise
        os.replace(tmp, self.path)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd
        self.records = 0

    def append(self, record: tuple[Any, ...], backend: Backend) -> None:
        """Make one committed input durable against our own crash."""
        data = _frame(record)
        if os.write(self.fd, data) != len(data):  # pragma: no cover - regular file
            raise OSError("short write to the journal")
        self.records += 1
        if self.records >= COMPACT_AFTER:
            self.checkpoint(backend)

    def close(self, backend: Backend | None = None) -> None:
        if self.fd >= 0:
            if backend is not None:
                self.checkpoint(backend)
            os.close(self.fd)
            self.fd = -1
