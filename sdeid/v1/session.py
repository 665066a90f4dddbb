"""The device-socket session: binds one front-end connection to the model.

Pure like the model: `receive_data(bytes) -> bytes` answers everything the
bytes complete; `encode_effects` turns effects raised elsewhere (operator
injections) into frames.  The asyncio transport in sdeid.v1.daemon is a thin
ring around this.  A ProtocolError raised from here means: log it, close
this connection; the Backend (and the dispatcher state) is untouched,
because every request is validated before it reaches the model.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdeid import trace as tr
from sdeid.errors import ConnectionLog, StateError
from sdeid.model.dispatcher import Dispatcher
from sdeid.model.types import (
    ClaimLine,
    Context,
    Effect,
    Kick,
    PlatformConfig,
    RegisterUpdate,
    ReleaseLine,
    Topology,
)
from sdeid.trace import trace
from sdeid.v1 import codec as w
from sdeid.v1 import spec

log = logging.getLogger("sdeid.session")
SUPPORTED_FEATURES = spec.FEATURES_ALL


class ConnState(enum.Enum):
    AWAIT_HELLO = "await-hello"
    READY = "ready"
    CLOSED = "closed"


@dataclass
class Backend:
    """What outlives a connection: the dispatcher and its configuration.

    The dispatcher is created by the first HELLO (the front-end knows the
    topology) unless a state file or an earlier connection provided one."""

    config: PlatformConfig = field(default_factory=PlatformConfig)
    dispatcher: Dispatcher | None = None
    # Called with (kind, data) for things an operator may want to see.
    observe: Callable[[str, dict[str, Any]], None] = lambda kind, data: None
    # Called after a frame changed dispatcher state (persistence hook).
    changed: Callable[[], None] = lambda: None


class Session:
    def __init__(self, backend: Backend, name: str = "fe") -> None:
        self.backend = backend
        self.state = ConnState.AWAIT_HELLO
        self.features = 0
        self.reader = w.FrameReader(w.BACKEND_ACCEPTS)
        self.log = ConnectionLog(log, name)
        self._next_id = 1 << 63  # back-end-initiated ids live in the upper half

    def _set_state(self, new: ConnState) -> None:
        self.log.debug("connection %s -> %s", self.state.value, new.value)
        self.state = new

    @property
    def closed(self) -> bool:
        return self.state == ConnState.CLOSED

    @property
    def dispatcher(self) -> Dispatcher:
        d = self.backend.dispatcher
        assert d is not None, "no dispatcher before HELLO"
        return d

    # ------------------------------------------------------------ inbound

    def receive_data(self, data: bytes) -> bytes:
        """Feed received bytes; returns the bytes to send back."""
        if self.state == ConnState.CLOSED:
            raise w.ProtocolError("data after the connection was closed")
        self.reader.feed(data)
        out: list[bytes] = []
        changed = False
        while True:
            frame = self.reader.next_frame()
            if frame is None:
                break
            changed |= self._handle(frame, out)
            if self.closed:
                break
        if changed:
            self.backend.changed()
        return b"".join(out)

    def eof(self) -> None:
        self._set_state(ConnState.CLOSED)
        self.reader.eof()

    def _handle(self, frame: w.Frame, out: list[bytes]) -> bool:
        """Handle one frame, appending output; True if state may have changed."""
        msg = frame.message
        hid = frame.header.id
        if self.state == ConnState.AWAIT_HELLO:
            if not isinstance(msg, w.Hello):
                raise w.ProtocolError(f"{type(msg).__name__} before HELLO")
            self._hello(msg, hid, out)
            return True
        if isinstance(msg, w.Hello):
            raise w.ProtocolError("a second HELLO on one connection")
        d = self.dispatcher
        if isinstance(msg, w.Call):
            self._check_pe(msg.pe)
            outcome = d.call(msg.pe, msg.fid, msg.args, msg.pc, msg.pstate)
            tr.call(msg.pe, msg.fid, outcome.update)
            self._effects(outcome.effects, out)
            out.append(_reg_reply(outcome.update, outcome.pull, hid, w.Call.CODE))
            return True
        if isinstance(msg, w.Dispatch):
            self._check_pe(msg.pe)
            ctx = Context(msg.x, msg.pc, msg.pstate, msg.sctlr_el1, msg.vbar_el1,
                          msg.sctlr_el2, msg.vbar_el2)
            result = d.dispatch(msg.pe, ctx)
            self._effects(result.effects, out)
            out.append(_reg_reply(result.update, result.pull, hid, w.Dispatch.CODE))
            if result.event is not None:
                trace.debug("DISPATCH pe=%d event=%d", msg.pe, result.event)
                self.backend.observe("SDEI_DISPATCH", {"pe": msg.pe, "event": result.event})
            return result.event is not None
        if isinstance(msg, w.LineLevel):
            self._check_pe(msg.pe)
            if msg.level not in (0, 1):
                raise w.BadPayload(f"LINE_LEVEL level {msg.level} is not 0 or 1")
            self._effects(d.line_level(msg.intid, msg.pe, bool(msg.level)), out)
            if frame.header.need_reply:
                out.append(w.encode(w.Ack(0), id=hid, request=w.LineLevel.CODE, reply=True))
            return True
        if isinstance(msg, w.Reset):
            trace.debug("RESET")
            d.reset()
            self.backend.observe("SDEI_RESET", {})
            out.append(w.encode(w.Ack(0), id=hid, request=w.Reset.CODE, reply=True))
            return True
        if isinstance(msg, w.PePower):
            self._check_pe(msg.pe)
            if msg.state not in spec.PE_POWER_STATES.values():
                raise w.BadPayload(f"PE_POWER state {msg.state} is unknown")
            trace.debug("PE_POWER pe=%d state=%d", msg.pe, msg.state)
            self._effects(d.pe_power(msg.pe, msg.state), out)
            self.backend.observe("SDEI_PE_POWER", {"pe": msg.pe, "state": msg.state})
            out.append(w.encode(w.Ack(0), id=hid, request=w.PePower.CODE, reply=True))
            return True
        if isinstance(msg, w.GetState):
            out.append(w.encode(w.StateReply(0, d.snapshot()), id=hid, reply=True))
            return False
        if isinstance(msg, w.SetState):
            self._set_state_blob(msg.blob, hid, out)
            return True
        raise w.UnknownRequest(f"{type(msg).__name__} is not a front-end request")

    def _hello(self, msg: w.Hello, hid: int, out: list[bytes]) -> None:
        def refuse(status: str, why: str) -> None:
            self.log.error("refusing front-end: %s", why)
            out.append(w.encode(w.HelloReply(spec.PROTOCOL_VERSION, spec.STATUS[status], 0),
                                id=hid, reply=True))
            self._set_state(ConnState.CLOSED)

        if msg.version != spec.PROTOCOL_VERSION:
            return refuse("EPROTO", f"protocol version {msg.version}")
        try:
            topo = Topology(msg.mpidr, msg.nr_spis)
        except ValueError as e:
            return refuse("EINVAL", f"invalid topology: {e}")
        if self.backend.dispatcher is None:
            self.backend.dispatcher = Dispatcher(topo, self.backend.config)
        elif self.backend.dispatcher.topology != topo:
            return refuse("EBUSY", "the state held is for a different topology "
                          f"({self.backend.dispatcher.topology.nr_pes} PEs)")
        self.features = msg.features & SUPPORTED_FEATURES
        out.append(w.encode(w.HelloReply(spec.PROTOCOL_VERSION, 0, self.features),
                            id=hid, reply=True))
        self._set_state(ConnState.READY)
        self.log.info("front-end connected: %d PEs, %d SPIs, features 0x%x",
                      topo.nr_pes, topo.nr_spis, self.features)
        self._reassert(out)

    def _reassert(self, out: list[bytes]) -> None:
        """Lines the state owns are claimed again and due PEs kicked."""
        d = self.dispatcher
        self._effects(tuple(ClaimLine(i, p) for i, p in d.owned_lines()), out)
        self._effects(d.resync(), out)

    def _set_state_blob(self, blob: bytes, hid: int, out: list[bytes]) -> None:
        try:
            new = Dispatcher.restore(blob)
        except StateError as e:
            self.log.error("SET_STATE refused: %s", e)
            out.append(w.encode(w.Ack(spec.STATUS["EINVAL"]), id=hid,
                                request=w.SetState.CODE, reply=True))
            return
        if new.topology != self.dispatcher.topology:
            self.log.error("SET_STATE refused: the blob is for a different topology")
            out.append(w.encode(w.Ack(spec.STATUS["EBUSY"]), id=hid,
                                request=w.SetState.CODE, reply=True))
            return
        self.backend.dispatcher = new
        self._effects(tuple(ClaimLine(i, p) for i, p in new.owned_lines()), out)
        out.append(w.encode(w.Ack(0), id=hid, request=w.SetState.CODE, reply=True))
        self._effects(new.resync(), out)
        self.backend.observe("SDEI_STATE_LOADED", {})

    def _check_pe(self, pe: int) -> None:
        if pe >= self.dispatcher.topology.nr_pes:
            raise w.BadPayload(f"PE index {pe} out of range "
                               f"(topology has {self.dispatcher.topology.nr_pes})")

    # ----------------------------------------------------------- outbound

    def _effects(self, effects: tuple[Effect, ...], out: list[bytes]) -> None:
        for e in effects:
            self._next_id += 1
            if isinstance(e, Kick):
                out.append(w.encode(w.Kick(e.pe), id=self._next_id))
            elif isinstance(e, ClaimLine):
                out.append(w.encode(w.LineClaim(e.intid, e.pe), id=self._next_id))
            elif isinstance(e, ReleaseLine):
                out.append(w.encode(w.LineRelease(e.intid, e.pe), id=self._next_id))

    def encode_error_record(self, event: int, kind: int, address: int) -> bytes:
        """An ERROR_RECORD frame; the caller checks the feature first."""
        self._next_id += 1
        return w.encode(w.ErrorRecord(event, kind, address), id=self._next_id)

    def encode_effects(self, effects: tuple[Effect, ...]) -> bytes:
        """Frames for effects raised outside a front-end request."""
        if self.state != ConnState.READY:
            return b""
        out: list[bytes] = []
        self._effects(effects, out)
        return b"".join(out)


def _reg_reply(u: RegisterUpdate, pull: bool, hid: int, request: int) -> bytes:
    return w.encode(
        w.RegUpdate(u.mask, spec.REPLY_F_PULL if pull else 0, u.x, u.pc, u.pstate, u.elr,
                    u.spsr),
        id=hid, request=request, reply=True)
