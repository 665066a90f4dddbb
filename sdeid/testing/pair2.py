"""An in-memory pair: the back-end session core against the front-end core.

No sockets, no threads: outputs are carried across by hand, in order, and
every Commit is appended to `journal` before the sends that follow it, as
the I/O ring must do.
"""

from __future__ import annotations

from typing import Any

from sdeid.model.types import PlatformConfig
from sdeid.proto import codec as c
from sdeid.proto import session as s
from sdeid.proto import spec
from sdeid.testing.frontend2 import FrontendCore

FD_BASE = 100


class Pair:
    def __init__(self, nr_pes: int = 2, *, backend: s.Backend | None = None,
                 config: PlatformConfig | None = None, **fe_kw: Any) -> None:
        self.backend = backend or s.Backend(config or PlatformConfig())
        self.session = s.Session(self.backend)
        mpidrs = tuple(((i // 8) << 8) | (i % 8) for i in range(nr_pes))
        self.fe = FrontendCore(mpidrs, **fe_kw)
        self.journal: list[tuple[Any, ...]] = []
        self.adopted: dict[int, int] = {}
        self.closed: list[int] = []
        self.observed: list[tuple[str, dict[str, Any]]] = []
        self.done: list[s.RequestDone] = []
        self.vcpu_out: dict[int, list[bytes]] = {}
        self.blobs: list[s.WriteBlob] = []
        self.reads: list[s.ReadBlob] = []
        self.statuses: list[s.BlobStatus] = []
        self.nmi_records: list[s.NmiRecord] = []

    # Carry a list of outputs across.  Control sends go to the front-end
    # core at once and its answers come straight back.
    def carry(self, outputs: list[s.Output]) -> None:
        for o in outputs:
            if isinstance(o, s.Commit):
                self.journal.append(o.record)
            elif isinstance(o, s.SendControl):
                back = self.fe.receive_control(o.data)
                if back:
                    self.carry(self.session.receive_control(back))
            elif isinstance(o, s.SendVcpu):
                self.vcpu_out.setdefault(o.pe, []).append(o.data)
            elif isinstance(o, s.AdoptChannel):
                self.adopted[o.pe] = o.fd
            elif isinstance(o, s.CloseFd):
                self.closed.append(o.fd)
            elif isinstance(o, s.Observed):
                self.observed.append((o.kind, o.data))
            elif isinstance(o, s.RequestDone):
                self.done.append(o)
            elif isinstance(o, s.WriteBlob):
                self.blobs.append(o)
            elif isinstance(o, s.ReadBlob):
                self.reads.append(o)
            elif isinstance(o, s.BlobStatus):
                self.statuses.append(o)
            elif isinstance(o, s.NmiRecord):
                self.nmi_records.append(o)

    def connect(self) -> None:
        self.carry(self.session.receive_control(self.fe.hello()))
        for pe in range(len(self.fe.mpidrs)):
            self.carry(self.session.receive_control(self.fe.channel(pe), (FD_BASE + pe,)))

    def exchange(self, pe: int, data: bytes) -> c.VcpuReply:
        self.carry(self.session.receive_vcpu(pe, data))
        raw = self.vcpu_out[pe].pop(0)
        return self.fe.receive_vcpu(pe, raw)

    def call(self, pe: int, fid: int, *args: int) -> c.VcpuReply:
        return self.exchange(pe, self.fe.call(pe, fid, *args))

    def ret(self, pe: int, fid: int, *args: int) -> int:
        rep = self.call(pe, fid, *args)
        assert rep.action == spec.ACTIONS["RETURN"], rep
        x0 = rep.x[0]
        return x0 - (1 << 64) if x0 >> 63 else x0

    def pull(self, pe: int) -> c.VcpuReply:
        return self.exchange(pe, self.fe.pull(pe))

    def control(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        self.carry(self.session.receive_control(data, fds))
