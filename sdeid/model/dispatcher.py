"""The SDEI dispatcher: every rule of DEN 0054 v1.0/v1.1, with no I/O.

Calls come in as plain values (PE index, function ID, arguments, context);
answers go out as register updates plus effects (kick a PE, claim or release
an interrupt line).  Nothing here reads a clock, touches a socket or raises
because of what a guest sent: a guest's bad call is answered with the spec's
error code.  State changes only through the public methods, and the whole
state is a value that `snapshot`/`restore` (sdeid.model.snapshot) carry.

Event-instance states follow the table in sdeid.model.states; this module
adds the rules the table cannot express (argument checks, routing, masks,
priorities and nesting, bindings, resets, power changes).

Decisions where the spec leaves room or sources disagree (documented in
docs/sdei-decisions.md and tested):
- SMC32-encoded SDEI IDs and unknown IDs in the SDEI range: NOT_SUPPORTED.
- Calls from EL0 or AArch32 state: NOT_SUPPORTED.
- GET_INFO(EV_SIGNALED) answers 1 for the signalable event 0, 0 otherwise.
- PRIVATE_RESET/SHARED_RESET are all-or-nothing: DENIED changes nothing.
- FEATURES(BIND_SLOTS) reports the total slot counts, bound or free.
- Relative mode (v1.1): ep_address is an offset from VBAR_ELx of the client
  EL, read at dispatch time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from sdeid.model import abi, snapshot
from sdeid.model.abi import (
    FLAG_RELATIVE,
    FLAG_ROUTING_PE,
    MPIDR_AFF_MASK,
    MPIDR_TOLERATED,
    SAVED_GPREGS,
    SIGNAL_EVENT,
    U64,
    EventType,
    Feature,
    Fid,
    Info,
    Priority,
    Ret,
)
from sdeid.model.state import (  # noqa: F401 - Frame, Instance, PE are this module's API too
    PE,
    SHARED,
    DispatcherState,
    Frame,
    Instance,
    PeInput,
    build_event_table,
)
from sdeid.model.states import Action, State, transition
from sdeid.model.types import (
    REG_ELR,
    REG_PC,
    REG_PSTATE,
    REG_SPSR,
    CallOutcome,
    ClaimLine,
    Context,
    DispatchOutcome,
    Effect,
    EventDef,
    Kick,
    PlatformConfig,
    RegisterUpdate,
    ReleaseLine,
    Topology,
)

NOTHING = RegisterUpdate()

# PSTATE fields used to build a handler entry (see _entry_pstate).
PSTATE_NRW = 1 << 4
PSTATE_SP = 1 << 0
PSTATE_DAIF = 0xF << 6
PSTATE_NZCV = 0xF << 28
PSTATE_DIT = 1 << 24
PSTATE_TCO = 1 << 25
PSTATE_PAN = 1 << 22
PSTATE_SSBS = 1 << 12
SCTLR_SPAN = 1 << 23
SCTLR_DSSBS = 1 << 44

PE_POWER_OFF, PE_POWER_ON, PE_POWER_WAKE = 0, 1, 2


def pstate_el(pstate: int) -> int:
    return (pstate >> 2) & 3


class Dispatcher:
    """The dispatcher for one VM."""

    def __init__(self, topology: Topology, config: PlatformConfig | None = None,
                 state: DispatcherState | None = None) -> None:
        # The one value the rules below operate on (sdeid.model.state).
        self.state = state if state is not None else DispatcherState.fresh(
            topology, config or PlatformConfig())
        self.stats: dict[str, int] = {"calls": 0, "dispatches": 0, "completions": 0}
        # The INTIDs the front-end can intercept (None: any PPI or SPI).  Not
        # state: each connection advertises its own, and INTERRUPT_BIND
        # refuses the rest instead of accepting a line that never fires.
        self.interceptable: frozenset[int] | None = None

    # The state's parts, by the names the rules use (views, not copies).
    @property
    def topology(self) -> Topology:
        return self.state.topology

    @property
    def config(self) -> PlatformConfig:
        return self.state.config

    @property
    def events(self) -> dict[int, EventDef]:
        return self.state.events

    @property
    def pes(self) -> list[PE]:
        return self.state.pes

    @property
    def private(self) -> list[dict[int, Instance]]:
        return self.state.private

    @property
    def shared(self) -> dict[int, Instance]:
        return self.state.shared

    @property
    def bound(self) -> dict[int, int]:
        return self.state.bound

    @property
    def by_intid(self) -> dict[int, int]:
        return self.state.by_intid

    @property
    def levels(self) -> dict[tuple[int, int], bool]:
        return self.state.levels

    @property
    def pending(self) -> set[tuple[int, int]]:
        return self.state.pending


    # ------------------------------------------------------------------ lookup

    @property
    def version(self) -> tuple[int, int]:
        return (1, self.config.version_minor)

    def pe_index(self, mpidr: int) -> int | None:
        """The PE an MPIDR names, or None when it names none."""
        if mpidr & ~(MPIDR_AFF_MASK | MPIDR_TOLERATED) & U64:
            return None
        return self.state.pe_by_aff.get(mpidr & MPIDR_AFF_MASK)

    def instance(self, event: int, pe: int) -> Instance:
        """The instance of `event` that PE `pe` sees (created on first use)."""
        ev = self.events[event]
        if ev.type == EventType.SHARED:
            inst = self.shared.get(event)
            if inst is None:
                inst = self.shared[event] = Instance()
            return inst
        table = self.private[pe]
        inst = table.get(event)
        if inst is None:
            inst = table[event] = Instance()
        return inst

    def _peek(self, event: int, pe: int) -> Instance | None:
        """The instance if it exists, without creating it."""
        return self.state.peek(event, pe)

    def _key(self, event: int, pe: int) -> tuple[int, int]:
        return self.state.key(event, pe)

    def _line_key(self, intid: int, pe: int) -> tuple[int, int]:
        return self.state.line_key(intid, pe)

    # ------------------------------------------------------------------- calls

    def call(self, pe: int, fid: int, args: tuple[int, ...], pc: int = 0,
             pstate: int = 0x3C5) -> CallOutcome:
        """Handle one SDEI call from PE `pe`: x0 = fid, x1..x5 = args; pc is
        where the caller resumes, pstate the caller's PSTATE."""
        self.stats["calls"] += 1
        if not 0 <= pe < len(self.pes):
            raise ValueError(f"PE index {pe} out of range")  # the session checks this
        a = tuple(int(v) & U64 for v in args) + (0,) * (5 - len(args))
        if pstate & PSTATE_NRW or pstate_el(pstate) == 0:
            return CallOutcome(RegisterUpdate.result(abi.ret_u64(Ret.NOT_SUPPORTED)))
        handler = self._handlers.get(fid & 0xFFFFFFFF)
        if handler is None:
            self.stats["call.unsupported"] = self.stats.get("call.unsupported", 0) + 1
            return CallOutcome(RegisterUpdate.result(abi.ret_u64(Ret.NOT_SUPPORTED)))
        name = _CALL_STAT[fid & 0xFFFFFFFF]
        self.stats[name] = self.stats.get(name, 0) + 1
        effects: list[Effect] = []
        update = handler(self, pe, a, pc, pstate, effects)
        if isinstance(update, int):
            update = RegisterUpdate.result(update)
        pull = self._schedule(effects, caller=pe)
        return CallOutcome(update, tuple(effects), pull)

    def _version(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                 fx: list[Effect]) -> int:
        return abi.encode_version(*self.version)

    def _register(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                  fx: list[Effect]) -> int:
        event, ep, arg, flags, affinity = a
        ev = self._event(event)
        if ev is None:
            return Ret.INVALID_PARAMETERS
        allowed = FLAG_ROUTING_PE | (FLAG_RELATIVE if self.config.version_minor >= 1 else 0)
        if flags & ~allowed:
            return Ret.INVALID_PARAMETERS
        if ev.type == EventType.SHARED and flags & FLAG_ROUTING_PE:
            if self.pe_index(affinity) is None:
                return Ret.INVALID_PARAMETERS
        if ev.dynamic and ev.number not in self.bound:
            return Ret.DENIED
        inst = self.instance(ev.number, pe)
        nxt, ret = transition(inst.state, Action.REGISTER)
        if ret != Ret.SUCCESS:
            return ret
        if ev.type == EventType.PRIVATE:
            # Private events always target the registering PE; Linux passes
            # flags 0 and affinity 0, which means nothing for them.
            flags = (flags & FLAG_RELATIVE) | FLAG_ROUTING_PE
            affinity = self.pes[pe].mpidr
        inst.state = nxt
        inst.ep, inst.arg, inst.flags, inst.affinity = ep, arg, flags, affinity
        inst.client_el = pstate_el(pstate)
        return Ret.SUCCESS

    def _enable(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                fx: list[Effect]) -> int:
        return self._simple(pe, a[0], Action.ENABLE)

    def _disable(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                 fx: list[Effect]) -> int:
        return self._simple(pe, a[0], Action.DISABLE)

    def _simple(self, pe: int, event: int, action: Action) -> int:
        ev = self._event(event)
        if ev is None:
            return Ret.INVALID_PARAMETERS
        inst = self.instance(ev.number, pe)
        nxt, ret = transition(inst.state, action)
        if ret == Ret.SUCCESS:
            inst.state = nxt
        return ret

    def _unregister(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                    fx: list[Effect]) -> int:
        ev = self._event(a[0])
        if ev is None:
            return Ret.INVALID_PARAMETERS
        return self._unregister_instance(ev, pe)

    def _unregister_instance(self, ev: EventDef, pe: int) -> int:
        inst = self.instance(ev.number, pe)
        nxt, ret = transition(inst.state, Action.UNREGISTER)
        if ret == Ret.SUCCESS:
            inst.clear_registration()
            self._drop_edge(ev.number, pe)
        elif ret == Ret.PENDING:
            inst.state = nxt    # finishes when the running handler completes
            inst.pending = False
            self._drop_edge(ev.number, pe)
        return ret

    def _status(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                fx: list[Effect]) -> int:
        ev = self._event(a[0])
        if ev is None:
            return Ret.INVALID_PARAMETERS
        inst = self._peek(ev.number, pe)
        if inst is None:
            return 0
        st = inst.state
        return ((abi.STATUS_REGISTERED if st.registered else 0)
                | (abi.STATUS_ENABLED if st.enabled else 0)
                | (abi.STATUS_RUNNING if st.running else 0))

    def _get_info(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                  fx: list[Effect]) -> int:
        ev = self._event(a[0])
        if ev is None:
            return Ret.INVALID_PARAMETERS
        info = a[1]
        if info == Info.EV_TYPE:
            return int(ev.type)
        if info == Info.EV_SIGNALED:
            return 1 if ev.number == SIGNAL_EVENT else 0
        if info == Info.EV_PRIORITY:
            return int(ev.priority)
        if info in (Info.EV_ROUTING_MODE, Info.EV_ROUTING_AFF):
            if ev.type == EventType.PRIVATE:
                return Ret.INVALID_PARAMETERS
            inst = self._peek(ev.number, pe)
            if inst is None or not inst.state.registered:
                return Ret.DENIED
            rm_pe = bool(inst.flags & FLAG_ROUTING_PE)
            if info == Info.EV_ROUTING_MODE:
                return abi.RM_PE if rm_pe else abi.RM_ANY
            return inst.affinity if rm_pe else Ret.INVALID_PARAMETERS
        return Ret.INVALID_PARAMETERS

    def _routing_set(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                     fx: list[Effect]) -> int:
        event, mode, affinity = a[0], a[1], a[2]
        ev = self._event(event)
        if ev is None or ev.type == EventType.PRIVATE:
            return Ret.INVALID_PARAMETERS
        if mode & ~FLAG_ROUTING_PE:
            return Ret.INVALID_PARAMETERS
        if mode & FLAG_ROUTING_PE and self.pe_index(affinity) is None:
            return Ret.INVALID_PARAMETERS
        inst = self.instance(ev.number, pe)
        nxt, ret = transition(inst.state, Action.ROUTING_SET)
        if ret != Ret.SUCCESS:
            return ret
        inst.state = nxt
        inst.flags = (inst.flags & ~FLAG_ROUTING_PE) | (mode & FLAG_ROUTING_PE)
        inst.affinity = affinity if mode & FLAG_ROUTING_PE else 0
        return Ret.SUCCESS

    def _pe_mask(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                 fx: list[Effect]) -> int:
        p = self.pes[pe]
        was = p.masked
        p.step(PeInput.MASK)
        return 0 if was else 1

    def _pe_unmask(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                   fx: list[Effect]) -> int:
        self.pes[pe].step(PeInput.UNMASK)
        return Ret.SUCCESS

    def _interrupt_bind(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                        fx: list[Effect]) -> int:
        intid = a[0]
        topo = self.topology
        if not (topo.is_ppi(intid) or topo.is_spi(intid)):
            return Ret.INVALID_PARAMETERS
        if self.interceptable is not None and intid not in self.interceptable:
            return Ret.INVALID_PARAMETERS
        if intid in self.state.static_lines.values():
            # The platform's own (a static event's line): not available for
            # binding, as TF-A answers for an interrupt not owned by the OS.
            return Ret.INVALID_PARAMETERS
        if intid in self.by_intid:
            return self.by_intid[intid]
        want = EventType.PRIVATE if topo.is_ppi(intid) else EventType.SHARED
        for number in self._slots(want):
            if number not in self.bound:
                break
        else:
            return Ret.OUT_OF_RESOURCE
        self.bound[number] = intid
        self.by_intid[intid] = number
        for line_pe in self._line_pes(intid):
            self.levels[(intid, line_pe)] = False
            fx.append(ClaimLine(intid, line_pe))
        return number

    def _interrupt_release(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                           fx: list[Effect]) -> int:
        ev = self._event(a[0])
        if ev is not None and ev.intid is not None:
            return Ret.DENIED       # a platform event's interrupt stays the platform's
        if ev is None or not ev.dynamic or ev.number not in self.bound:
            return Ret.INVALID_PARAMETERS
        for inst in self._instances(ev):
            if transition(inst.state, Action.RELEASE)[1] != Ret.SUCCESS:
                return Ret.DENIED
        self._release(ev.number, fx)
        return Ret.SUCCESS

    def _release(self, event: int, fx: list[Effect]) -> None:
        intid = self.bound.pop(event)
        del self.by_intid[intid]
        for line_pe in self._line_pes(intid):
            self.levels.pop((intid, line_pe), None)
            self.pending.discard(self._key(event, line_pe))
            fx.append(ReleaseLine(intid, line_pe))

    def _event_signal(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                      fx: list[Effect]) -> int:
        event, target_mpidr = a[0], a[1]
        if event != SIGNAL_EVENT or event not in self.events:
            return Ret.INVALID_PARAMETERS
        target = self.pe_index(target_mpidr)
        if target is None:
            return Ret.INVALID_PARAMETERS
        inst = self._peek(event, target)
        # TF-A (b142ede74) refuses to signal a PE that cannot take the event.
        if self.pes[target].masked or inst is None or not inst.state.enabled:
            return Ret.INVALID_PARAMETERS
        inst.pending = True
        self.pending.add((event, target))
        return Ret.SUCCESS

    def _features(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                  fx: list[Effect]) -> int:
        feature = a[0]
        if feature == Feature.BIND_SLOTS:
            return (self.config.shared_slots << 16) | self.config.private_slots
        if feature == Feature.RELATIVE_MODE and self.config.version_minor >= 1:
            return 1
        return Ret.INVALID_PARAMETERS

    def _private_reset(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                       fx: list[Effect]) -> int:
        insts = self.private[pe]
        if any(inst.state.running for inst in insts.values()):
            return Ret.DENIED
        for event, inst in insts.items():
            if inst.state != State.reg or inst.pending:
                self._unregister_instance(self.events[event], pe)
        return Ret.SUCCESS

    def _shared_reset(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                      fx: list[Effect]) -> int:
        if any(inst.state.running for inst in self.shared.values()):
            return Ret.DENIED
        # A private dynamic event still registered somewhere pins its binding.
        for event in self.bound:
            ev = self.events[event]
            if ev.type == EventType.PRIVATE and any(
                    inst.state != State.reg for inst in self._instances(ev)):
                return Ret.DENIED
        for event, inst in self.shared.items():
            if inst.state != State.reg or inst.pending:
                self._unregister_instance(self.events[event], pe)
        for event in sorted(self.bound):
            self._release(event, fx)
        return Ret.SUCCESS

    def _context(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                 fx: list[Effect]) -> int:
        frames = self.pes[pe].frames
        if not frames:
            return Ret.DENIED
        index = a[0]
        if index >= SAVED_GPREGS:
            return Ret.INVALID_PARAMETERS
        return frames[-1].x[index]

    def _complete(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                  fx: list[Effect]) -> RegisterUpdate | int:
        return self._finish(pe, None)

    def _complete_and_resume(self, pe: int, a: tuple[int, ...], pc: int, pstate: int,
                             fx: list[Effect]) -> RegisterUpdate | int:
        return self._finish(pe, a[0])

    def _finish(self, pe: int, resume: int | None) -> RegisterUpdate | int:
        """COMPLETE (resume None) or COMPLETE_AND_RESUME(resume)."""
        p = self.pes[pe]
        if not p.can(PeInput.COMPLETE):
            return Ret.DENIED
        frame = p.step(PeInput.COMPLETE)
        assert frame is not None
        self._end_running(frame.event, pe,
                          Action.COMPLETE if resume is None else Action.COMPLETE_AND_RESUME)
        self.stats["completions"] += 1
        mask = (1 << SAVED_GPREGS) - 1 | 1 << REG_PC | 1 << REG_PSTATE
        if resume is None:
            return RegisterUpdate(mask=mask, x=frame.x, pc=frame.pc, pstate=frame.pstate)
        # An exception taken at the client EL from the interrupted context:
        # Linux resumes at its IRQ vector this way.
        entry = _exception_pstate(frame.pstate, frame.client_el, frame.sctlr)
        return RegisterUpdate(mask=mask | 1 << REG_ELR | 1 << REG_SPSR, x=frame.x,
                              pc=resume, pstate=entry, elr=frame.pc, spsr=frame.pstate)

    def _end_running(self, event: int, pe: int, action: Action) -> None:
        inst = self.instance(event, pe)
        nxt, ret = transition(inst.state, action)
        if ret != Ret.SUCCESS:  # pragma: no cover - frames and states move together
            raise AssertionError(f"{event} in {inst.state} cannot {action}")
        if nxt == State.reg:
            inst.clear_registration()
        else:
            inst.state = nxt
            inst.running_on = -1

    _handlers: dict[int, Callable[..., RegisterUpdate | int]] = {
        Fid.VERSION: _version,
        Fid.EVENT_REGISTER: _register,
        Fid.EVENT_ENABLE: _enable,
        Fid.EVENT_DISABLE: _disable,
        Fid.EVENT_CONTEXT: _context,
        Fid.EVENT_COMPLETE: _complete,
        Fid.EVENT_COMPLETE_AND_RESUME: _complete_and_resume,
        Fid.EVENT_UNREGISTER: _unregister,
        Fid.EVENT_STATUS: _status,
        Fid.EVENT_GET_INFO: _get_info,
        Fid.EVENT_ROUTING_SET: _routing_set,
        Fid.PE_MASK: _pe_mask,
        Fid.PE_UNMASK: _pe_unmask,
        Fid.INTERRUPT_BIND: _interrupt_bind,
        Fid.INTERRUPT_RELEASE: _interrupt_release,
        Fid.EVENT_SIGNAL: _event_signal,
        Fid.FEATURES: _features,
        Fid.PRIVATE_RESET: _private_reset,
        Fid.SHARED_RESET: _shared_reset,
    }

    # ---------------------------------------------------------------- dispatch

    def dispatch(self, pe: int, ctx: Context) -> DispatchOutcome:
        """PE `pe` pulls: enter the best dispatchable event's handler, saving
        `ctx`, or answer nothing.  Atomic with respect to every other call,
        so a stale kick can never deliver an event that is no longer due."""
        if not 0 <= pe < len(self.pes):
            raise ValueError(f"PE index {pe} out of range")
        p = self.pes[pe]
        p.kicked = False
        best = self._best_for(pe)
        if best is None:
            return DispatchOutcome(NOTHING)
        event, key = best
        ev = self.events[event]
        inst = self.instance(event, pe)
        inst.state = transition(inst.state, Action.DISPATCH)[0]
        inst.running_on = pe
        intid = self.state.line_intid(event)
        if intid is None:
            inst.pending = False    # an edge trigger is consumed by its dispatch
            self.pending.discard(key)
        elif inst.pending:          # so is a latched pulse of a line
            inst.pending = False
            if not self.levels.get(self._line_key(intid, pe)):
                self.pending.discard(key)
        client_el = inst.client_el
        sctlr, vbar = ((ctx.sctlr_el2, ctx.vbar_el2) if client_el == 2
                       else (ctx.sctlr_el1, ctx.vbar_el1))
        x = tuple(v & U64 for v in ctx.x)
        p.step(_DISPATCH[ev.priority], Frame(event, ev.priority, x, ctx.pc & U64,
                                             ctx.pstate & U64, sctlr, client_el))
        ep = inst.ep
        if inst.flags & FLAG_RELATIVE:
            ep = (vbar + ep) & U64
        entry_x = (event & U64, inst.arg, ctx.pc & U64, ctx.pstate & U64) + x[4:]
        update = RegisterUpdate(
            mask=0xF | 1 << REG_PC | 1 << REG_PSTATE, x=entry_x, pc=ep,
            pstate=_exception_pstate(ctx.pstate, client_el, sctlr))
        self.stats["dispatches"] += 1
        effects: list[Effect] = []
        pull = self._schedule(effects, caller=pe)
        return DispatchOutcome(update, event, tuple(effects), pull)

    def _best_for(self, pe: int) -> tuple[int, tuple[int, int]] | None:
        """The event PE `pe` should take now, highest priority then lowest
        number, with its pending key; None when there is none."""
        best: tuple[int, int, tuple[int, int]] | None = None
        for key in self.pending:
            event, owner = key
            if owner not in (pe, SHARED):
                continue
            if not self._can_take(pe, event, owner):
                continue
            rank = (-int(self.events[event].priority), event)
            if best is None or rank < best[:2]:
                best = (rank[0], rank[1], key)
        return None if best is None else (best[1], best[2])

    def _can_take(self, pe: int, event: int, owner: int) -> bool:
        # Mask, power and nesting (critical preempts a running normal
        # handler, nothing else nests) are the PE table's.
        if not self.pes[pe].can(_DISPATCH[self.events[event].priority]):
            return False
        inst = self.private[pe].get(event) if owner != SHARED else self.shared.get(event)
        if inst is None or inst.state != State.rEG:
            return False
        if owner == SHARED and inst.flags & FLAG_ROUTING_PE:
            if self.pe_index(inst.affinity) != pe:
                return False
        return True

    def _schedule(self, effects: list[Effect], caller: int | None = None) -> bool:
        """Kick a PE for each pending instance some PE could take now.
        Returns True when the caller itself should pull (instead of a kick)."""
        pull = False
        for event, owner in sorted(self.pending):
            if owner != SHARED:
                targets: Iterable[int] = [owner]
            else:
                inst = self.shared.get(event)
                if inst is not None and inst.flags & FLAG_ROUTING_PE:
                    t = self.pe_index(inst.affinity)
                    targets = [] if t is None else [t]
                else:
                    targets = self._rm_any_order(caller)
            chosen = None
            for t in targets:
                if self._can_take(t, event, owner):
                    chosen = t
                    break
            if chosen is None:
                continue
            if chosen == caller:
                pull = True
                self.pes[chosen].kicked = True
            elif not self.pes[chosen].kicked:
                self.pes[chosen].kicked = True
                effects.append(Kick(chosen))
        return pull

    def _rm_any_order(self, caller: int | None) -> Iterator[int]:
        """PEs in the order an RM_ANY event is offered to them: the caller
        (it is here already), then idle PEs, then busy ones (a critical
        event may preempt them).  Lazy, so the usual case stops at the
        first idle unmasked PE however many PEs there are."""
        pes = self.pes
        if caller is not None:
            yield caller
        for i, p in enumerate(pes):
            if not p.frames and i != caller:
                yield i
        for i, p in enumerate(pes):
            if p.frames and i != caller:
                yield i

    # ------------------------------------------------------------- triggers

    def line_level(self, intid: int, pe: int, level: bool,
                   edges: int = 0) -> tuple[Effect, ...]:
        """A claimed line changed level.  `edges` counts rising edges the
        front-end latched since its last report: a pulse that is already
        over (edges with the line low) still triggers the event once, as a
        GIC would have latched it.  Lines this dispatcher does not own are
        ignored (a level report can race with a release)."""
        key = self._line_key(intid, pe)
        if key not in self.levels:
            return ()
        self.levels[key] = bool(level)
        event = self.by_intid[intid]
        pkey = self._key(event, key[1])
        inst = self._peek(event, key[1])
        if edges and not level and inst is not None and inst.state.registered:
            inst.pending = True     # latched until its dispatch consumes it
        if level or (inst is not None and inst.pending):
            self.pending.add(pkey)
        else:
            self.pending.discard(pkey)
        effects: list[Effect] = []
        self._schedule(effects)
        return tuple(effects)

    def trigger(self, event: int, pe: int | None = None) -> tuple[Ret, tuple[Effect, ...]]:
        """An operator (or platform source such as GHES) raises an event.
        A private event needs a PE.  The event must be registered on its
        target; it is dispatched once the target can take it."""
        ev = self._event(event)
        if ev is None or ev.dynamic:
            return Ret.INVALID_PARAMETERS, ()
        if ev.type == EventType.PRIVATE:
            if pe is None or not 0 <= pe < len(self.pes):
                return Ret.INVALID_PARAMETERS, ()
            inst = self._peek(event, pe)
            key = (event, pe)
        else:
            inst = self.shared.get(event)
            key = (event, SHARED)
        if inst is None or not inst.state.registered:
            return Ret.DENIED, ()
        inst.pending = True
        self.pending.add(key)
        effects: list[Effect] = []
        self._schedule(effects)
        return Ret.SUCCESS, tuple(effects)

    # ------------------------------------------------------- platform events

    def reset(self) -> None:
        """System reset: back to the state of a fresh boot.  The front-end
        has already handed every claimed line back to the GIC."""
        self.state = DispatcherState.fresh(self.topology, self.config)

    def resync(self) -> tuple[Effect, ...]:
        """Forget outstanding kicks and kick again where something is due:
        after a reconnect or a state load the front-end holds no kick work."""
        for p in self.pes:
            p.kicked = False
        effects: list[Effect] = []
        self._schedule(effects)
        return tuple(effects)

    def snapshot(self) -> bytes:
        return snapshot.dump(self.state)

    @classmethod
    def restore(cls, blob: bytes) -> Dispatcher:
        """A dispatcher from a blob; StateError says why one is refused."""
        state = snapshot.load(blob)     # validated there
        return cls(state.topology, state.config, state)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dispatcher):
            return NotImplemented
        return snapshot.to_data(self.state) == snapshot.to_data(other.state)

    __hash__ = None  # type: ignore[assignment]

    def pe_power(self, pe: int, state: int) -> tuple[Effect, ...]:
        """PSCI power changes of a PE (reported before it runs again)."""
        if not 0 <= pe < len(self.pes):
            raise ValueError(f"PE index {pe} out of range")
        p = self.pes[pe]
        if state == PE_POWER_WAKE:
            p.step(PeInput.WAKE)
            return ()
        if state not in (PE_POWER_OFF, PE_POWER_ON):
            raise ValueError(f"unknown PE power state {state}")
        # Powering off or on abandons any handler the PE was running.
        while p.frames:
            frame = p.step(PeInput.COMPLETE)
            assert frame is not None
            self._end_running(frame.event, pe, Action.COMPLETE)
        p.kicked = False
        p.step(PeInput.POWER_OFF if state == PE_POWER_OFF else PeInput.POWER_ON)
        if state == PE_POWER_ON:
            for event in list(self.private[pe]):
                self.private[pe][event].clear_registration()
                self._drop_edge(event, pe)
        effects: list[Effect] = []
        self._schedule(effects)  # RM_ANY work this PE held goes elsewhere
        return tuple(effects)

    def static_line_claims(self) -> tuple[Effect, ...]:
        """Claims of the static events' lines: what a front-end must take
        from the GIC at the handshake and again after a system reset."""
        return tuple(ClaimLine(intid, pe) for intid in sorted(self.state.static_lines.values())
                     for pe in self._line_pes(intid))

    def owned_lines(self) -> list[tuple[int, int]]:
        """Every (intid, pe) line the dispatcher owns, for re-assertion after
        a reconnect or a state load."""
        return sorted(self.levels)

    # --------------------------------------------------------------- helpers

    def _event(self, number: int) -> EventDef | None:
        return self.events.get(number) if 0 <= number < 2**31 else None

    def _slots(self, type_: EventType) -> list[int]:
        cfg = self.config
        if type_ == EventType.PRIVATE:
            return [cfg.PRIVATE_SLOT_BASE + i for i in range(cfg.private_slots)]
        return [cfg.SHARED_SLOT_BASE + i for i in range(cfg.shared_slots)]

    def _line_pes(self, intid: int) -> range:
        return self.state.line_pes(intid)

    def _instances(self, ev: EventDef) -> list[Instance]:
        return self.state.instances(ev)

    def _drop_edge(self, event: int, pe: int) -> None:
        """Forget an edge trigger of an instance that is no longer registered
        (a line level stays: it is the device's state, not the event's)."""
        if self.state.line_intid(event) is None:
            self.pending.discard(self._key(event, pe))


# The PE table's input for dispatching an event of each priority.
_DISPATCH = {Priority.NORMAL: PeInput.DISPATCH_NORMAL,
             Priority.CRITICAL: PeInput.DISPATCH_CRITICAL}

# Per-function counters in stats (query-stats), e.g. "call.PE_UNMASK".
_CALL_STAT = {int(f): f"call.{f.name}" for f in Fid}


def _exception_pstate(interrupted: int, el: int, sctlr: int) -> int:
    """PSTATE after an exception taken to AArch64 ELx (`el`), using SP_ELx,
    from the interrupted PSTATE, per the TakeException() pseudocode as far as
    it concerns an SDEI client: DAIF all set; NZCV, DIT and TCO kept; PAN set
    at EL1 when SCTLR.SPAN is 0; SSBS from SCTLR.DSSBS; BTYPE, SS, IL, UAO
    and ALLINT clear."""
    p = interrupted & (PSTATE_NZCV | PSTATE_DIT | PSTATE_TCO | PSTATE_PAN)
    p |= (el << 2) | PSTATE_SP | PSTATE_DAIF
    if el == 1 and not sctlr & SCTLR_SPAN:
        p |= PSTATE_PAN
    if sctlr & SCTLR_DSSBS:
        p |= PSTATE_SSBS
    return p & U64
