"""An in-memory front-end around a bare Dispatcher: vCPUs with registers,
kicks served by pulls, lines by level; no sockets.  The model tests use it;
the socket tests use sdeid.testing.frontend.FrontEnd, which applies
registers with the same function."""

from __future__ import annotations

from sdeid.model.abi import U64, EventType, Fid, Priority
from sdeid.model.dispatcher import Dispatcher
from sdeid.model.types import (
    ClaimLine,
    Context,
    EventDef,
    Kick,
    PlatformConfig,
    ReleaseLine,
    Topology,
)
from sdeid.testing.frontend import VCpu, apply_registers
from sdeid.wire import spec

SHARED_EV = 100      # static shared, normal
SHARED_CRIT = 101    # static shared, critical
PRIV_EV = 200        # static private, normal
PRIV_CRIT = 201      # static private, critical
EP = 0x40081000
EL1H = 0x3C5


def config(minor: int = 1) -> PlatformConfig:
    return PlatformConfig(version_minor=minor, static_events=(
        EventDef(SHARED_EV, EventType.SHARED, Priority.NORMAL),
        EventDef(SHARED_CRIT, EventType.SHARED, Priority.CRITICAL),
        EventDef(PRIV_EV, EventType.PRIVATE, Priority.NORMAL),
        EventDef(PRIV_CRIT, EventType.PRIVATE, Priority.CRITICAL),
    ))


class Sim:
    def __init__(self, nr_pes: int = 4, minor: int = 1, d: Dispatcher | None = None) -> None:
        self.d = d or Dispatcher(Topology.linear(nr_pes), config(minor))
        self.vcpus = [VCpu() for _ in range(self.d.topology.nr_pes)]
        for i, v in enumerate(self.vcpus):
            v.x[:18] = [0x1000 * (i + 1) + r for r in range(18)]
        self.kicked: set[int] = set()
        self.claimed: set[tuple[int, int]] = set()
        self.released: list[tuple[int, int]] = []

    def _effects(self, effects: tuple[object, ...]) -> None:
        for e in effects:
            if isinstance(e, Kick):
                self.kicked.add(e.pe)
            elif isinstance(e, ClaimLine):
                self.claimed.add((e.intid, e.pe))
            elif isinstance(e, ReleaseLine):
                self.claimed.discard((e.intid, e.pe))
                self.released.append((e.intid, e.pe))

    def call(self, pe: int, fid: int, *args: int) -> int:
        v = self.vcpus[pe]
        v.x[0] = fid
        a = [int(x) & U64 for x in args] + [0] * (5 - len(args))
        v.x[1:6] = a[:5]
        v.pc += 4
        out = self.d.call(pe, fid, tuple(a[:5]), v.pc, v.pstate)
        allowed = spec.ALLOW_CALL_CONTEXT if fid in spec.CONTEXT_SWITCH_FIDS else spec.ALLOW_CALL
        apply_registers(v, out.update, allowed)
        self._effects(out.effects)
        if out.pull:
            self.kicked.add(pe)
        return v.x[0]

    def ret(self, pe: int, fid: int, *args: int) -> int:
        """x0 of a call as a signed SDEI return value."""
        x0 = self.call(pe, fid, *args)
        return x0 - (1 << 64) if x0 >> 63 else x0

    def context(self, pe: int) -> Context:
        v = self.vcpus[pe]
        return Context(tuple(v.x[:18]), v.pc, v.pstate, v.sctlr_el1, v.vbar_el1,
                       v.sctlr_el2, v.vbar_el2)

    def dispatch(self, pe: int) -> int | None:
        self.kicked.discard(pe)
        out = self.d.dispatch(pe, self.context(pe))
        apply_registers(self.vcpus[pe], out.update, spec.ALLOW_DISPATCH)
        self._effects(out.effects)
        if out.pull:
            self.kicked.add(pe)
        return out.event

    def pump(self, limit: int = 64) -> list[tuple[int, int]]:
        entered = []
        for _ in range(limit):
            if not self.kicked:
                break
            pe = min(self.kicked)
            ev = self.dispatch(pe)
            if ev is not None:
                entered.append((pe, ev))
        return entered

    def line(self, intid: int, pe: int, level: int) -> None:
        self._effects(self.d.line_level(intid, pe, bool(level)))

    def trigger(self, event: int, pe: int | None = None) -> int:
        ret, effects = self.d.trigger(event, pe)
        self._effects(effects)
        return int(ret)

    def setup(self, event: int, pes: range | list[int] | None = None, flags: int = 0,
              aff: int = 0, arg: int = 0x42, enable: bool = True, unmask: bool = True) -> None:
        """REGISTER (+ENABLE) `event` and PE_UNMASK on each PE in `pes`."""
        for pe in pes if pes is not None else [0]:
            assert self.ret(pe, Fid.EVENT_REGISTER, event, EP, arg, flags, aff) == 0
            if enable:
                assert self.ret(pe, Fid.EVENT_ENABLE, event) == 0
            if unmask:
                assert self.ret(pe, Fid.PE_UNMASK) == 0
