"""A front-end peer that speaks the device protocol as QEMU does.

It owns simulated vCPUs (registers only) and applies every reply the way
the QEMU device must: allowances checked, registers written in the
protocol's order, PULL honoured, kicks turned into DISPATCH pulls, claimed
lines reported with LINE_LEVEL.  Tests and the benchmark drive the daemon
through it over a real socket.  Blocking sockets keep it simple and fast;
async tests run it in a thread.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from sdeid.model.abi import U64
from sdeid.wire import codec as w
from sdeid.wire import spec


class FrontEndError(Exception):
    """The back-end did something a correct back-end never does."""


@dataclass
class VCpu:
    """The registers a dispatch can read or write, with EL1 and EL2 banks."""

    x: list[int] = field(default_factory=lambda: [0] * 31)
    pc: int = 0x40080000
    pstate: int = 0x3C5          # EL1h, DAIF masked
    elr: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    spsr: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    sctlr_el1: int = 0x30D0199D
    vbar_el1: int = 0x40081000
    sctlr_el2: int = 0
    vbar_el2: int = 0

    @property
    def el(self) -> int:
        return (self.pstate >> 2) & 3


def apply_registers(v: VCpu, u: Any, allowed: int) -> None:
    """Write a register update (wire RegUpdate or model RegisterUpdate: both
    have mask, x, pc, pstate, elr, spsr) into `v`, in the protocol's order:
    x0..x17, SPSR and ELR of the new PSTATE's EL, PSTATE, PC."""
    if u.mask & ~allowed:
        raise FrontEndError(f"update writes 0x{u.mask & ~allowed:x} outside 0x{allowed:x}")
    for i in range(18):
        if u.mask & (1 << i):
            v.x[i] = u.x[i]
    new_el = ((u.pstate >> 2) & 3) if u.mask & (1 << spec.REG_PSTATE) else v.el
    if u.mask & (1 << spec.REG_SPSR):
        v.spsr[new_el] = u.spsr
    if u.mask & (1 << spec.REG_ELR):
        v.elr[new_el] = u.elr
    if u.mask & (1 << spec.REG_PSTATE):
        v.pstate = u.pstate
    if u.mask & (1 << spec.REG_PC):
        v.pc = u.pc


class FrontEnd:
    """Connect, HELLO, then call/dispatch/line operations on PEs."""

    def __init__(self, path: str, mpidrs: list[int] | tuple[int, ...], nr_spis: int = 64,
                 features: int = spec.FEATURES_ALL, timeout: float = 10.0) -> None:
        self.path = path
        self.mpidrs = tuple(mpidrs)
        self.nr_spis = nr_spis
        self.offered = features
        self.timeout = timeout
        self.vcpus = [VCpu() for _ in self.mpidrs]
        self.kicked: set[int] = set()
        self.claimed: set[tuple[int, int]] = set()
        self.levels: dict[tuple[int, int], int] = {}
        self.gic_seen: list[tuple[int, int, int]] = []  # (intid, pe, level) the GIC got
        self.error_records: list[tuple[int, int, int]] = []  # (event, kind, address)
        self.features = 0
        self.sock: socket.socket | None = None
        self.reader = w.FrameReader(w.FRONTEND_ACCEPTS)
        self._id = 0
        self.log: list[str] = []

    # -------------------------------------------------------------- plumbing

    def connect(self) -> int:
        """Connect and HELLO; returns the HELLO status (0 = accepted)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s
        self.reader = w.FrameReader(w.FRONTEND_ACCEPTS)
        reply = self._exchange(w.Hello(spec.PROTOCOL_VERSION, self.offered, self.nr_spis,
                                       self.mpidrs))
        assert isinstance(reply, w.HelloReply)
        self.features = reply.features
        return reply.status

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        # Without a back-end every line goes back to the GIC.
        self.claimed.clear()

    def __enter__(self) -> FrontEnd:
        status = self.connect()
        if status != 0:
            self.close()
            raise FrontEndError(f"HELLO refused with status {status}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg: object, need_reply: bool = False) -> int:
        assert self.sock is not None, "not connected"
        self._id += 1
        self.sock.sendall(w.encode(msg, id=self._id, need_reply=need_reply))
        return self._id

    def _exchange(self, msg: object) -> object:
        rid = self._send(msg, need_reply=True)
        return self._wait_reply(rid, type(msg).CODE)  # type: ignore[attr-defined]

    def _wait_reply(self, rid: int, code: int) -> object:
        while True:
            frame = self._next_frame()
            if frame.header.is_reply:
                if frame.header.id != rid or frame.header.request != code:
                    raise FrontEndError(f"reply {frame.header} does not match request {rid}")
                return frame.message
            self._backend_message(frame.message)

    def _next_frame(self) -> w.Frame:
        assert self.sock is not None
        while True:
            frame = self.reader.next_frame()
            if frame is not None:
                return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("back-end closed the connection")
            self.reader.feed(data)

    def drain(self, wait: float = 0.0) -> None:
        """Process back-end messages already sent (kicks raised by operator
        triggers or line levels), waiting up to `wait` seconds for the first."""
        assert self.sock is not None
        self.sock.settimeout(wait if wait > 0 else 0.0001)
        try:
            while True:
                frame = self.reader.next_frame()
                if frame is None:
                    data = self.sock.recv(65536)
                    if not data:
                        raise ConnectionError("back-end closed the connection")
                    self.reader.feed(data)
                    self.sock.settimeout(0.0001)
                    continue
                if frame.header.is_reply:
                    raise FrontEndError("unsolicited reply")
                self._backend_message(frame.message)
        except (TimeoutError, BlockingIOError):
            pass
        finally:
            self.sock.settimeout(self.timeout)

    def _backend_message(self, msg: object) -> None:
        if isinstance(msg, w.Kick):
            self._check_pe(msg.pe)
            self.kicked.add(msg.pe)
        elif isinstance(msg, w.LineClaim):
            key = (msg.intid, msg.pe)
            self.claimed.add(key)
            self._send(w.LineLevel(msg.intid, msg.pe, self.levels.get(key, 0)))
        elif isinstance(msg, w.ErrorRecord):
            if not self.features & spec.FEATURES["ERROR_RECORDS"]:
                raise FrontEndError("ERROR_RECORD without the ERROR_RECORDS feature")
            self.error_records.append((msg.event, msg.kind, msg.address))
        elif isinstance(msg, w.LineRelease):
            key = (msg.intid, msg.pe)
            if key not in self.claimed:
                raise FrontEndError(f"release of unclaimed line {key}")
            self.claimed.discard(key)
            self.gic_seen.append((msg.intid, msg.pe, self.levels.get(key, 0)))
        else:
            raise FrontEndError(f"unexpected {type(msg).__name__} from the back-end")
        self.log.append(type(msg).__name__)

    def _check_pe(self, pe: int) -> None:
        if not 0 <= pe < len(self.vcpus):
            raise FrontEndError(f"back-end named PE {pe}")

    # -------------------------------------------------------------- vCPU ops

    def apply(self, pe: int, u: w.RegUpdate, allowed: int) -> None:
        """Write a REG_UPDATE into vCPU `pe`, as the QEMU device does."""
        if u.flags & ~spec.REPLY_F_PULL:
            raise FrontEndError(f"unknown reply flags 0x{u.flags:x}")
        apply_registers(self.vcpus[pe], u, allowed)

    def call(self, pe: int, fid: int, *args: int) -> int:
        """vCPU `pe` executes HVC with x0 = fid, x1.. = args; returns x0 after."""
        self._check_pe(pe)
        v = self.vcpus[pe]
        v.x[0] = fid
        a = [(int(x) & U64) for x in args] + [0] * (5 - len(args))
        for i, val in enumerate(a[:5]):
            v.x[1 + i] = val
        v.pc += 4  # the return address is the instruction after the HVC
        reply = self._exchange(w.Call(pe, fid & 0xFFFFFFFF, tuple(a[:5]), v.pc, v.pstate))
        assert isinstance(reply, w.RegUpdate)
        allowed = (spec.ALLOW_CALL_CONTEXT if fid in spec.CONTEXT_SWITCH_FIDS
                   else spec.ALLOW_CALL)
        self.apply(pe, reply, allowed)
        if reply.flags & spec.REPLY_F_PULL:
            self.kicked.add(pe)
        return v.x[0]

    def dispatch(self, pe: int) -> int | None:
        """vCPU `pe` pulls; returns the event entered (x0) or None."""
        self._check_pe(pe)
        self.kicked.discard(pe)
        v = self.vcpus[pe]
        reply = self._exchange(w.Dispatch(pe, tuple(v.x[:18]), v.pc, v.pstate, v.sctlr_el1,
                                          v.vbar_el1, v.sctlr_el2, v.vbar_el2))
        assert isinstance(reply, w.RegUpdate)
        self.apply(pe, reply, spec.ALLOW_DISPATCH)
        if reply.flags & spec.REPLY_F_PULL:
            self.kicked.add(pe)
        return v.x[0] if reply.mask else None

    def pump(self, limit: int = 64) -> list[tuple[int, int]]:
        """Serve outstanding kicks; returns (pe, event) for each handler entry."""
        entered = []
        for _ in range(limit):
            if not self.kicked:
                break
            pe = min(self.kicked)
            ev = self.dispatch(pe)
            if ev is not None:
                entered.append((pe, ev))
        return entered

    def set_line(self, intid: int, pe: int, level: int) -> None:
        """A device drives an interrupt line."""
        key = (intid, pe)
        self.levels[key] = level
        if key in self.claimed:
            self._send(w.LineLevel(intid, pe, level))
        else:
            self.gic_seen.append((intid, pe, level))

    def reset(self) -> int:
        self.claimed.clear()
        self.kicked.clear()
        reply = self._exchange(w.Reset())
        assert isinstance(reply, w.Ack)
        return reply.status

    def pe_power(self, pe: int, state: int) -> int:
        reply = self._exchange(w.PePower(pe, state))
        assert isinstance(reply, w.Ack)
        return reply.status

    def get_state(self) -> bytes:
        reply = self._exchange(w.GetState())
        assert isinstance(reply, w.StateReply)
        if reply.status != 0:
            raise FrontEndError(f"GET_STATE status {reply.status}")
        return reply.blob

    def set_state(self, blob: bytes) -> int:
        self.claimed.clear()
        reply = self._exchange(w.SetState(blob))
        assert isinstance(reply, w.Ack)
        return reply.status

    def sync(self) -> None:
        """A round trip, so every message the back-end sent before is seen."""
        rid = self._send(w.LineLevel(0, 0, 0), need_reply=True)
        self._wait_reply(rid, w.LineLevel.CODE)
