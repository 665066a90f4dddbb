"""A sans-IO smccc-user v2 front-end: what the QEMU device does, in Python.

Used to test the back-end in memory (paired with sdeid.proto.session) and
over real sockets, and by the benchmarks.  `Vcpu` applies a reply's
architectural operation the way the QEMU series' target/arm helpers do, so
tests can check the registers a guest would see.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdeid import cper
from sdeid.proto import codec as c
from sdeid.proto import spec

A = spec.ACTIONS
PSTATE_DAIF = 0xF << 6
PSTATE_SP = 1
U64 = (1 << 64) - 1


@dataclass
class Vcpu:
    """The registers of one vCPU that the protocol can touch."""

    x: list[int] = field(default_factory=lambda: [0] * 31)
    pc: int = 0x40080000
    pstate: int = 0x3C5            # EL1h, DAIF masked
    elr: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    spsr: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    vbar_el1: int = 0
    vbar_el2: int = 0
    has_el2: bool = False

    @property
    def el(self) -> int:
        return (self.pstate >> 2) & 3

    def entry_pstate(self, el: int) -> int:
        # What target/arm computes for an exception entry to AArch64 ELx
        # from this CPU's features; the model CPU has none of PAN/SSBS/MTE.
        return (self.pstate & (0xF << 28)) | (el << 2) | PSTATE_SP | PSTATE_DAIF

    def check_el(self, el: int) -> None:
        if el not in (1, 2) or (el == 2 and not self.has_el2):
            raise c.BadValue(f"EL{el} does not exist on this vCPU")

    def apply(self, rep: c.VcpuReply) -> None:
        if rep.action == A["NONE"]:
            return
        if rep.action == A["RETURN"]:
            self.x[0:4] = rep.x[0:4]
            return
        if rep.action == A["ENTER"]:
            self.check_el(rep.el)
            self.x[0:4] = rep.x[0:4]
            self.pstate = self.entry_pstate(rep.el)
            self.pc = rep.addr
            return
        # RESTORE, RESTORE_IRQ: the restored PSTATE must be an AArch64 state
        # the vCPU can be in.
        if rep.pstate & 0x10 or ((rep.pstate >> 2) & 3) > (2 if self.has_el2 else 1):
            raise c.BadValue(f"restored PSTATE 0x{rep.pstate:x} is not allowed")
        self.x[0:18] = rep.x
        self.pc, self.pstate = rep.pc, rep.pstate
        if rep.action == A["RESTORE_IRQ"]:
            self.check_el(rep.el)
            self.elr[rep.el], self.spsr[rep.el] = self.pc, self.pstate
            self.pstate = self.entry_pstate(rep.el)
            self.pc = rep.addr


class FrontendCore:
    """The front-end's protocol state: handshake, sequence numbers, line
    claims (answered from `levels`), kicks seen, replies validated."""

    def __init__(self, mpidrs: tuple[int, ...], *, nr_spis: int = 64,
                 features: int = spec.FEATURES_ALL, lines: set[int] | None = None,
                 instance: int = 0x5EED) -> None:
        self.mpidrs = mpidrs
        self.nr_spis = nr_spis
        self.offered = features
        self.features = 0
        self.lines = set(range(16, 32 + nr_spis)) if lines is None else set(lines)
        self.instance = instance
        self.reader = c.ControlReader("be->fe")
        self.vcpus = [Vcpu() for _ in mpidrs]
        self.seq = [0] * len(mpidrs)
        self.in_flight: dict[int, c.VcpuRequest] = {}
        self.kicked: set[int] = set()
        self.claimed: set[tuple[int, int]] = set()
        self.levels: dict[tuple[int, int], int] = {}
        self.hello_reply: dict[str, Any] | None = None
        self._tag = 0

    def hello(self) -> bytes:
        bitmap = [0] * spec.LINE_BITMAP_WORDS
        for intid in self.lines:
            bitmap[intid // 64] |= 1 << (intid % 64)
        self._tag += 1
        return c.encode_control("HELLO", {
            "version": spec.PROTOCOL_VERSION, "nr_pes": len(self.mpidrs),
            "features": self.offered, "instance": self.instance, "nr_spis": self.nr_spis,
            "lines": tuple(bitmap)}, tag=self._tag)

    def channel(self, pe: int) -> bytes:
        """The VCPU_CHANNEL frame; its descriptor is attached by the caller."""
        return c.encode_control("VCPU_CHANNEL", {"pe": pe, "mpidr": self.mpidrs[pe]})

    def request(self, name: str, tag: int = 0) -> bytes:
        return c.encode_control(name, {}, tag=tag)

    def line_level(self, intid: int, pe: int, level: int, edges: int = 0) -> bytes:
        self.levels[(intid, pe)] = level
        return c.encode_control("LINE_LEVEL", {"intid": intid, "pe": pe, "level": level,
                                               "edges": edges})

    def receive_control(self, data: bytes) -> bytes:
        """Bytes from the back-end; returns the replies to send back."""
        self.reader.feed(data)
        out = []
        while (f := self.reader.next_frame()) is not None:
            if f.reply:
                if f.name == "HELLO":
                    self.hello_reply = f.fields
                    self.features = f.fields["features"]
                continue
            if f.name == "KICK":
                self.kicked.add(f.fields["pe"])
            elif f.name == "LINE_CLAIM":
                key = (f.fields["intid"], f.fields["pe"])
                ok = key[0] in self.lines
                if ok:
                    self.claimed.add(key)
                out.append(c.encode_control("LINE_CLAIM", {
                    "status": 0 if ok else spec.STATUS["ENOTSUP"],
                    "level": self.levels.get(key, 0) if ok else 0}, tag=f.tag, reply=True))
            elif f.name == "LINE_RELEASE":
                self.claimed.discard((f.fields["intid"], f.fields["pe"]))
                out.append(c.encode_control("LINE_RELEASE", {"status": 0}, tag=f.tag,
                                            reply=True))
        return b"".join(out)

    # ------------------------------------------------------------ vCPUs

    def call(self, pe: int, fid: int, *args: int, smc: bool = False) -> bytes:
        v = self.vcpus[pe]
        x = [fid, *args] + [0] * (18 - 1 - len(args))
        v.x[0:18] = x
        v.pc += 4                  # the vCPU resumes after the HVC/SMC
        return self._send(pe, c.VcpuRequest(
            spec.OPS["CALL"], 0, tuple(v.x[0:18]), v.pc, v.pstate, v.vbar_el1, v.vbar_el2,
            spec.REQ_F_SMC if smc else 0))

    def pull(self, pe: int) -> bytes:
        v = self.vcpus[pe]
        self.kicked.discard(pe)
        return self._send(pe, c.VcpuRequest(
            spec.OPS["PULL"], 0, tuple(v.x[0:18]), v.pc, v.pstate, v.vbar_el1, v.vbar_el2))

    def power(self, pe: int, target: int, state: str) -> bytes:
        return self._send(pe, c.VcpuRequest(spec.OPS["POWER"], 0, target=target,
                                            power_state=spec.POWER_STATES[state]))

    def _send(self, pe: int, req: c.VcpuRequest) -> bytes:
        if pe in self.in_flight:
            raise RuntimeError(f"PE {pe} already has a request in flight")
        self.seq[pe] += 1
        req = c.VcpuRequest(req.op, self.seq[pe], req.x, req.pc, req.pstate, req.vbar_el1,
                            req.vbar_el2, req.flags, req.target, req.power_state)
        self.in_flight[pe] = req
        return req.encode()

    def resend(self, pe: int) -> bytes:
        """The request in flight on PE `pe`, again (after a reconnect)."""
        return self.in_flight[pe].encode()

    def receive_vcpu(self, pe: int, data: bytes) -> c.VcpuReply:
        req = self.in_flight.pop(pe)
        try:
            rep = c.decode_vcpu_reply(data, req)
            self.vcpus[pe].apply(rep)
        except c.ProtocolError:
            self.in_flight[pe] = req
            raise
        if rep.flags & spec.REP_F_PULL:
            self.kicked.add(pe)
        return rep


class SocketFrontend:
    """FrontendCore over real sockets: a control connection to a back-end
    and one SOCK_SEQPACKET pair per vCPU, as the QEMU device makes them.

    A reader thread answers the back-end's control requests; `call`,
    `pull` and `power` run on the caller's thread (one vCPU each)."""

    def __init__(self, path: str, core: FrontendCore, *,
                 sock: socket.socket | None = None) -> None:
        """Connect to `path`, or speak on `sock` (already connected) instead."""
        import threading

        self.core = core
        self.lock = threading.Lock()
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
        self.sock = sock
        self.mine: list[socket.socket] = []
        try:
            self.sock.sendall(core.hello())
            for pe in range(len(core.mpidrs)):
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                self.mine.append(a)
                try:
                    socket.send_fds(self.sock, [core.channel(pe)], [b.fileno()])
                finally:
                    b.close()
        except (BrokenPipeError, ConnectionResetError):
            # The back-end refused us mid-handshake and closed: its HELLO
            # reply (the reason) is still to be read, by the reader below,
            # as the QEMU device would read it.
            pass
        except BaseException:
            for s in (self.sock, *self.mine):
                s.close()
            raise
        self.kick = threading.Condition(self.lock)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            # Answered under the lock, so that a caller holding it knows
            # whether an answer is on its way (no frame of its own can then
            # be cut in two by one).
            with self.lock:
                out = self.core.receive_control(data)
                self.kick.notify_all()
                if out:
                    self.sock.sendall(out)

    def exchange(self, pe: int, raw: bytes) -> c.VcpuReply:
        if pe >= len(self.mine):
            raise EOFError(f"PE {pe} has no channel: the back-end ended the handshake")
        chan = self.mine[pe]
        chan.send(raw)
        data = chan.recv(1024)
        if not data:
            raise EOFError(f"PE {pe}'s channel closed")
        with self.lock:
            return self.core.receive_vcpu(pe, data)

    def call(self, pe: int, fid: int, *args: int) -> c.VcpuReply:
        with self.lock:
            raw = self.core.call(pe, fid, *args)
        return self.exchange(pe, raw)

    def ret(self, pe: int, fid: int, *args: int) -> int:
        x0 = self.call(pe, fid, *args).x[0]
        return x0 - (1 << 64) if x0 >> 63 else x0

    def pull(self, pe: int) -> c.VcpuReply:
        with self.lock:
            raw = self.core.pull(pe)
        return self.exchange(pe, raw)

    def wait_kick(self, pe: int, timeout: float = 5.0) -> bool:
        with self.lock:
            return self.kick.wait_for(lambda: pe in self.core.kicked, timeout)

    def send_control(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.reader.join()
        for s in self.mine:
            s.close()


class FakeGhes:
    """The GHES source QEMU's inject-ghes-v2-error writes, as the daemon's
    record writer sees it (Daemon2.record_writer = FakeGhes(...).write):
    records for `event` only; with `read_ack`, GHESv2's rule that a record
    must be acknowledged (ack()) before the next is written, RecordBusy
    until then.  `refuse` makes every write fail with that reason."""

    def __init__(self, event: int, *, read_ack: bool = True) -> None:
        self.event = event
        self.read_ack = read_ack
        self.unacked = False
        self.refuse: str | None = None
        self.records: list[bytes] = []
        self.on_write: Callable[[bytes], None] | None = None

    async def write(self, event: int, record: bytes) -> None:
        if self.refuse is not None:
            raise LookupError(self.refuse)
        if event != self.event:
            raise LookupError(f"QEMU has no error source notified by event {event}")
        if self.unacked:
            raise cper.RecordBusy("OSPM does not acknowledge previous error")
        self.records.append(record)
        self.unacked = self.read_ack
        if self.on_write is not None:
            self.on_write(record)

    def ack(self) -> None:
        """The guest read the record (GHESv2 read-ack)."""
        self.unacked = False

    @staticmethod
    def address(record: bytes) -> int:
        """The physical address of a memory-error record (cper.memory_error)."""
        return int.from_bytes(record[20 + 72 + 16:20 + 72 + 24], "little")

    @staticmethod
    def severity(record: bytes) -> int:
        return int.from_bytes(record[16:20], "little")
