"""The client event state machine, as one table that reads like the spec's.

DEN0054A section 6.1 describes an event instance (one per PE for a private
event, one for a shared event) by three bits: Running, Enabled, Registered,
written ``r/R``, ``e/E``, ``g/G`` (upper case = set).  Six combinations are
reachable; "Reg" (running, not registered) is "unregister pending".

Every (state, action) pair either appears in TRANSITIONS, meaning the action
is allowed and gives the listed next state and result, or it does not, and the
action is refused with DENIED (UNREGISTER of a running instance is the one
refusal that answers PENDING instead; it is listed explicitly below).  The
tests walk all pairs against this table and against the dispatcher.
"""

from __future__ import annotations

import enum

from sdeid.model.abi import Ret


class State(enum.Enum):
    """Instance states, named by the spec's R/E/G letters."""

    reg = "unregistered"
    Reg = "unregister-pending"
    reG = "registered"
    ReG = "registered, running"
    rEG = "enabled"
    REG = "enabled, running"

    @property
    def registered(self) -> bool:
        return self.name[2] == "G"

    @property
    def enabled(self) -> bool:
        return self.name[1] == "E"

    @property
    def running(self) -> bool:
        return self.name[0] == "R"


class Action(enum.Enum):
    REGISTER = "REGISTER"
    RELEASE = "INTERRUPT_RELEASE"
    ENABLE = "ENABLE"
    DISABLE = "DISABLE"
    UNREGISTER = "UNREGISTER"
    ROUTING_SET = "ROUTING_SET"
    CONTEXT = "CONTEXT"
    COMPLETE = "COMPLETE"
    COMPLETE_AND_RESUME = "COMPLETE_AND_RESUME"
    DISPATCH = "DISPATCH"


S, A = State, Action
OK, PENDING, DENIED = Ret.SUCCESS, Ret.PENDING, Ret.DENIED

# (state, action) -> (next state, result).  Absent pairs answer DENIED and
# change nothing.  Rows follow the spec's table, one state per block.
TRANSITIONS: dict[tuple[State, Action], tuple[State, Ret]] = {
    # reg: unregistered (the initial state)
    (S.reg, A.REGISTER): (S.reG, OK),
    (S.reg, A.RELEASE): (S.reg, OK),
    # Reg: unregister pending; the handler is still running
    (S.Reg, A.UNREGISTER): (S.Reg, PENDING),
    (S.Reg, A.CONTEXT): (S.Reg, OK),
    (S.Reg, A.COMPLETE): (S.reg, OK),
    (S.Reg, A.COMPLETE_AND_RESUME): (S.reg, OK),
    # reG: registered, disabled
    (S.reG, A.ENABLE): (S.rEG, OK),
    (S.reG, A.DISABLE): (S.reG, OK),
    (S.reG, A.UNREGISTER): (S.reg, OK),
    (S.reG, A.ROUTING_SET): (S.reG, OK),
    # ReG: registered, disabled, running
    (S.ReG, A.ENABLE): (S.REG, OK),
    (S.ReG, A.DISABLE): (S.ReG, OK),
    (S.ReG, A.UNREGISTER): (S.Reg, PENDING),
    (S.ReG, A.CONTEXT): (S.ReG, OK),
    (S.ReG, A.COMPLETE): (S.reG, OK),
    (S.ReG, A.COMPLETE_AND_RESUME): (S.reG, OK),
    # rEG: registered, enabled
    (S.rEG, A.ENABLE): (S.rEG, OK),
    (S.rEG, A.DISABLE): (S.reG, OK),
    (S.rEG, A.UNREGISTER): (S.reg, OK),
    (S.rEG, A.DISPATCH): (S.REG, OK),
    # REG: registered, enabled, running
    (S.REG, A.ENABLE): (S.REG, OK),
    (S.REG, A.DISABLE): (S.ReG, OK),
    (S.REG, A.UNREGISTER): (S.Reg, PENDING),
    (S.REG, A.CONTEXT): (S.REG, OK),
    (S.REG, A.COMPLETE): (S.rEG, OK),
    (S.REG, A.COMPLETE_AND_RESUME): (S.rEG, OK),
}


def transition(state: State, action: Action) -> tuple[State, Ret]:
    """The next state and result of `action` in `state` (DENIED: no change)."""
    return TRANSITIONS.get((state, action), (state, DENIED))
