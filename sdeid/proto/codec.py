"""smccc-user v2 frames to plain values and back, with strict validation.

Every layout is fixed, so each compiles to one struct.Struct from the tables
in sdeid.proto.spec: a vCPU request is one ``unpack``, a frame is valid when
its size is the one the table names.  ``ControlReader`` is a pure
incremental parser in the manner of h11: feed bytes (and the descriptors
that came with them), take frames out.  Decode errors are ProtocolError
subclasses: the peer's fault, so the caller logs and disconnects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from sdeid.errors import PeerError
from sdeid.proto import spec


class ProtocolError(PeerError):
    """The peer sent something the v2 protocol does not allow."""


class BadHeader(ProtocolError):
    """Unknown type, unknown flags, a reply bit on a one-way message..."""


class BadSize(ProtocolError):
    """A frame whose size is not the one its type fixes."""


class BadValue(ProtocolError):
    """A well-sized frame carrying a value out of range."""


class MissingFd(ProtocolError):
    """A frame that needs a file descriptor arrived without one (or with extra)."""


_FORMATS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i32": "i", "i64": "q"}


def compile_layout(layout: spec.Layout) -> struct.Struct:
    fmt = "<"
    for _name, ftype in layout:
        if isinstance(ftype, str):
            fmt += _FORMATS[ftype]
        else:
            fmt += _FORMATS[ftype[0]] * ftype[1]
    return struct.Struct(fmt)


def field_names(layout: spec.Layout) -> tuple[str, ...]:
    return tuple(name for name, _t in layout)


class LayoutCodec:
    """dict <-> bytes for one layout; arrays are tuples."""

    def __init__(self, layout: spec.Layout) -> None:
        self.layout = layout
        self.struct = compile_layout(layout)
        self.size = self.struct.size
        self._shape = [(n, t[1] if isinstance(t, tuple) else 0) for n, t in layout]

    def pack(self, values: dict[str, Any]) -> bytes:
        flat: list[int] = []
        for name, count in self._shape:
            v = values.get(name, 0 if not count else (0,) * count)
            if count:
                if len(v) != count:
                    raise ValueError(f"{name} needs {count} entries, got {len(v)}")
                flat.extend(v)
            else:
                flat.append(v)
        return self.struct.pack(*flat)

    def unpack(self, data: bytes | memoryview) -> dict[str, Any]:
        flat = self.struct.unpack(data)
        out: dict[str, Any] = {}
        i = 0
        for name, count in self._shape:
            if count:
                out[name] = tuple(flat[i:i + count])
                i += count
            else:
                out[name] = flat[i]
                i += 1
        return out


HEADER = compile_layout(spec.CONTROL_HEADER)
assert HEADER.size == spec.CONTROL_HEADER_SIZE

REQUEST_CODECS = {m.code: LayoutCodec(m.request) for m in spec.CONTROL}
REPLY_CODECS = {m.code: LayoutCodec(m.reply) for m in spec.CONTROL if m.reply is not None}


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """One control-channel frame: `name` is the spec's message name."""

    name: str
    reply: bool
    tag: int
    fields: dict[str, Any] = field(default_factory=dict)
    fds: tuple[int, ...] = ()

    @property
    def code(self) -> int:
        return spec.CONTROL_BY_NAME[self.name].code


def encode_control(name: str, fields: dict[str, Any] | None = None, *, tag: int = 0,
                   reply: bool = False) -> bytes:
    m = spec.CONTROL_BY_NAME[name]
    codecs = REPLY_CODECS if reply else REQUEST_CODECS
    payload = codecs[m.code].pack(fields or {})
    return HEADER.pack(m.code, spec.FLAG_REPLY if reply else 0, len(payload), tag, 0) + payload


def expected_size(code: int, reply: bool) -> int | None:
    """The payload size (type, reply) fixes, or None if no such frame exists."""
    codecs = REPLY_CODECS if reply else REQUEST_CODECS
    c = codecs.get(code)
    return None if c is None else c.size


class ControlReader:
    """Incremental parser for one direction of the control channel.

    `accepts` names the messages this side may receive as requests (the
    peer's direction); replies are accepted for the messages this side
    sends.  Descriptors are queued as they arrive and handed, in order, to
    the frames that take them; a frame that needs one and finds none, or
    descriptors left over once the bytes are consumed (check_drained), is a
    protocol error (and the caller closes the descriptors)."""

    MAX_PENDING = spec.CONTROL_HEADER_SIZE + max(
        [c.size for c in REQUEST_CODECS.values()] + [c.size for c in REPLY_CODECS.values()])

    def __init__(self, receives: str) -> None:
        if receives not in ("fe->be", "be->fe"):
            raise ValueError(receives)
        self.requests = {m.code for m in spec.CONTROL if m.direction == receives}
        self.replies = {m.code for m in spec.CONTROL
                        if m.direction != receives and m.reply is not None}
        self.buf = bytearray()
        self.fds: list[int] = []

    def feed(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        self.buf += data
        self.fds.extend(fds)

    def take_fds(self) -> list[int]:
        """Descriptors received and not handed out (to close on disconnect)."""
        fds, self.fds = self.fds, []
        return fds

    def next_frame(self) -> ControlFrame | None:
        if len(self.buf) < spec.CONTROL_HEADER_SIZE:
            return None
        code, flags, size, tag, reserved = HEADER.unpack_from(self.buf)
        if flags & ~spec.FLAG_KNOWN:
            raise BadHeader(f"unknown flags 0x{flags:x} in a frame of type {code}")
        reply = bool(flags & spec.FLAG_REPLY)
        if reserved:
            raise BadHeader("reserved header field is not zero")
        known = self.replies if reply else self.requests
        if code not in known:
            kind = "reply" if reply else "request"
            raise BadHeader(f"type {code} is not a {kind} this side accepts")
        want = expected_size(code, reply)
        if size != want:
            raise BadSize(f"{spec.CONTROL_BY_CODE[code].name}{' reply' if reply else ''} "
                          f"has {size} payload bytes, expected {want}")
        end = spec.CONTROL_HEADER_SIZE + size
        if len(self.buf) < end:
            return None
        m = spec.CONTROL_BY_CODE[code]
        nfds = 0 if reply else m.fds
        # Linux ends a stream read after the bytes that carried descriptors,
        # so queued descriptors belong to the frame that ends the bytes read.
        # Refuse before acting when that frame takes none.
        if self.fds and not nfds and len(self.buf) == end:
            raise MissingFd(f"{len(self.fds)} file descriptor(s) arrived with {m.name}, "
                            "which takes none")
        codecs = REPLY_CODECS if reply else REQUEST_CODECS
        fields = codecs[code].unpack(memoryview(self.buf)[spec.CONTROL_HEADER_SIZE:end])
        del self.buf[:end]
        if len(self.fds) < nfds:
            raise MissingFd(f"{m.name} arrived without its file descriptor")
        fds = tuple(self.fds[:nfds])
        del self.fds[:nfds]
        return ControlFrame(m.name, reply, tag, fields, fds)

    def check_drained(self) -> None:
        """Once every complete frame is out: a stream carries a descriptor
        with the bytes of the frame that takes it, so one left over with no
        partial frame to claim it was sent with a frame that takes none."""
        if self.fds and not self.buf:
            raise MissingFd(f"{len(self.fds)} file descriptor(s) arrived with frames "
                            "that take none")

    def eof(self) -> None:
        if self.buf:
            raise ProtocolError(f"connection closed inside a frame ({len(self.buf)} bytes)")


# ------------------------------------------------------------- vCPU channel

VCPU_REQUEST = LayoutCodec(spec.VCPU_REQUEST)
VCPU_REPLY = LayoutCodec(spec.VCPU_REPLY)
assert VCPU_REQUEST.size == spec.VCPU_REQUEST_SIZE
assert VCPU_REPLY.size == spec.VCPU_REPLY_SIZE

OP_NAMES = {v: k for k, v in spec.OPS.items()}
ACTION_NAMES = {v: k for k, v in spec.ACTIONS.items()}
_REQ = VCPU_REQUEST.struct
_REP = VCPU_REPLY.struct
ZERO18 = (0,) * 18


@dataclass(frozen=True, slots=True)
class VcpuRequest:
    op: int
    seq: int
    x: tuple[int, ...] = ZERO18
    pc: int = 0
    pstate: int = 0
    vbar_el1: int = 0
    vbar_el2: int = 0
    flags: int = 0
    target: int = 0
    power_state: int = 0

    def encode(self) -> bytes:
        return _REQ.pack(self.op, self.flags, self.seq, *self.x, self.pc, self.pstate,
                         self.vbar_el1, self.vbar_el2, self.target, self.power_state)


@dataclass(frozen=True, slots=True)
class VcpuReply:
    op: int
    action: int
    seq: int
    flags: int = 0
    el: int = 0
    x: tuple[int, ...] = ZERO18
    pc: int = 0
    pstate: int = 0
    addr: int = 0

    def encode(self) -> bytes:
        return _REP.pack(self.op, self.action, self.seq, self.flags, self.el, *self.x,
                         self.pc, self.pstate, self.addr)


def decode_vcpu_request(data: bytes) -> VcpuRequest:
    if len(data) != _REQ.size:
        raise BadSize(f"vCPU request of {len(data)} bytes, expected {_REQ.size}")
    v = _REQ.unpack(data)
    op, flags = v[0], v[1]
    if op not in OP_NAMES:
        raise BadValue(f"unknown vCPU op {op}")
    if flags & ~spec.REQ_FLAGS_KNOWN:
        raise BadValue(f"unknown vCPU request flags 0x{flags:x}")
    req = VcpuRequest(op, v[2], v[3:21], v[21], v[22], v[23], v[24], flags, v[25], v[26])
    if op == spec.OPS["POWER"] and req.power_state not in spec.POWER_STATES.values():
        raise BadValue(f"unknown power state {req.power_state}")
    return req


_ALLOWED = {spec.OPS[op]: {spec.ACTIONS[a] for a in acts}
            for op, acts in spec.ALLOWED_ACTIONS.items()}


def decode_vcpu_reply(data: bytes, request: VcpuRequest) -> VcpuReply:
    """A reply, checked against the request it answers (as the front-end must)."""
    if len(data) != _REP.size:
        raise BadSize(f"vCPU reply of {len(data)} bytes, expected {_REP.size}")
    v = _REP.unpack(data)
    rep = VcpuReply(v[0], v[1], v[2], v[3], v[4], v[5:23], v[23], v[24], v[25])
    if rep.op != request.op or rep.seq != request.seq:
        raise BadValue(f"reply (op {rep.op}, seq {rep.seq}) does not answer "
                       f"request (op {request.op}, seq {request.seq})")
    if rep.action not in _ALLOWED[request.op]:
        raise BadValue(f"action {rep.action} is not allowed for op {OP_NAMES[request.op]}")
    if rep.flags & ~spec.REP_FLAGS_KNOWN:
        raise BadValue(f"unknown vCPU reply flags 0x{rep.flags:x}")
    if rep.action in (spec.ACTIONS["ENTER"], spec.ACTIONS["RESTORE_IRQ"]) and rep.el not in (1, 2):
        raise BadValue(f"target EL {rep.el} is not 1 or 2")
    return rep
