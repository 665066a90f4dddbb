"""An in-memory front-end around a bare Dispatcher: vCPUs with registers,
kicks served by pulls, lines by level; no sockets, no protocol.  The model
tests use it; the protocol tests use sdeid.testing.frontend2."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdeid.model.abi import U64, EventType, Fid, Priority
from sdeid.model.dispatcher import Dispatcher
from sdeid.model.types import (
    REG_ELR,
    REG_PC,
    REG_PSTATE,
    REG_SPSR,
    ClaimLine,
    Context,
    EventDef,
    Kick,
    PlatformConfig,
    RegisterUpdate,
    ReleaseLine,
    Topology,
)

# Which registers a model result may write (RegisterUpdate.mask bits): a
# call x0..x3; COMPLETE and COMPLETE_AND_RESUME the whole context; a
# handler entry x0..x3, PC and PSTATE.
ALLOW_CALL = 0xF
ALLOW_CALL_CONTEXT = (1 << 22) - 1
ALLOW_DISPATCH = 0xF | (1 << REG_PC) | (1 << REG_PSTATE)
CONTEXT_SWITCH_FIDS = (Fid.EVENT_COMPLETE, Fid.EVENT_COMPLETE_AND_RESUME)

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


def apply_registers(v: VCpu, u: RegisterUpdate, allowed: int) -> None:
    """Write a model RegisterUpdate into `v`: x0..x17, SPSR and ELR of the
    new PSTATE's EL, PSTATE, PC.  A write outside `allowed` is a model bug."""
    assert not u.mask & ~allowed, f"update writes 0x{u.mask & ~allowed:x} outside 0x{allowed:x}"
    for i in range(18):
        if u.mask & (1 << i):
            v.x[i] = u.x[i]
    new_el = ((u.pstate >> 2) & 3) if u.mask & (1 << REG_PSTATE) else v.el
    if u.mask & (1 << REG_SPSR):
        v.spsr[new_el] = u.spsr
    if u.mask & (1 << REG_ELR):
        v.elr[new_el] = u.elr
    if u.mask & (1 << REG_PSTATE):
        v.pstate = u.pstate
    if u.mask & (1 << REG_PC):
        v.pc = u.pc


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
        allowed = ALLOW_CALL_CONTEXT if fid in CONTEXT_SWITCH_FIDS else ALLOW_CALL
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
        apply_registers(self.vcpus[pe], out.update, ALLOW_DISPATCH)
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
