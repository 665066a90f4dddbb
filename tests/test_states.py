"""Every (state, action) pair of the client event state machine, checked
twice: against the spec's table as written in DEN0054A 6.1 (transcribed
independently below), and by driving a real event instance of the
dispatcher into each state and performing each action through SDEI calls."""

from __future__ import annotations

import itertools

import pytest

from sdeid.model.abi import STATUS_ENABLED, STATUS_REGISTERED, STATUS_RUNNING, Fid, Ret
from sdeid.model.states import TRANSITIONS, Action, State, transition
from tests.sim import Sim

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
