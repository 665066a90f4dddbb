"""The back-end side of one smccc-user v2 connection, as a sans-IO core.

Inputs are plain calls (control bytes with the descriptors that came with
them, one vCPU datagram, end of file, an operator's injection); outputs are
an ordered list of `Output` values that the I/O ring carries out in order.
The core never touches a descriptor, a clock or a socket: descriptors are
opaque integers it hands back in `AdoptChannel`/`WriteBlob`/`ReadBlob`/
`CloseFd`.

Order matters in one place: every `Commit` comes before the sends that
follow it, and the ring must make the commit durable against a crash of
this process (a write to a journal; no fsync) before it sends them.  That
is what makes a re-sent request exactly-once: `Backend.replies` keeps the
last reply per PE, and a request whose sequence number matches is answered
from there without touching the model.

The connection's life is one table, `TRANSITIONS`, with an entry for every
(state, input) pair; a pair that maps to None is the peer's protocol error.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdeid import trace as tr
from sdeid.errors import ConnectionLog, StateError
from sdeid.model.abi import EventType, Ret
from sdeid.model.dispatcher import Dispatcher
from sdeid.model.types import (
    REG_ELR,
    REG_PSTATE,
    ClaimLine,
    Context,
    Effect,
    Kick,
    PlatformConfig,
    RegisterUpdate,
    ReleaseLine,
    Topology,
)
from sdeid.proto import codec as c
from sdeid.proto import spec
from sdeid.trace import trace

log = logging.getLogger("sdeid.proto.session")

SUPPORTED_FEATURES = spec.FEATURES_ALL
A = spec.ACTIONS
OP_CALL, OP_PULL, OP_POWER = spec.OPS["CALL"], spec.OPS["PULL"], spec.OPS["POWER"]


# ------------------------------------------------------------------ outputs

@dataclass(frozen=True, slots=True)
class SendControl:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendVcpu:
    pe: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Commit:
    """An input that changed state, to be made durable before what follows."""

    record: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class AdoptChannel:
    pe: int
    fd: int


@dataclass(frozen=True, slots=True)
class CloseFd:
    fd: int


@dataclass(frozen=True, slots=True)
class WriteBlob:
    """Write `blob` to `fd` (a stream socket or a pipe) and close it (SAVE_STATE)."""

    fd: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class ReadBlob:
    """Read `fd` to its end and call `Session.blob_read(tag, data, fd)`; the
    descriptor stays open for the `BlobStatus` that answers it."""

    fd: int
    tag: int


@dataclass(frozen=True, slots=True)
class BlobStatus:
    """LOAD_STATE's answer on its own descriptor: write `status` (i32) on
    `fd` if it is a socket (the front-end fails its incoming migration at
    once on a refusal), then close it."""

    fd: int
    status: int


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A request this side sent (LINE_CLAIM...) was answered."""

    name: str
    tag: int
    status: int


@dataclass(frozen=True, slots=True)
class Observed:
    """Something an operator may want to see (QMP events on the control socket)."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NmiRecord:
    """Deliver QEMU's NMI for vCPU `cpu` as a fatal error record in the GHES
    source `event` notifies (--nmi-ghes): writing it needs QEMU's monitor,
    so the daemon writes it and then triggers `event`."""

    cpu: int
    event: int


Output = (SendControl | SendVcpu | Commit | AdoptChannel | CloseFd | WriteBlob | ReadBlob
          | BlobStatus | RequestDone | Observed | NmiRecord)


# ---------------------------------------------------------- the state table

class ConnState(enum.Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_CHANNELS = "await-channels"
    READY = "ready"
    CLOSED = "closed"


class Input(enum.Enum):
    HELLO = "hello"
    VCPU_CHANNEL = "vcpu-channel"
    CONTROL = "control"          # any other request from the front-end
    REPLY = "reply"              # a reply to a request of ours
    VCPU = "vcpu"                # a vCPU datagram
    EOF = "eof"


S, I = ConnState, Input
# (state, input) -> the state after it, or None: a protocol error.  HELLO's
# and VCPU_CHANNEL's own handlers decide between the states listed (a
# refused HELLO closes; the last channel makes the connection READY).
TRANSITIONS: dict[tuple[ConnState, Input], ConnState | None] = {
    (S.AWAIT_HELLO, I.HELLO): S.AWAIT_CHANNELS,
    (S.AWAIT_HELLO, I.VCPU_CHANNEL): None,
    (S.AWAIT_HELLO, I.CONTROL): None,
    (S.AWAIT_HELLO, I.REPLY): None,
    (S.AWAIT_HELLO, I.VCPU): None,
    (S.AWAIT_HELLO, I.EOF): S.CLOSED,
    (S.AWAIT_CHANNELS, I.HELLO): None,
    (S.AWAIT_CHANNELS, I.VCPU_CHANNEL): S.AWAIT_CHANNELS,
    (S.AWAIT_CHANNELS, I.CONTROL): None,
    (S.AWAIT_CHANNELS, I.REPLY): None,
    (S.AWAIT_CHANNELS, I.VCPU): None,
    (S.AWAIT_CHANNELS, I.EOF): S.CLOSED,
    (S.READY, I.HELLO): None,
    (S.READY, I.VCPU_CHANNEL): None,
    (S.READY, I.CONTROL): S.READY,
    (S.READY, I.REPLY): S.READY,
    (S.READY, I.VCPU): S.READY,
    (S.READY, I.EOF): S.CLOSED,
    (S.CLOSED, I.HELLO): None,
    (S.CLOSED, I.VCPU_CHANNEL): None,
    (S.CLOSED, I.CONTROL): None,
    (S.CLOSED, I.REPLY): None,
    (S.CLOSED, I.VCPU): None,
    (S.CLOSED, I.EOF): S.CLOSED,
}


@dataclass(frozen=True, slots=True)
class StoredReply:
    instance: int
    seq: int
    data: bytes


@dataclass
class Backend:
    """What outlives a connection: the dispatcher, its configuration and the
    last reply per PE (for exactly-once re-sends)."""

    config: PlatformConfig = field(default_factory=PlatformConfig)
    dispatcher: Dispatcher | None = None
    replies: dict[int, StoredReply] = field(default_factory=dict)
    # Most state blobs are tiny; this bounds what LOAD_STATE will read.
    max_blob: int = 16 * 1024 * 1024
    # The static event QEMU's NMI (inject-nmi, a watchdog action) triggers;
    # None: NMIs are reported and refused.
    nmi_event: int | None = None
    # Deliver it as a fatal GHES error record, then the event (NmiRecord).
    nmi_ghes: bool = False
    # NMIs seen and what became of them (query-stats; not state).
    nmi_stats: dict[str, int] = field(default_factory=lambda: {
        "nmi-received": 0, "nmi-delivered": 0, "nmi-refused": 0})


def to_reply(op: int, seq: int, u: RegisterUpdate, pull: bool) -> c.VcpuReply:
    """The model's register update as the architectural operation it is.

    The model states results as registers to write (it predates v2); this
    is the one place that reads them as operations, and the front-end
    computes entry PSTATE itself, so the model's PSTATE of an entry is only
    read for its EL."""
    flags = spec.REP_F_PULL if pull else 0
    if not u.mask:
        return c.VcpuReply(op, A["NONE"], seq, flags)
    if u.writes(REG_ELR):       # COMPLETE_AND_RESUME: restore, then an IRQ-style entry
        return c.VcpuReply(op, A["RESTORE_IRQ"], seq, flags, (u.pstate >> 2) & 3, u.x,
                           u.elr, u.spsr, u.pc)
    if u.writes(REG_PSTATE) and u.mask & ((1 << 18) - 1) == (1 << 18) - 1:
        return c.VcpuReply(op, A["RESTORE"], seq, flags, 0, u.x, u.pc, u.pstate)
    if u.writes(REG_PSTATE):    # a handler entry
        return c.VcpuReply(op, A["ENTER"], seq, flags, (u.pstate >> 2) & 3,
                           u.x[:4] + c.ZERO18[4:], 0, 0, u.pc)
    return c.VcpuReply(op, A["RETURN"], seq, flags, 0, u.x[:4] + c.ZERO18[4:])


class Session:
    """One front-end connection.  Not thread-safe: the ring serialises calls."""

    def __init__(self, backend: Backend, name: str = "fe") -> None:
        self.backend = backend
        self.state = ConnState.AWAIT_HELLO
        self.features = 0
        self.instance = 0
        self.nr_pes = 0
        self.lines: frozenset[int] = frozenset()
        self._nr_spis = 0
        self.reader = c.ControlReader("fe->be")
        self.log = ConnectionLog(log, name)
        self.history: list[ConnState] = [self.state]
        self._channels: dict[int, tuple[int, int]] = {}   # pe -> (fd, mpidr)
        self._next_tag = 1
        self._outstanding: dict[int, tuple[str, dict[str, Any]]] = {}
        # Descriptors received and not yet handed to the ring in an output:
        # closed by abort()/eof(), so no path leaks one.
        self._owned: set[int] = set()

    # ------------------------------------------------------------ plumbing

    def _step(self, inp: Input) -> ConnState:
        nxt = TRANSITIONS[(self.state, inp)]
        if nxt is None:
            raise c.ProtocolError(f"{inp.value} is not allowed in state {self.state.value}")
        return nxt

    def _set_state(self, new: ConnState) -> None:
        if new != self.state:
            self.log.debug("connection %s -> %s", self.state.value, new.value)
            self.state = new
            self.history.append(new)

    @property
    def closed(self) -> bool:
        return self.state == ConnState.CLOSED

    @property
    def dispatcher(self) -> Dispatcher:
        d = self.backend.dispatcher
        if d is None:  # pragma: no cover - READY implies a dispatcher
            raise AssertionError("no dispatcher before HELLO")
        return d

    def _has(self, feature: str | None) -> bool:
        return feature is None or bool(self.features & spec.FEATURES[feature])

    # ------------------------------------------------------------- inbound

    def receive_control(self, data: bytes, fds: tuple[int, ...] = ()) -> list[Output]:
        """Bytes (and descriptors) from the control channel."""
        self._owned.update(fds)
        if self.closed:
            raise c.ProtocolError("data after the connection was closed")
        self.reader.feed(data, fds)
        out: list[Output] = []
        while not self.closed:
            frame = self.reader.next_frame()
            if frame is None:
                break
            self._control(frame, out)
        self.reader.check_drained()
        return out

    def _control(self, f: c.ControlFrame, out: list[Output]) -> None:
        if f.reply:
            self._set_state(self._step(Input.REPLY))
            return self._reply(f, out)
        if f.name == "HELLO":
            self._step(Input.HELLO)
            return self._hello(f, out)
        if f.name == "VCPU_CHANNEL":
            self._step(Input.VCPU_CHANNEL)
            return self._channel(f, out)
        self._set_state(self._step(Input.CONTROL))
        m = spec.CONTROL_BY_NAME[f.name]
        if not self._has(m.feature):
            raise c.ProtocolError(f"{f.name} without the {m.feature} feature agreed")
        d = self.dispatcher
        if f.name == "LINE_LEVEL":
            intid, pe, level, edges = (f.fields[k] for k in ("intid", "pe", "level", "edges"))
            self._check_pe(pe)
            if level not in (0, 1):
                raise c.BadValue(f"LINE_LEVEL level {level} is not 0 or 1")
            out.append(Commit(("line", intid, pe, level, edges)))
            self._line(intid, pe, level, edges, out)
        elif f.name == "RESET":
            out.append(Commit(("reset",)))
            self._reset()
            trace.debug("RESET")
            out.append(Observed("SDEI_RESET", {}))
            out.append(SendControl(c.encode_control("RESET", {"status": 0}, tag=f.tag,
                                                    reply=True)))
            # The front-end handed every line back: the static events'
            # lines are the platform's again from the fresh boot on.
            self._effects(d.static_line_claims(), out)
        elif f.name == "SAVE_STATE":
            out.append(WriteBlob(self._hand(f.fds[0]), d.snapshot()))
            out.append(SendControl(c.encode_control("SAVE_STATE", {"status": 0}, tag=f.tag,
                                                    reply=True)))
        elif f.name == "LOAD_STATE":
            out.append(ReadBlob(self._hand(f.fds[0]), f.tag))
        elif f.name == "NMI":
            self._nmi(f.fields["cpu"], out)
        else:  # pragma: no cover - the reader only passes fe->be requests
            raise AssertionError(f.name)

    def _nmi(self, cpu: int, out: list[Output]) -> None:
        """QEMU's NMI interface fired for vCPU `cpu`: trigger the configured
        event as an operator's sdei-trigger does (committed, exactly once),
        on `cpu` for a private event.  Reported either way; never dropped."""
        b = self.backend
        b.nmi_stats["nmi-received"] += 1
        event = b.nmi_event
        data: dict[str, Any] = {"cpu": cpu, "event": event}
        if event is not None and b.nmi_ghes:
            out.append(NmiRecord(cpu, event))   # the daemon reports it
            return
        if event is None:
            ret = None
            data.update(status=None, delivered=False,
                        reason="no NMI event configured (sdeid --nmi-event N)")
        else:
            ev = self.dispatcher.events.get(event)
            pe = cpu if ev is not None and ev.type == EventType.PRIVATE else None
            ret, trig = self.trigger(event, pe)
            out.extend(trig)
            nmi_triggered(data, ret)
        nmi_outcome(b, self.log, data, "event %d triggered")
        out.append(Observed("SDEI_NMI", data))

    def _line(self, intid: int, pe: int, level: int, edges: int, out: list[Output]) -> None:
        self._effects(self.dispatcher.line_level(intid, pe, bool(level), edges), out)

    def _reset(self) -> None:
        self.dispatcher.reset()
        self.backend.replies.clear()

    def _hello(self, f: c.ControlFrame, out: list[Output]) -> None:
        v = f.fields

        def refuse(status: str, why: str) -> None:
            self.log.error("refusing front-end: %s", why)
            out.append(SendControl(c.encode_control(
                "HELLO", {"version": spec.PROTOCOL_VERSION, "status": spec.STATUS[status]},
                tag=f.tag, reply=True)))
            self._set_state(ConnState.CLOSED)

        if v["version"] != spec.PROTOCOL_VERSION:
            return refuse("EPROTO", f"protocol version {v['version']}")
        if not 1 <= v["nr_pes"] <= spec.MAX_PES:
            return refuse("EINVAL", f"{v['nr_pes']} PEs (1 to {spec.MAX_PES} supported)")
        if v["nr_spis"] > spec.MAX_SPIS:
            return refuse("EINVAL", f"{v['nr_spis']} SPIs (at most {spec.MAX_SPIS})")
        features = v["features"] & SUPPORTED_FEATURES
        lines = frozenset(
            w * 64 + b for w, word in enumerate(v["lines"]) for b in range(64) if word >> b & 1)
        static = self._static_lines()
        for event, intid in sorted(static.items()):
            if not features & spec.FEATURES["LINES"]:
                return refuse("ENOTSUP", f"static event {event} needs INTID {intid}, and the "
                              "front-end intercepts no line (feature LINES not offered)")
            if intid not in lines or (intid >= 32 and intid >= 32 + v["nr_spis"]):
                return refuse("ENOTSUP", f"static event {event} needs INTID {intid}, which "
                              "the front-end cannot intercept")
        self.nr_pes = v["nr_pes"]
        self.instance = v["instance"]
        self.features = features
        self.lines = lines
        self._nr_spis = v["nr_spis"]
        out.append(SendControl(c.encode_control(
            "HELLO", {"version": spec.PROTOCOL_VERSION, "status": 0, "features": self.features},
            tag=f.tag, reply=True)))
        self._set_state(ConnState.AWAIT_CHANNELS)

    def _static_lines(self) -> dict[int, int]:
        """event -> INTID of the static events behind a device interrupt
        (of the state held, which a restored blob may have brought)."""
        d = self.backend.dispatcher
        if d is not None:
            return dict(d.state.static_lines)
        return {e.number: e.intid for e in self.backend.config.static_events
                if e.intid is not None}

    def _channel(self, f: c.ControlFrame, out: list[Output]) -> None:
        pe, mpidr = f.fields["pe"], f.fields["mpidr"]
        fd = f.fds[0]
        if pe >= self.nr_pes or pe in self._channels:
            raise c.BadValue(f"VCPU_CHANNEL for PE {pe} (of {self.nr_pes}) is out of range "
                             "or repeated")
        self._channels[pe] = (fd, mpidr)
        if len(self._channels) < self.nr_pes:
            return
        try:
            topo = Topology(tuple(self._channels[i][1] for i in range(self.nr_pes)),
                            self._nr_spis)
        except ValueError as e:
            raise c.BadValue(f"invalid topology: {e}") from None
        b = self.backend
        if b.dispatcher is None:
            b.dispatcher = Dispatcher(topo, b.config)
        elif b.dispatcher.topology != topo:
            raise c.BadValue("the state held is for a different topology "
                             f"({b.dispatcher.topology.nr_pes} PEs)")
        # Another front-end run (a migration destination, a restarted QEMU)
        # numbers its requests afresh: stored replies are not for it.
        for pe_, r in list(b.replies.items()):
            if r.instance != self.instance:
                del b.replies[pe_]
        self._interceptable()
        out.append(Commit(("ready", self.instance, topo.mpidrs, topo.nr_spis, self.features)))
        for i in range(self.nr_pes):
            out.append(AdoptChannel(i, self._hand(self._channels[i][0])))
        self._set_state(ConnState.READY)
        self.log.info("front-end connected: %d PEs, %d SPIs, features 0x%x, %d lines",
                      topo.nr_pes, topo.nr_spis, self.features, len(self.lines))
        self._reassert(out)

    def _interceptable(self) -> None:
        d = self.dispatcher
        d.interceptable = self.lines if self._has("LINES") else frozenset()

    def _reassert(self, out: list[Output]) -> None:
        """Lines the state owns are claimed again, due PEs kicked."""
        d = self.dispatcher
        if self._has("LINES"):
            self._effects(tuple(ClaimLine(i, p) for i, p in d.owned_lines()), out)
        self._effects(d.resync(), out)

    def _reply(self, f: c.ControlFrame, out: list[Output]) -> None:
        sent = self._outstanding.pop(f.tag, None)
        if sent is None or sent[0] != f.name:
            raise c.BadHeader(f"{f.name} reply with tag {f.tag} answers nothing outstanding")
        status = f.fields["status"]
        if f.name == "LINE_CLAIM":
            intid, pe = sent[1]["intid"], sent[1]["pe"]
            if status:
                # INTERRUPT_BIND refused what the front-end did not
                # advertise, so this is the front-end contradicting itself.
                self.log.error("front-end refused to claim INTID %d (PE %d): status %d",
                               intid, pe, status)
            elif f.fields["level"] not in (0, 1):
                raise c.BadValue(f"LINE_CLAIM reply level {f.fields['level']}")
            elif f.fields["level"] or self.dispatcher.levels.get(
                    self.dispatcher.state.line_key(intid, pe)):
                # The level at the claim is the truth, low included: a
                # level held from the last connection (whose LINE_LEVEL(0)
                # died with it) would otherwise re-dispatch forever.
                level = f.fields["level"]
                out.append(Commit(("line", intid, pe, level, 0)))
                self._line(intid, pe, level, 0, out)
        out.append(RequestDone(f.name, f.tag, status))

    def blob_read(self, tag: int, blob: bytes | None, fd: int) -> list[Output]:
        """The ring finished ReadBlob on `fd` (None: more than max_blob, or
        no end of it in time)."""
        out: list[Output] = []

        def ack(status: str) -> None:
            out.append(BlobStatus(fd, spec.STATUS[status]))
            out.append(SendControl(c.encode_control(
                "LOAD_STATE", {"status": spec.STATUS[status]}, tag=tag, reply=True)))

        if blob is None:
            self.log.error("LOAD_STATE refused: more than %d bytes", self.backend.max_blob)
            ack("EINVAL")
            return out
        try:
            new = Dispatcher.restore(blob)
        except StateError as e:
            self.log.error("LOAD_STATE refused: %s", e)
            ack("EINVAL")
            return out
        if new.topology != self.dispatcher.topology:
            self.log.error("LOAD_STATE refused: the state is for a different topology")
            ack("EBUSY")
            return out
        out.append(Commit(("state", blob)))
        self.backend.dispatcher = new
        self.backend.replies.clear()
        self._interceptable()
        if self._has("LINES"):
            self._effects(tuple(ClaimLine(i, p) for i, p in new.owned_lines()), out)
        ack("OK")
        self._effects(new.resync(), out)
        out.append(Observed("SDEI_STATE_LOADED", {}))
        return out

    def receive_vcpu(self, pe: int, data: bytes) -> list[Output]:
        """One datagram from PE `pe`'s channel."""
        self._step(Input.VCPU)
        req = c.decode_vcpu_request(data)
        b = self.backend
        stored = b.replies.get(pe)
        if stored is not None and stored.instance == self.instance and stored.seq == req.seq:
            # A re-sent request this back-end (or the one it restarted
            # from) already applied: rare, and what an operator (and
            # scripts/kill-test) wants to see happened.
            self.log.info("PE %d: re-sent request %d answered with the stored reply",
                          pe, req.seq)
            return [SendVcpu(pe, stored.data)]
        out: list[Output] = [Commit(("vcpu", self.instance, pe, data))]
        reply = self._vcpu(pe, req, out)
        raw = reply.encode()
        b.replies[pe] = StoredReply(self.instance, req.seq, raw)
        out.append(SendVcpu(pe, raw))
        return out

    def _vcpu(self, pe: int, req: c.VcpuRequest, out: list[Output]) -> c.VcpuReply:
        d = self.dispatcher
        if req.op == OP_CALL:
            outcome = d.call(pe, req.x[0] & 0xFFFFFFFF, req.x[1:6], req.pc, req.pstate)
            tr.call(pe, req.x[0] & 0xFFFFFFFF, outcome.update)
            self._effects(outcome.effects, out)
            return to_reply(req.op, req.seq, outcome.update, outcome.pull)
        if req.op == OP_PULL:
            ctx = Context(req.x, req.pc, req.pstate, 0, req.vbar_el1, 0, req.vbar_el2)
            result = d.dispatch(pe, ctx)
            self._effects(result.effects, out)
            if result.event is not None:
                trace.debug("DISPATCH pe=%d event=%d", pe, result.event)
                out.append(Observed("SDEI_DISPATCH", {"pe": pe, "event": result.event}))
            return to_reply(req.op, req.seq, result.update, result.pull)
        # POWER
        if not self._has("PE_POWER"):
            raise c.ProtocolError("POWER without the PE_POWER feature agreed")
        self._check_pe(req.target)
        trace.debug("PE_POWER pe=%d state=%d", req.target, req.power_state)
        self._effects(d.pe_power(req.target, req.power_state), out)
        out.append(Observed("SDEI_PE_POWER", {"pe": req.target, "state": req.power_state}))
        return c.VcpuReply(req.op, A["NONE"], req.seq)

    def eof(self) -> list[Output]:
        """The control channel ended: close what nobody adopted."""
        self._set_state(self._step(Input.EOF))
        return self._release_fds()

    def abort(self) -> list[Output]:
        """After a ProtocolError: the connection is over; close what it held."""
        self._set_state(ConnState.CLOSED)
        return self._release_fds()

    def _release_fds(self) -> list[Output]:
        self.reader.take_fds()
        self._outstanding.clear()
        fds, self._owned = sorted(self._owned), set()
        return [CloseFd(fd) for fd in fds]

    def _hand(self, fd: int) -> int:
        self._owned.discard(fd)
        return fd

    def _check_pe(self, pe: int) -> None:
        if pe >= self.nr_pes:
            raise c.BadValue(f"PE index {pe} out of range (topology has {self.nr_pes})")

    # ------------------------------------------------------------ outbound

    def _request(self, name: str, fields: dict[str, Any], out: list[Output]) -> int:
        tag = self._next_tag
        self._next_tag = tag % 0xFFFFFFFF + 1
        if spec.CONTROL_BY_NAME[name].reply is not None:
            self._outstanding[tag] = (name, fields)
        out.append(SendControl(c.encode_control(name, fields, tag=tag)))
        return tag

    def _effects(self, effects: tuple[Effect, ...], out: list[Output]) -> None:
        for e in effects:
            if isinstance(e, Kick):
                self._request("KICK", {"pe": e.pe}, out)
            elif isinstance(e, ClaimLine) and self._has("LINES"):
                self._request("LINE_CLAIM", {"intid": e.intid, "pe": e.pe}, out)
            elif isinstance(e, ReleaseLine) and self._has("LINES"):
                self._request("LINE_RELEASE", {"intid": e.intid, "pe": e.pe}, out)

    def trigger(self, event: int, pe: int | None = None) -> tuple[int, list[Output]]:
        """An operator (or a platform source) raises `event`: the model's
        return code, and the outputs (a commit, kicks)."""
        ret, effects = self.dispatcher.trigger(event, pe)
        out: list[Output] = []
        if ret == 0:
            out.append(Commit(("trigger", event, -1 if pe is None else pe)))
        # Seen by operators whether or not the event could be raised.
        out.append(Observed("SDEI_TRIGGER", {"event": event, "pe": pe, "status": int(ret)}))
        if ret == 0 and self.state == ConnState.READY:
            self._effects(effects, out)
        return int(ret), out


def nmi_triggered(data: dict[str, Any], ret: int) -> None:
    """An NMI's report (SDEI_NMI) once its event was triggered with `ret`."""
    data.update(status=ret, delivered=ret == 0)
    if ret:
        data["reason"] = (f"event {data['event']} cannot be triggered: {Ret(ret).name}"
                          + (" (the guest has not registered it)"
                             if ret == Ret.DENIED else ""))


def nmi_outcome(backend: Backend, log: Any, data: dict[str, Any], done: str) -> None:
    """Count and log an NMI's report, however it was delivered: `done`
    says how, with the event's number (%d)."""
    backend.nmi_stats["nmi-delivered" if data["delivered"] else "nmi-refused"] += 1
    if data["delivered"]:
        log.info("NMI for CPU %d: " + done, data["cpu"], data["event"])
    else:
        log.warning("NMI for CPU %d refused: %s", data["cpu"], data["reason"])


def replay(backend: Backend, records: list[tuple[Any, ...]]) -> None:
    """Re-apply committed inputs (a journal) to `backend`, in order.

    The model is deterministic, so the same inputs give the same state and
    the same stored replies as before the crash.  Outputs are dropped: the
    front-end saw them already, or will re-send the request that caused
    them and get the stored reply."""
    sess = Session(backend, name="replay")
    for rec in records:
        kind = rec[0]
        if kind == "ready":
            _kind, instance, mpidrs, nr_spis, features = rec
            topo = Topology(tuple(mpidrs), nr_spis)
            if backend.dispatcher is None:
                backend.dispatcher = Dispatcher(topo, backend.config)
            elif backend.dispatcher.topology != topo:
                raise StateError("journal names a different topology than its checkpoint")
            sess.instance, sess.features, sess.nr_pes = instance, features, topo.nr_pes
            for pe_, r in list(backend.replies.items()):
                if r.instance != instance:
                    del backend.replies[pe_]
            sess.state = ConnState.READY
            continue
        if backend.dispatcher is None:
            raise StateError(f"journal record {kind!r} before any topology")
        out: list[Output] = []
        if kind == "vcpu":
            _kind, instance, pe, data = rec
            req = c.decode_vcpu_request(data)
            sess.instance = instance
            reply = sess._vcpu(pe, req, out)
            backend.replies[pe] = StoredReply(instance, req.seq, reply.encode())
        elif kind == "line":
            sess._line(rec[1], rec[2], rec[3], rec[4], out)
        elif kind == "reset":
            sess._reset()
        elif kind == "trigger":
            backend.dispatcher.trigger(rec[1], None if rec[2] < 0 else rec[2])
        elif kind == "state":
            backend.dispatcher = Dispatcher.restore(rec[1])
            backend.replies.clear()
        else:
            raise StateError(f"unknown journal record {kind!r}")


def observe_all(outputs: list[Output], sink: Callable[[str, dict[str, Any]], None]) -> None:
    for o in outputs:
        if isinstance(o, Observed):
            sink(o.kind, o.data)
