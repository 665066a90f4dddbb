"""Frames to typed messages and back, with strict validation.

The structs are built from sdeid.v1.spec (the single source of truth) and
compiled once at import, because every hypercall crosses this code twice.
The rest of sdeid sees only the frozen dataclasses defined here.

`FrameReader` is a pure incremental parser in the manner of h11: feed it
bytes, take frames out; it raises ProtocolError (the peer's fault) for
anything the protocol does not allow and never buffers more than one
maximal frame.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import construct as c

from sdeid.errors import PeerError
from sdeid.v1 import spec


class ProtocolError(PeerError):
    """The peer sent something the protocol does not allow."""


class TruncatedFrame(ProtocolError):
    """The connection ended inside a frame."""


class OversizedFrame(ProtocolError):
    """A header announced a payload larger than the protocol allows."""


class UnknownRequest(ProtocolError):
    """A request code that this side does not know or does not accept."""


class BadFlags(ProtocolError):
    """Unknown flag bits, a wrong version, or a reply/need-reply mix-up."""


class BadPayload(ProtocolError):
    """A payload of the wrong size, or with values out of range."""


_SCALARS = {
    "u8": c.Int8ul, "u16": c.Int16ul, "u32": c.Int32ul, "u64": c.Int64ul,
    "i32": c.Int32sl, "i64": c.Int64sl,
}


def _struct_for(layout: spec.Layout) -> c.Struct:
    fields = []
    for name, ftype in layout:
        if isinstance(ftype, str):
            sub = c.GreedyBytes if ftype == "bytes" else _SCALARS[ftype]
        else:
            elem, count = ftype
            sub = c.Array(count if isinstance(count, int) else c.this[count], _SCALARS[elem])
        fields.append(name / sub)
    return c.Struct(*fields)


_FORMATS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i32": "i", "i64": "q"}


def _flat_format(layout: spec.Layout) -> struct.Struct | None:
    """A fixed-size layout compiled down to one struct.Struct.

    construct's own compiled parsers cost about 13 us per CALL frame on this
    machine against about 1 us for struct, and every hypercall pays that
    twice; so fixed layouts (all of the hot ones) run on struct, generated
    from the same spec tables, while construct keeps the variable layouts.
    (tests/test_codec.py checked that both paths agree; removed with protocol 1.)"""
    fmt = "<"
    for _name, ftype in layout:
        if isinstance(ftype, str):
            if ftype not in _FORMATS:
                return None
            fmt += _FORMATS[ftype]
        else:
            elem, count = ftype
            if not isinstance(count, int):
                return None
            fmt += _FORMATS[elem] * count
    return struct.Struct(fmt)


_header = _flat_format(spec.HEADER_FIELDS)
assert _header is not None and _header.size == spec.HEADER_SIZE
HEADER: struct.Struct = _header
HEADER_SIZE = spec.HEADER_SIZE


# --------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    features: int
    nr_spis: int
    mpidr: tuple[int, ...]
    CODE: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class HelloReply:
    version: int
    status: int
    features: int
    CODE: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class Call:
    pe: int
    fid: int
    args: tuple[int, ...]
    pc: int
    pstate: int
    CODE: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class RegUpdate:
    mask: int
    flags: int
    x: tuple[int, ...]
    pc: int
    pstate: int
    elr: int
    spsr: int
    CODE: ClassVar[int] = 0  # the reply to CALL (2) and DISPATCH (3)


@dataclass(frozen=True, slots=True)
class Dispatch:
    pe: int
    x: tuple[int, ...]
    pc: int
    pstate: int
    sctlr_el1: int
    vbar_el1: int
    sctlr_el2: int
    vbar_el2: int
    CODE: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class LineLevel:
    intid: int
    pe: int
    level: int
    CODE: ClassVar[int] = 4


@dataclass(frozen=True, slots=True)
class Reset:
    CODE: ClassVar[int] = 5


@dataclass(frozen=True, slots=True)
class Ack:
    status: int
    CODE: ClassVar[int] = 0  # the reply to RESET, PE_POWER, SET_STATE, one-way+NEED_REPLY


@dataclass(frozen=True, slots=True)
class PePower:
    pe: int
    state: int
    CODE: ClassVar[int] = 6


@dataclass(frozen=True, slots=True)
class GetState:
    CODE: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class StateReply:
    status: int
    blob: bytes
    CODE: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class SetState:
    blob: bytes
    CODE: ClassVar[int] = 8


@dataclass(frozen=True, slots=True)
class Kick:
    pe: int
    CODE: ClassVar[int] = 32


@dataclass(frozen=True, slots=True)
class LineClaim:
    intid: int
    pe: int
    CODE: ClassVar[int] = 33


@dataclass(frozen=True, slots=True)
class LineRelease:
    intid: int
    pe: int
    CODE: ClassVar[int] = 34


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    event: int
    kind: int
    address: int
    CODE: ClassVar[int] = 35


Message = (Hello | HelloReply | Call | RegUpdate | Dispatch | LineLevel | Reset | Ack
           | PePower | GetState | StateReply | SetState | Kick | LineClaim | LineRelease
           | ErrorRecord)

REQUEST_TYPES: dict[int, type] = {
    1: Hello, 2: Call, 3: Dispatch, 4: LineLevel, 5: Reset, 6: PePower,
    7: GetState, 8: SetState, 32: Kick, 33: LineClaim, 34: LineRelease, 35: ErrorRecord,
}
REPLY_TYPES: dict[int, type] = {
    1: HelloReply, 2: RegUpdate, 3: RegUpdate, 5: Ack, 6: Ack, 7: StateReply, 8: Ack,
    4: Ack,  # LINE_LEVEL sent with NEED_REPLY
}


@dataclass(frozen=True, slots=True)
class Header:
    request: int
    flags: int
    size: int
    id: int

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & spec.FLAG_REPLY)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & spec.FLAG_NEED_REPLY)


@dataclass(frozen=True, slots=True)
class Frame:
    header: Header
    message: Any  # one of the Message classes


class _Codec:
    """Encoder/decoder for one payload layout and its dataclass."""

    def __init__(self, layout: spec.Layout, cls: type) -> None:
        self.layout = layout
        self.cls = cls
        self.struct = _struct_for(layout).compile()
        self.flat = _flat_format(layout)
        self.fixed = spec.fixed_size(layout)
        self.min = spec.min_size(layout)
        # Array-length fields are derived from the array, not stored.
        self.counts = {ft[1]: name for name, ft in layout
                       if not isinstance(ft, str) and isinstance(ft[1], str)}
        self.arrays = {name: ft for name, ft in layout if not isinstance(ft, str)}
        self.fields = [f.name for f in dataclasses.fields(cls)]
        expected = [n for n, _ in layout if n != "reserved" and n not in self.counts]
        if self.fields != expected:  # pragma: no cover - caught at import
            raise AssertionError(f"{cls.__name__} fields {self.fields} != layout {expected}")
        # For the flat path: per layout field, its slice of the flat tuple.
        self.slices: list[tuple[str, int, int | None]] = []
        pos = 0
        for name, ftype in layout:
            if isinstance(ftype, str):
                self.slices.append((name, pos, None))
                pos += 1
            elif isinstance(ftype[1], int):
                self.slices.append((name, pos, pos + ftype[1]))
                pos += ftype[1]
        self.reserved_at = [p for n, p, e in self.slices if n == "reserved"]
        self.field_slices = [(p, e) for n, p, e in self.slices if n != "reserved"]

    def encode(self, msg: Any) -> bytes:
        flat_struct = self.flat
        if flat_struct is not None:
            flat: list[int] = []
            for name, _p, end in self.slices:
                if name == "reserved":
                    flat.append(0)
                elif end is None:
                    flat.append(getattr(msg, name))
                else:
                    flat.extend(getattr(msg, name))
            try:
                return flat_struct.pack(*flat)
            except struct.error as e:
                raise ValueError(f"cannot encode {msg!r}: {e}") from e
        return self.encode_construct(msg)

    def encode_construct(self, msg: Any) -> bytes:
        values: dict[str, Any] = {}
        for name, _ftype in self.layout:
            if name == "reserved":
                values[name] = 0
            elif name in self.counts:
                values[name] = len(getattr(msg, self.counts[name]))
            else:
                values[name] = getattr(msg, name)
        try:
            return bytes(self.struct.build(values))
        except (c.ConstructError, ValueError, TypeError, OverflowError) as e:
            raise ValueError(f"cannot encode {msg!r}: {e}") from e

    def decode(self, payload: bytes) -> Any:
        size = len(payload)
        if self.fixed is not None and size != self.fixed:
            raise BadPayload(f"{self.cls.__name__} payload is {size} bytes, expected {self.fixed}")
        if size < self.min:
            raise BadPayload(f"{self.cls.__name__} payload is {size} bytes, at least {self.min}")
        flat_struct = self.flat
        if flat_struct is not None:
            flat = flat_struct.unpack(payload)
            for p in self.reserved_at:
                if flat[p]:
                    raise BadPayload(f"{self.cls.__name__} reserved field is not zero")
            return self.cls(*[flat[p] if e is None else flat[p:e] for p, e in self.field_slices])
        return self.decode_construct(payload)

    def decode_construct(self, payload: bytes) -> Any:
        size = len(payload)
        try:
            parsed = self.struct.parse(payload)
        except (c.ConstructError, struct.error) as e:  # compiled parsers raise struct.error
            raise BadPayload(f"{self.cls.__name__} payload does not parse: {e}") from e
        if "reserved" in parsed and parsed["reserved"] != 0:
            raise BadPayload(f"{self.cls.__name__} reserved field is not zero")
        if self.counts and self.fixed is None:
            # An array sized by a field must account for the whole payload.
            used = self.min + sum(
                spec.SCALAR_SIZES[self.arrays[arr][0]] * parsed[cnt]
                for cnt, arr in self.counts.items())
            if used != size:
                raise BadPayload(f"{self.cls.__name__} payload is {size} bytes, "
                                 f"its counts say {used}")
        args = []
        for name in self.fields:
            v = parsed[name]
            args.append(tuple(v) if isinstance(v, list) else v)
        return self.cls(*args)


_REQ_CODECS: dict[int, _Codec] = {}
_REP_CODECS: dict[int, _Codec] = {}
for _m in spec.MESSAGES:
    _REQ_CODECS[_m.code] = _Codec(_m.request, REQUEST_TYPES[_m.code])
    if _m.reply is not None:
        _REP_CODECS[_m.code] = _Codec(_m.reply, REPLY_TYPES[_m.code])
    elif _m.direction == "fe->be":
        _REP_CODECS[_m.code] = _Codec(spec.Ack, Ack)

_CODEC_BY_TYPE: dict[tuple[type, int], _Codec] = {}
for _code, _cd in _REQ_CODECS.items():
    _CODEC_BY_TYPE[(_cd.cls, _code)] = _cd
for _code, _cd in _REP_CODECS.items():
    _CODEC_BY_TYPE[(_cd.cls, _code)] = _cd


def encode(msg: Any, *, id: int, request: int | None = None, reply: bool = False,
           need_reply: bool = False) -> bytes:
    """One frame.  `request` is needed for replies whose type serves several
    requests (RegUpdate, Ack); it defaults to the message's own code."""
    code = request if request is not None else msg.CODE
    codec = _CODEC_BY_TYPE.get((type(msg), code))
    if codec is None:
        raise ValueError(f"{type(msg).__name__} is not a payload of request {code}")
    payload = codec.encode(msg)
    flags = spec.PROTOCOL_VERSION | (spec.FLAG_REPLY if reply else 0) | (
        spec.FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(code, flags, len(payload), id) + payload


def decode_header(data: bytes) -> Header:
    header = Header(*HEADER.unpack(data))
    if header.flags & ~spec.FLAG_KNOWN:
        raise BadFlags(f"unknown flag bits 0x{header.flags & ~spec.FLAG_KNOWN:x}")
    if header.flags & spec.FLAG_VERSION_MASK != spec.PROTOCOL_VERSION:
        raise BadFlags(f"header version {header.flags & spec.FLAG_VERSION_MASK}, "
                       f"expected {spec.PROTOCOL_VERSION}")
    if header.is_reply and header.need_reply:
        raise BadFlags("a reply cannot ask for a reply")
    if header.size > spec.MAX_PAYLOAD:
        raise OversizedFrame(f"payload of {header.size} bytes exceeds {spec.MAX_PAYLOAD}")
    if header.request not in spec.BY_CODE:
        raise UnknownRequest(f"unknown request code {header.request}")
    return header


def decode_payload(header: Header, payload: bytes) -> Any:
    codecs = _REP_CODECS if header.is_reply else _REQ_CODECS
    codec = codecs.get(header.request)
    if codec is None:
        raise UnknownRequest(f"request {header.request} has no reply")
    return codec.decode(payload)


def decode(frame: bytes) -> Frame:
    """One complete frame (exactly) to a Frame."""
    if len(frame) < HEADER_SIZE:
        raise TruncatedFrame(f"frame of {len(frame)} bytes is shorter than a header")
    header = decode_header(frame[:HEADER_SIZE])
    if len(frame) != HEADER_SIZE + header.size:
        raise BadPayload(f"frame is {len(frame)} bytes, header says {HEADER_SIZE + header.size}")
    return Frame(header, decode_payload(header, frame[HEADER_SIZE:]))


class FrameReader:
    """Incremental frame parser: feed() bytes, then next_frame() until None.

    `accept` limits which (request, is_reply) pairs the owner accepts; others
    are UnknownRequest.  After an error the reader is unusable (the session
    closes the connection)."""

    def __init__(self, accept: set[tuple[int, bool]] | None = None) -> None:
        self._buf = bytearray()
        self._header: Header | None = None
        self._accept = accept
        self._broken = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> Frame | None:
        if self._broken:
            raise ProtocolError("reader already failed")
        try:
            if self._header is None:
                if len(self._buf) < HEADER_SIZE:
                    return None
                header = decode_header(bytes(self._buf[:HEADER_SIZE]))
                if self._accept is not None and (header.request, header.is_reply) \
                        not in self._accept:
                    kind = "reply" if header.is_reply else "request"
                    raise UnknownRequest(
                        f"{kind} {spec.BY_CODE[header.request].name} is not accepted here")
                del self._buf[:HEADER_SIZE]
                self._header = header
            header = self._header
            if len(self._buf) < header.size:
                return None
            payload = bytes(self._buf[:header.size])
            del self._buf[:header.size]
            self._header = None
            return Frame(header, decode_payload(header, payload))
        except ProtocolError:
            self._broken = True
            raise

    def eof(self) -> None:
        """The peer closed: anything half-received is a truncated frame."""
        if self._header is not None or self._buf:
            self._broken = True
            raise TruncatedFrame(
                f"connection closed inside a frame ({len(self._buf)} bytes pending)")


# Which frames each side accepts.
BACKEND_ACCEPTS = {(m.code, False) for m in spec.MESSAGES if m.direction == "fe->be"}
FRONTEND_ACCEPTS = ({(m.code, False) for m in spec.MESSAGES if m.direction == "be->fe"}
                    | {(m.code, True) for m in spec.MESSAGES if m.direction == "fe->be"})
