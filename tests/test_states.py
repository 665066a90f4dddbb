"""Every (state, input) pair of the model's two state machines, each checked
twice: against the rules as the spec states them (transcribed independently
below), and by driving the dispatcher into each state and performing each
input through SDEI calls, dispatches and power changes.

- the client event instance (DEN0054A 6.1; sdeid.model.states);
- the PE: online x masked x the nesting of its handlers (sdeid.model.state);
- the daemon's life (sdeid.lifecycle; the real daemon's paths are in
  test_daemon.py).  The connection's table is test_proto_session.py's.
"""

from __future__ import annotations

import itertools

import pytest

from sdeid.lifecycle import DAEMON_TRANSITIONS, DaemonInput, DaemonState, daemon_next
from sdeid.model.abi import STATUS_ENABLED, STATUS_REGISTERED, STATUS_RUNNING, Fid, Priority, Ret
from sdeid.model.dispatcher import PE_POWER_OFF, PE_POWER_ON, PE_POWER_WAKE
from sdeid.model.state import PE_STATES, PE_TRANSITIONS, Nesting, PeInput, PeState
from sdeid.model.states import TRANSITIONS, Action, State, transition
from tests.sim import PRIV_CRIT, PRIV_EV, SHARED_CRIT, SHARED_EV, Sim

# The spec's table, row by row: "X" refused (DENIED unless noted), "NOP"
# allowed without change, otherwise the next state.
SPEC = {
    State.reg: dict(REGISTER="reG", RELEASE="NOP", ENABLE="X", DISABLE="X", UNREGISTER="X",
                    ROUTING_SET="X", CONTEXT="X", COMPLETE="X", COMPLETE_AND_RESUME="X",
                    DISPATCH="X"),
    State.Reg: dict(REGISTER="X", RELEASE="X", ENABLE="X", DISABLE="X", UNREGISTER="PENDING",
                    ROUTING_SET="X", CONTEXT="NOP", COMPLETE="reg", COMPLETE_AND_RESUME="reg",
                    DISPATCH="X"),
    State.reG: dict(REGISTER="X", RELEASE="X", ENABLE="rEG", DISABLE="NOP", UNREGISTER="reg",
                    ROUTING_SET="NOP", CONTEXT="X", COMPLETE="X", COMPLETE_AND_RESUME="X",
                    DISPATCH="X"),
    State.ReG: dict(REGISTER="X", RELEASE="X", ENABLE="REG", DISABLE="NOP",
                    UNREGISTER="Reg+PENDING", ROUTING_SET="X", CONTEXT="NOP", COMPLETE="reG",
                    COMPLETE_AND_RESUME="reG", DISPATCH="X"),
    State.rEG: dict(REGISTER="X", RELEASE="X", ENABLE="NOP", DISABLE="reG", UNREGISTER="reg",
                    ROUTING_SET="X", CONTEXT="X", COMPLETE="X", COMPLETE_AND_RESUME="X",
                    DISPATCH="REG"),
    State.REG: dict(REGISTER="X", RELEASE="X", ENABLE="NOP", DISABLE="ReG",
                    UNREGISTER="Reg+PENDING", ROUTING_SET="X", CONTEXT="NOP", COMPLETE="rEG",
                    COMPLETE_AND_RESUME="rEG", DISPATCH="X"),
}


def expected(state: State, action: Action) -> tuple[State, Ret]:
    cell = SPEC[state][action.name]
    if cell == "X":
        return state, Ret.DENIED
    if cell == "NOP":
        return state, Ret.SUCCESS
    if cell == "PENDING":
        return state, Ret.PENDING
    if cell.endswith("+PENDING"):
        return State[cell.split("+")[0]], Ret.PENDING
    return State[cell], Ret.SUCCESS


ALL_PAIRS = list(itertools.product(State, Action))


def test_table_covers_the_spec_exactly() -> None:
    assert len(ALL_PAIRS) == 60
    for state, action in ALL_PAIRS:
        assert transition(state, action) == expected(state, action), (state, action)
    # Nothing in the table that the spec does not allow.
    for (state, action), (_nxt, ret) in TRANSITIONS.items():
        assert SPEC[state][action.name] != "X", (state, action, ret)


# ------------------------------------------------------------------------
# The same pairs through the dispatcher, with a bound SPI (a dynamic shared
# event), so that INTERRUPT_RELEASE is meaningful too.

SPI = 40


def drive(state: State) -> tuple[Sim, int]:
    """A Sim whose bound event is in `state` on PE 0."""
    s = Sim(nr_pes=2)
    ev = s.ret(0, Fid.INTERRUPT_BIND, SPI)
    assert ev >= 0
    if state == State.reg:
        return s, ev
    assert s.ret(0, Fid.EVENT_REGISTER, ev, 0x1000, 0, 1, 0) == 0  # RM_PE to PE 0
    if state == State.reG:
        return s, ev
    assert s.ret(0, Fid.EVENT_ENABLE, ev) == 0
    if state == State.rEG:
        return s, ev
    assert s.ret(0, Fid.PE_UNMASK) == 0
    s.line(SPI, 0, 1)
    assert s.dispatch(0) == ev
    s.line(SPI, 0, 0)
    if state == State.REG:
        return s, ev
    if state == State.ReG:
        assert s.ret(0, Fid.EVENT_DISABLE, ev) == 0
        return s, ev
    assert state == State.Reg
    assert s.ret(0, Fid.EVENT_UNREGISTER, ev) == Ret.PENDING
    return s, ev


def status_state(s: Sim, ev: int) -> State:
    bits = s.ret(0, Fid.EVENT_STATUS, ev)
    key = (bool(bits & STATUS_RUNNING), bool(bits & STATUS_ENABLED),
           bool(bits & STATUS_REGISTERED))
    return {
        (False, False, False): State.reg,
        (True, False, False): State.Reg,
        (False, False, True): State.reG,
        (True, False, True): State.ReG,
        (False, True, True): State.rEG,
        (True, True, True): State.REG,
    }[key]


def perform(s: Sim, ev: int, action: Action) -> int | None:
    """Perform `action` on PE 0; returns the SDEI result (None for DISPATCH,
    whose outcome is seen in the state)."""
    if action == Action.REGISTER:
        return s.ret(0, Fid.EVENT_REGISTER, ev, 0x1000, 0, 1, 0)
    if action == Action.RELEASE:
        return s.ret(0, Fid.INTERRUPT_RELEASE, ev)
    if action == Action.ENABLE:
        return s.ret(0, Fid.EVENT_ENABLE, ev)
    if action == Action.DISABLE:
        return s.ret(0, Fid.EVENT_DISABLE, ev)
    if action == Action.UNREGISTER:
        return s.ret(0, Fid.EVENT_UNREGISTER, ev)
    if action == Action.ROUTING_SET:
        return s.ret(0, Fid.EVENT_ROUTING_SET, ev, 0, 0)
    if action == Action.CONTEXT:
        r = s.ret(0, Fid.EVENT_CONTEXT, 0)
        return Ret.DENIED if r == Ret.DENIED else Ret.SUCCESS
    if action == Action.COMPLETE:
        before = s.vcpus[0].pc
        x0 = s.ret(0, Fid.EVENT_COMPLETE, 0)
        # Success does not return to the caller: the PC moved elsewhere.
        return Ret.SUCCESS if s.vcpus[0].pc != before + 4 else x0
    if action == Action.COMPLETE_AND_RESUME:
        x0 = s.ret(0, Fid.EVENT_COMPLETE_AND_RESUME, 0x7000)
        return Ret.SUCCESS if s.vcpus[0].pc == 0x7000 else x0
    assert action == Action.DISPATCH
    s.ret(0, Fid.PE_UNMASK)
    s.line(SPI, 0, 1)
    entered = s.dispatch(0)
    s.line(SPI, 0, 0)
    return Ret.SUCCESS if entered == ev else Ret.DENIED


@pytest.mark.parametrize("state,action", ALL_PAIRS, ids=lambda v: getattr(v, "name", v))
def test_dispatcher_follows_the_table(state: State, action: Action) -> None:
    s, ev = drive(state)
    assert status_state(s, ev) == state
    want_state, want_ret = expected(state, action)
    got = perform(s, ev, action)
    assert got == want_ret
    if action == Action.RELEASE and want_ret == Ret.SUCCESS:
        # The line went back to the GIC and the slot is free again.
        assert (SPI, 0) not in s.claimed and (SPI, 0) in s.released
        assert s.ret(0, Fid.EVENT_REGISTER, ev, 0x1000, 0, 0, 0) == Ret.DENIED  # unbound
        return
    assert status_state(s, ev) == want_state


# ------------------------------------------------------------------------
# The PE machine: online x masked x nesting, against every input; the table
# first (against the rules as DEN0054 states them, transcribed here as the
# cells that differ from "the input only sets its own bit"), then through the
# dispatcher for every state a run can reach.

N = Nesting
# Where a dispatch may go: (online, unmasked) only, and only these nestings.
DISPATCH_OK = {(PeInput.DISPATCH_NORMAL, N.IDLE): N.NORMAL,
               (PeInput.DISPATCH_CRITICAL, N.IDLE): N.CRITICAL,
               (PeInput.DISPATCH_CRITICAL, N.NORMAL): N.NORMAL_CRITICAL}
COMPLETE_OK = {N.NORMAL: N.IDLE, N.CRITICAL: N.IDLE, N.NORMAL_CRITICAL: N.NORMAL}


def pe_expected(s: PeState, i: PeInput) -> PeState | None:
    if i in (PeInput.MASK, PeInput.WAKE):
        return PeState(s.online, True, s.nesting)
    if i is PeInput.UNMASK:
        return PeState(s.online, False, s.nesting)
    if i is PeInput.POWER_OFF:
        return PeState(False, True, N.IDLE)
    if i is PeInput.POWER_ON:
        return PeState(True, True, N.IDLE)
    if i is PeInput.COMPLETE:
        n = COMPLETE_OK.get(s.nesting)
        return None if n is None else PeState(s.online, s.masked, n)
    n = DISPATCH_OK.get((i, s.nesting))
    return PeState(s.online, s.masked, n) if n and s.online and not s.masked else None


PE_PAIRS = list(itertools.product(PE_STATES, PeInput))


def test_pe_table_lists_every_pair_as_the_rules_say() -> None:
    assert len(PE_STATES) == 16 and len(PE_PAIRS) == 128
    assert set(PE_TRANSITIONS) == set(PE_PAIRS)
    for s, i in PE_PAIRS:
        assert PE_TRANSITIONS[(s, i)] == pe_expected(s, i), (s, i)


# A run reaches every online state, and an off PE only idle (powering off
# abandons its handlers; nothing dispatches to it).
REACHABLE = [s for s in PE_STATES if s.online or s.nesting is N.IDLE]


def pe_drive(state: PeState) -> Sim:
    """A Sim whose PE 0 is in `state`: normal handlers are PRIV_EV's,
    critical ones PRIV_CRIT's; SHARED_EV / SHARED_CRIT (routed to PE 0)
    are armed so a further dispatch of either priority is possible."""
    s = Sim(nr_pes=2)
    for ev in (PRIV_EV, PRIV_CRIT):
        s.setup(ev, [0])
    for ev in (SHARED_EV, SHARED_CRIT):
        s.setup(ev, None, flags=1, aff=0)    # RM_PE to PE 0
    assert s.ret(0, Fid.PE_UNMASK) == 0
    for prio in state.nesting.priorities:
        ev = PRIV_EV if prio is Priority.NORMAL else PRIV_CRIT
        s.trigger(ev, 0)
        assert s.dispatch(0) == ev
    if not state.online:
        s.d.pe_power(0, PE_POWER_OFF)
    if state.masked and not s.d.pes[0].masked:
        assert s.ret(0, Fid.PE_MASK) == 1
    if not state.masked and s.d.pes[0].masked:
        assert s.ret(0, Fid.PE_UNMASK) == 0
    assert s.d.pes[0].machine == state
    return s


def pe_perform(s: Sim, i: PeInput) -> bool:
    """Input `i` on PE 0 through the dispatcher; False when it was refused
    (no dispatch happened, or COMPLETE answered DENIED)."""
    if i is PeInput.MASK:
        s.ret(0, Fid.PE_MASK)
    elif i is PeInput.UNMASK:
        assert s.ret(0, Fid.PE_UNMASK) == 0
    elif i is PeInput.COMPLETE:
        before = s.vcpus[0].pc
        if s.ret(0, Fid.EVENT_COMPLETE, 0) == Ret.DENIED and s.vcpus[0].pc == before + 4:
            return False
    elif i in (PeInput.POWER_OFF, PeInput.POWER_ON, PeInput.WAKE):
        s.d.pe_power(0, {PeInput.POWER_OFF: PE_POWER_OFF, PeInput.POWER_ON: PE_POWER_ON,
                         PeInput.WAKE: PE_POWER_WAKE}[i])
    else:
        ev = SHARED_EV if i is PeInput.DISPATCH_NORMAL else SHARED_CRIT
        s.trigger(ev)
        return s.dispatch(0) == ev
    return True


@pytest.mark.parametrize("state,inp", [(s, i) for s, i in PE_PAIRS if s in REACHABLE],
                         ids=lambda v: getattr(v, "name", None) or
                         f"{'on' if v.online else 'off'}-{'m' if v.masked else 'u'}-"
                         f"{v.nesting.name}")
def test_dispatcher_follows_the_pe_table(state: PeState, inp: PeInput) -> None:
    s = pe_drive(state)
    want = PE_TRANSITIONS[(state, inp)]
    done = pe_perform(s, inp)
    assert done == (want is not None)
    assert s.d.pes[0].machine == (want if want is not None else state)
    s.d.state.validate()


# ------------------------------------------------------------------------
# The daemon's life (sdeid.lifecycle): every (state, input) pair against the
# rules as stated here, then the real daemon through its reachable paths.

DS, DI = DaemonState, DaemonInput


def daemon_expected(s: DaemonState, i: DaemonInput) -> DaemonState | None:
    if s in (DS.STOPPING, DS.STOPPED):
        # A stop wins over anything racing with it; only CLOSED ends STOPPING.
        if i is DI.CLOSED:
            return DS.STOPPED if s is DS.STOPPING else None
        return None if i is DI.LISTEN else s
    if i is DI.STOP:
        return DS.STOPPED if s is DS.STARTING else DS.STOPPING
    return {(DS.STARTING, DI.LISTEN): DS.LISTENING,
            (DS.LISTENING, DI.CONNECT): DS.CONNECTED,
            (DS.CONNECTED, DI.DISCONNECT): DS.LISTENING}.get((s, i))


def test_daemon_table_lists_every_pair_as_the_rules_say() -> None:
    pairs = list(itertools.product(DaemonState, DaemonInput))
    assert len(pairs) == 25 and set(DAEMON_TRANSITIONS) == set(pairs)
    for s, i in pairs:
        assert DAEMON_TRANSITIONS[(s, i)] == daemon_expected(s, i), (s, i)
        if daemon_expected(s, i) is None:
            with pytest.raises(RuntimeError, match="cannot happen"):
                daemon_next(s, i)
