"""The dispatcher's state as one value.

`DispatcherState` holds everything a dispatcher knows about one VM: its
topology and configuration, every PE (mask, power, nested handler frames),
every event instance, the interrupt bindings with their line levels, and
the triggers waiting to be taken.  The rules (sdeid.model.dispatcher)
operate on it; the blob format (sdeid.model.snapshot) carries it; and
`validate()` says whether a value is one the rules can reach, so a blob
that is well formed but inconsistent is refused at load instead of making
a later call fail.  Nothing here imports the rules.

What is not state: outstanding kicks (the front-end holds no kick work
after a reconnect or a load, so the session resyncs), counters, and the
lines the current front-end can intercept (each connection says its own).

A PE's own life is a table too, `PE_TRANSITIONS`: online x masked x the
nesting of its running handlers, against the inputs that change them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sdeid.model.abi import (
    MAX_NESTING,
    MPIDR_AFF_MASK,
    PPI_FIRST,
    PPI_LAST,
    SIGNAL_EVENT,
    SPI_FIRST,
    EventType,
    Priority,
)
from sdeid.model.states import State
from sdeid.model.types import EventDef, PlatformConfig, Topology

# A key for the pending set: (event, pe) for a private instance,
# (event, SHARED) for a shared event.
SHARED = -1


@dataclass(slots=True)
class Instance:
    """One event instance: per PE for a private event, one for a shared one."""

    state: State = State.reg
    ep: int = 0
    arg: int = 0
    flags: int = 0
    affinity: int = 0
    client_el: int = 1
    pending: bool = False   # an edge trigger (SIGNAL, operator) not yet taken
    running_on: int = -1    # the PE running it, while running

    def clear_registration(self) -> None:
        self.state = State.reg
        self.ep = self.arg = self.flags = self.affinity = 0
        self.client_el = 1
        self.pending = False
        self.running_on = -1


@dataclass(frozen=True, slots=True)
class Frame:
    """One level of handler nesting on a PE: the interrupted context."""

    event: int
    priority: Priority
    x: tuple[int, ...]
    pc: int
    pstate: int
    sctlr: int
    client_el: int


# ------------------------------------------------------------- the PE table

class Nesting(enum.Enum):
    """The handlers a PE runs (DEN0054: a critical event may preempt a
    normal handler; nothing else nests).  `priorities` lists them outermost
    first.  (Not tuple-valued members: Python 3.11.2, Debian's, turns an
    empty tuple value into a bare object.)"""

    IDLE = "idle"
    NORMAL = "normal"
    CRITICAL = "critical"
    NORMAL_CRITICAL = "normal, then critical"

    @property
    def priorities(self) -> tuple[Priority, ...]:
        return _NESTING_PRIORITIES[self]

    @classmethod
    def of(cls, priorities: tuple[Priority, ...]) -> Nesting:
        """The nesting of handlers of these priorities, outermost first;
        ValueError for one DEN0054 does not allow."""
        n = _NESTING_OF.get(priorities)
        if n is None:
            raise ValueError(f"no such nesting: {[p.name for p in priorities]}")
        return n


_NESTING_PRIORITIES = {
    Nesting.IDLE: (),
    Nesting.NORMAL: (Priority.NORMAL,),
    Nesting.CRITICAL: (Priority.CRITICAL,),
    Nesting.NORMAL_CRITICAL: (Priority.NORMAL, Priority.CRITICAL),
}
_NESTING_OF = {prios: n for n, prios in _NESTING_PRIORITIES.items()}


@dataclass(frozen=True, slots=True)
class PeState:
    online: bool
    masked: bool
    nesting: Nesting


class PeInput(enum.Enum):
    MASK = "PE_MASK"
    UNMASK = "PE_UNMASK"
    DISPATCH_NORMAL = "dispatch a normal event"
    DISPATCH_CRITICAL = "dispatch a critical event"
    COMPLETE = "COMPLETE / COMPLETE_AND_RESUME"
    POWER_OFF = "PSCI CPU_OFF"
    POWER_ON = "PSCI CPU_ON"
    WAKE = "wake from power-down suspend"


def _pe_next(s: PeState, i: PeInput) -> PeState | None:
    """The rule behind PE_TRANSITIONS (the table is what the code and the
    tests use; this builds it once)."""
    n = s.nesting
    if i is PeInput.MASK or i is PeInput.WAKE:
        # A PE wakes from a power-down suspend masked, its handlers intact.
        return PeState(s.online, True, n)
    if i is PeInput.UNMASK:
        return PeState(s.online, False, n)
    if i is PeInput.POWER_OFF:
        return PeState(False, True, Nesting.IDLE)   # handlers abandoned
    if i is PeInput.POWER_ON:
        return PeState(True, True, Nesting.IDLE)    # a PE comes up masked
    if i is PeInput.COMPLETE:
        return None if n is Nesting.IDLE else PeState(
            s.online, s.masked, Nesting.of(n.priorities[:-1]))
    # Dispatch: only to an online, unmasked PE, and only where it may nest.
    if not s.online or s.masked:
        return None
    prio = Priority.CRITICAL if i is PeInput.DISPATCH_CRITICAL else Priority.NORMAL
    new = n.priorities + (prio,)
    if len(new) > MAX_NESTING or (len(new) == 2 and new != Nesting.NORMAL_CRITICAL.priorities):
        return None
    return PeState(s.online, s.masked, Nesting.of(new))


PE_STATES = tuple(PeState(o, m, n) for o in (True, False) for m in (False, True)
                  for n in Nesting)
# (PE state, input) -> next PE state, or None: the input cannot happen in
# that state (a dispatch the PE cannot take, a COMPLETE with nothing
# running).  Every pair is listed.
PE_TRANSITIONS: dict[tuple[PeState, PeInput], PeState | None] = {
    (s, i): _pe_next(s, i) for s in PE_STATES for i in PeInput
}


@dataclass(slots=True)
class PE:
    mpidr: int
    masked: bool = True     # every PE starts masked (DEN0054 5.1.x; TF-A)
    online: bool = True
    kicked: bool = False    # a kick is outstanding: do not send another (not state)
    frames: list[Frame] = field(default_factory=list)

    @property
    def machine(self) -> PeState:
        return PeState(self.online, self.masked,
                       Nesting.of(tuple(f.priority for f in self.frames)))

    def can(self, i: PeInput) -> bool:
        return PE_TRANSITIONS[(self.machine, i)] is not None

    def step(self, i: PeInput, frame: Frame | None = None) -> Frame | None:
        """Apply input `i` through the table; a dispatch pushes `frame`, a
        COMPLETE pops and returns the innermost one.  Power changes leave
        the abandoned frames to the caller (it ends their instances)."""
        nxt = PE_TRANSITIONS[(self.machine, i)]
        if nxt is None:
            raise AssertionError(f"PE in {self.machine} cannot take {i.name}")
        popped = None
        if i in (PeInput.DISPATCH_NORMAL, PeInput.DISPATCH_CRITICAL):
            assert frame is not None
            self.frames.append(frame)
        elif i is PeInput.COMPLETE:
            popped = self.frames.pop()
        self.online, self.masked = nxt.online, nxt.masked
        assert self.machine == nxt
        return popped


# --------------------------------------------------------- the whole value

@dataclass(eq=False, slots=True)
class DispatcherState:
    """Everything the dispatcher of one VM knows.  `events`, `by_intid` and
    the affinity index are derived (from `config`, `bound`, `topology`) and
    kept in step by the rules; validate() checks they are."""

    topology: Topology
    config: PlatformConfig
    pes: list[PE]
    # Private instances per PE, created on first use; shared per event.
    private: list[dict[int, Instance]]
    shared: dict[int, Instance]
    # Dynamic bindings: event -> INTID.
    bound: dict[int, int]
    # Levels of claimed lines (bound ones and the static events' lines),
    # keyed (intid, pe); pe is 0 for SPIs.
    levels: dict[tuple[int, int], bool]
    # Instances with a trigger waiting (edge pending or line high).
    pending: set[tuple[int, int]]
    events: dict[int, EventDef] = field(init=False)
    # Static events backed by a device interrupt: event -> INTID (config).
    static_lines: dict[int, int] = field(init=False)
    by_intid: dict[int, int] = field(init=False)
    pe_by_aff: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.events = build_event_table(self.config)
        self.static_lines = {e.number: e.intid for e in self.config.static_events
                             if e.intid is not None}
        self.by_intid = {intid: ev for ev, intid in self.static_lines.items()}
        self.by_intid.update({intid: ev for ev, intid in self.bound.items()})
        self.pe_by_aff = {m & MPIDR_AFF_MASK: i for i, m in enumerate(self.topology.mpidrs)}

    @classmethod
    def fresh(cls, topology: Topology, config: PlatformConfig) -> DispatcherState:
        """The state of a freshly booted machine."""
        state = cls(topology, config, [PE(mpidr=m) for m in topology.mpidrs],
                    [{} for _ in topology.mpidrs], {}, {}, {}, set())
        for intid in state.static_lines.values():   # owned from start-up, low
            for pe in state.line_pes(intid):
                state.levels[(intid, pe)] = False
        return state

    def line_intid(self, event: int) -> int | None:
        """The INTID behind `event` (bound or static), if any."""
        intid = self.bound.get(event)
        return self.static_lines.get(event) if intid is None else intid

    # ---- lookups the rules and the checks share

    def key(self, event: int, pe: int) -> tuple[int, int]:
        return (event, SHARED if self.events[event].type == EventType.SHARED else pe)

    def line_key(self, intid: int, pe: int) -> tuple[int, int]:
        return (intid, pe if self.topology.is_ppi(intid) else 0)

    def line_pes(self, intid: int) -> range:
        return range(len(self.pes)) if self.topology.is_ppi(intid) else range(1)

    def peek(self, event: int, pe: int) -> Instance | None:
        """The instance of `event` PE `pe` sees, if it exists."""
        if self.events[event].type == EventType.SHARED:
            return self.shared.get(event)
        return self.private[pe].get(event)

    def instances(self, ev: EventDef) -> list[Instance]:
        if ev.type == EventType.SHARED:
            inst = self.shared.get(ev.number)
            return [] if inst is None else [inst]
        return [t[ev.number] for t in self.private if ev.number in t]

    # ---- consistency

    def validate(self) -> None:
        """Refuse (ValueError) a state that no run of the dispatcher reaches.
        Checked: PE states against the PE table, handler frames against
        running instances, nesting and priorities, client ELs, bindings
        against the topology, line levels against bindings, and pending
        triggers against their instances."""
        if len(self.pes) != self.topology.nr_pes or len(self.private) != self.topology.nr_pes:
            raise ValueError("per-PE lists do not match the topology")
        if len(self.by_intid) != len(self.bound) + len(self.static_lines):
            raise ValueError("two events are bound to one INTID")
        running: dict[int, int] = {}    # id(instance) -> PE whose frame holds it
        for pe, p in enumerate(self.pes):
            if p.mpidr != self.topology.mpidrs[pe]:
                raise ValueError(f"PE {pe}'s MPIDR does not match the topology")
            for f in p.frames:
                edef = self.events.get(f.event)
                if edef is None or edef.priority != f.priority:
                    raise ValueError(f"PE {pe}'s frame for event {f.event} does not match "
                                     "the event's priority")
            try:
                machine = p.machine
            except ValueError:
                raise ValueError(f"PE {pe} nests its handlers in a way DEN0054 does not "
                                 f"allow: {[f.priority.name for f in p.frames]}") from None
            if machine.nesting is not Nesting.IDLE and not machine.online:
                raise ValueError(f"PE {pe} is off but runs a handler")
            for f in p.frames:
                if f.client_el not in (1, 2):
                    raise ValueError(f"PE {pe}'s frame has client EL {f.client_el}")
                inst = self.peek(f.event, pe)
                if inst is None or not inst.state.running or inst.running_on != pe:
                    raise ValueError(f"PE {pe} holds a saved context for event {f.event}, "
                                     "which is not running there")
                if id(inst) in running:
                    raise ValueError(f"event {f.event} runs twice")
                running[id(inst)] = pe
        instances = [(ev, pe, i) for pe, t in enumerate(self.private) for ev, i in t.items()]
        instances += [(ev, SHARED, i) for ev, i in self.shared.items()]
        for ev, owner, inst in instances:
            edef = self.events.get(ev)
            want = EventType.SHARED if owner == SHARED else EventType.PRIVATE
            if edef is None or edef.type != want:
                raise ValueError(f"{want.name.lower()} instance of unknown event {ev}")
            if inst.state.running != (id(inst) in running):
                raise ValueError(f"event {ev} is {inst.state.value} without a matching frame")
            if not inst.state.running and inst.running_on != -1:
                raise ValueError(f"event {ev} names a PE running it but is not running")
            if inst.client_el not in (1, 2):
                raise ValueError(f"event {ev} has client EL {inst.client_el}")
            if edef.dynamic and inst.state.registered and ev not in self.bound:
                raise ValueError(f"event {ev} is registered but not bound to an interrupt")
            if inst.pending and not inst.state.registered:
                raise ValueError(f"event {ev} has a trigger pending but is not registered")
        for ev, intid in self.bound.items():
            e = self.events.get(ev)
            if e is None or not e.dynamic:
                raise ValueError(f"binding of non-dynamic event {ev}")
            ok = (self.topology.is_ppi(intid) if e.type == EventType.PRIVATE
                  else self.topology.is_spi(intid))
            if not ok:
                raise ValueError(f"event {ev} is bound to INTID {intid}, which it cannot be")
        for ev, intid in self.static_lines.items():
            e = self.events[ev]
            ok = (self.topology.is_ppi(intid) if e.type == EventType.PRIVATE
                  else self.topology.is_spi(intid))
            if not ok:
                raise ValueError(f"static event {ev}'s INTID {intid} is not a "
                                 f"{'PPI' if e.type == EventType.PRIVATE else 'SPI'} "
                                 "of this topology")
        want_lines = {(intid, pe) for intid in (*self.bound.values(),
                                                *self.static_lines.values())
                      for pe in self.line_pes(intid)}
        if set(self.levels) != want_lines:
            extra = sorted(set(self.levels) ^ want_lines)[:3]
            raise ValueError(f"line levels do not match the bindings (e.g. {extra})")
        for ev, owner in self.pending:
            pdef = self.events.get(ev)
            if pdef is None or (owner == SHARED) != (pdef.type == EventType.SHARED) or not (
                    owner == SHARED or 0 <= owner < len(self.pes)):
                raise ValueError(f"pending trigger ({ev}, {owner}) names no instance")
            if self.line_intid(ev) is not None:
                continue   # a line is pending while high, registered or not
            inst = self.peek(ev, owner)
            if inst is None or not inst.pending:
                raise ValueError(f"pending trigger ({ev}, {owner}) has no triggered instance")


def build_event_table(config: PlatformConfig) -> dict[int, EventDef]:
    """Event 0, the platform's static events, and the dynamic slots."""
    events = {SIGNAL_EVENT: EventDef(SIGNAL_EVENT, EventType.PRIVATE, Priority.NORMAL)}
    lines: dict[int, int] = {}
    for i in range(config.private_slots):
        n = config.PRIVATE_SLOT_BASE + i
        events[n] = EventDef(n, EventType.PRIVATE, Priority.NORMAL, slot=i)
    for i in range(config.shared_slots):
        n = config.SHARED_SLOT_BASE + i
        events[n] = EventDef(n, EventType.SHARED, Priority.NORMAL, slot=i)
    for ev in config.static_events:
        if ev.number in events:
            raise ValueError(f"static event {ev.number} collides with event 0 or a bind slot")
        if not 0 < ev.number < 2**31:
            raise ValueError(f"event number {ev.number} out of range 1..2^31-1")
        if ev.slot is not None:
            raise ValueError(f"static event {ev.number} has a bind slot")
        if ev.intid is not None:
            # Shared events take SPIs, private ones PPIs (DEN0054, TF-A).
            lo, hi, kind = ((PPI_FIRST, PPI_LAST, "a PPI (16..31)")
                            if ev.type == EventType.PRIVATE else
                            (SPI_FIRST, SPI_FIRST + 987, "an SPI (32..1019)"))
            if not lo <= ev.intid <= hi:
                raise ValueError(f"static event {ev.number}: intid {ev.intid} is not "
                                 f"{kind}, as a {ev.type.name.lower()} event needs")
            if ev.intid in lines:
                raise ValueError(f"static events {lines[ev.intid]} and {ev.number} "
                                 f"share intid {ev.intid}")
            lines[ev.intid] = ev.number
        events[ev.number] = ev
    return events
