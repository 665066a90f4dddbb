"""Unit tests of the pure dispatcher: each call's arguments, results and
effects, dispatch entry registers, exact restore, nesting, routing, masks,
bindings, resets and power changes."""

from __future__ import annotations

import pytest

from sdeid.model.abi import (
    SIGNAL_EVENT,
    STATUS_ENABLED,
    STATUS_REGISTERED,
    STATUS_RUNNING,
    U64,
    Fid,
    Ret,
    encode_version,
)
from sdeid.model.dispatcher import PE_POWER_OFF, PE_POWER_ON, PE_POWER_WAKE, Dispatcher
from sdeid.model.types import PlatformConfig, Topology
from tests.sim import EL1H, EP, PRIV_CRIT, PRIV_EV, SHARED_CRIT, SHARED_EV, Sim

NOT_SUPPORTED, INVALID, DENIED, PENDING, OOR = (Ret.NOT_SUPPORTED, Ret.INVALID_PARAMETERS,
                                                Ret.DENIED, Ret.PENDING, Ret.OUT_OF_RESOURCE)


# ------------------------------------------------------------ function IDs

@pytest.mark.parametrize("minor", [0, 1])
def test_version_is_configurable(minor: int) -> None:
    s = Sim(minor=minor)
    v = s.call(0, Fid.VERSION)
    assert v == encode_version(1, minor)
    assert v >> 48 == 1 and (v >> 32) & 0xFFFF == minor


def test_unknown_ids_in_the_sdei_range_are_not_supported() -> None:
    s = Sim()
    for fid in range(0xC4000033, 0xC4000040):
        assert s.ret(0, fid) == NOT_SUPPORTED


def test_smc32_encodings_are_not_supported() -> None:
    s = Sim()
    for n in range(32):
        assert s.ret(0, 0x84000020 + n) == NOT_SUPPORTED
    # and they change nothing: registering through the 32-bit ID did not happen
    assert s.ret(0, 0x84000021, SHARED_EV, EP, 0, 0, 0) == NOT_SUPPORTED
    assert s.ret(0, Fid.EVENT_STATUS, SHARED_EV) == 0


def test_calls_from_el0_or_aarch32_are_not_supported() -> None:
    s = Sim()
    s.vcpus[0].pstate = 0x0  # EL0t
    assert s.ret(0, Fid.VERSION) == NOT_SUPPORTED
    s.vcpus[0].pstate = 0x10  # AArch32 user
    assert s.ret(0, Fid.VERSION) == NOT_SUPPORTED


def test_ordinary_calls_write_only_x0() -> None:
    s = Sim()
    before = list(s.vcpus[0].x)
    out = s.d.call(0, Fid.EVENT_STATUS, (SHARED_EV,), 0x1000, EL1H)
    assert out.update.mask == 1
    assert s.vcpus[0].x == before


# ------------------------------------------------------------- REGISTER

def test_register_checks_event_and_flags() -> None:
    s = Sim()
    assert s.ret(0, Fid.EVENT_REGISTER, 12345, EP, 0, 0, 0) == INVALID      # no such event
    assert s.ret(0, Fid.EVENT_REGISTER, 1 << 31, EP, 0, 0, 0) == INVALID    # negative
    assert s.ret(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 0, 4, 0) == INVALID  # reserved flag
    assert s.ret(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 0, 1, 0x99) == INVALID  # bad MPIDR
    assert s.ret(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 0, 1, 0x1) == 0     # RM_PE to PE 1
    assert s.ret(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 0, 0, 0) == DENIED  # already


def test_relative_mode_is_v1_1_only() -> None:
    assert Sim(minor=0).ret(0, Fid.EVENT_REGISTER, SHARED_EV, 0x80, 0, 2, 0) == INVALID
    assert Sim(minor=1).ret(0, Fid.EVENT_REGISTER, SHARED_EV, 0x80, 0, 2, 0) == 0


def test_private_registration_ignores_routing_as_linux_passes_zeroes() -> None:
    s = Sim()
    assert s.ret(1, Fid.EVENT_REGISTER, PRIV_EV, EP, 0, 0, 0) == 0
    assert s.ret(1, Fid.EVENT_STATUS, PRIV_EV) == STATUS_REGISTERED
    assert s.ret(0, Fid.EVENT_STATUS, PRIV_EV) == 0  # other PEs have their own instance


def test_unbound_dynamic_event_cannot_be_registered() -> None:
    s = Sim()
    assert s.ret(0, Fid.EVENT_REGISTER, 2000, EP, 0, 0, 0) == DENIED


# -------------------------------------------------------------- GET_INFO

def test_get_info() -> None:
    s = Sim()
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 0) == 1             # shared
    assert s.ret(0, Fid.EVENT_GET_INFO, PRIV_EV, 0) == 0               # private
    assert s.ret(0, Fid.EVENT_GET_INFO, SIGNAL_EVENT, 1) == 1          # signalable
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 1) == 0
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_CRIT, 2) == 1           # critical
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 2) == 0
    assert s.ret(0, Fid.EVENT_GET_INFO, PRIV_EV, 3) == INVALID         # routing: private
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 3) == DENIED        # not registered
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 5) == INVALID       # unknown info
    assert s.ret(0, Fid.EVENT_GET_INFO, 999, 0) == INVALID
    s.ret(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 0, 0, 0)
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 3) == 0             # RM_ANY
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 4) == INVALID       # aff of RM_ANY
    s.ret(0, Fid.EVENT_UNREGISTER, SHARED_EV)
    s.ret(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 0, 1, 0x2)
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 3) == 1
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 4) == 0x2


# ----------------------------------------------------------- ROUTING_SET

def test_routing_set_rules() -> None:
    s = Sim()
    assert s.ret(0, Fid.EVENT_ROUTING_SET, PRIV_EV, 0, 0) == INVALID   # private
    assert s.ret(0, Fid.EVENT_ROUTING_SET, SHARED_EV, 0, 0) == DENIED  # unregistered
    s.ret(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 0, 0, 0)
    assert s.ret(0, Fid.EVENT_ROUTING_SET, SHARED_EV, 2, 0) == INVALID   # bad mode
    assert s.ret(0, Fid.EVENT_ROUTING_SET, SHARED_EV, 1, 0x77) == INVALID
    assert s.ret(0, Fid.EVENT_ROUTING_SET, SHARED_EV, 1, 0x3) == 0
    assert s.ret(0, Fid.EVENT_GET_INFO, SHARED_EV, 4) == 0x3
    s.ret(0, Fid.EVENT_ENABLE, SHARED_EV)
    assert s.ret(0, Fid.EVENT_ROUTING_SET, SHARED_EV, 0, 0) == DENIED  # enabled


# ------------------------------------------------------------- PE mask

def test_pe_mask_returns_whether_it_changed_state() -> None:
    s = Sim()
    assert s.ret(0, Fid.PE_MASK) == 0      # PEs start masked
    assert s.ret(0, Fid.PE_UNMASK) == 0
    assert s.ret(0, Fid.PE_MASK) == 1
    assert s.ret(0, Fid.PE_MASK) == 0


def test_masked_pe_gets_nothing_until_unmasked() -> None:
    s = Sim()
    s.setup(PRIV_EV, [0], unmask=False)
    assert s.trigger(PRIV_EV, 0) == 0
    assert s.kicked == set() and s.dispatch(0) is None
    s.call(0, Fid.PE_UNMASK)
    assert 0 in s.kicked                   # the unmask reply asks for a pull
    assert s.dispatch(0) == PRIV_EV


# ----------------------------------------------- dispatch and completion

def test_entry_registers_and_exact_restore_after_complete() -> None:
    s = Sim()
    s.setup(PRIV_EV, [0], arg=0xABCD)
    v = s.vcpus[0]
    v.pstate = 0x60000000 | 0x5          # NZC set, EL1h, IRQs unmasked
    v.pc = 0x40082000
    saved = (list(v.x[:18]), v.pc, v.pstate)
    s.trigger(PRIV_EV, 0)
    assert s.dispatch(0) == PRIV_EV
    assert v.x[0] == PRIV_EV and v.x[1] == 0xABCD
    assert v.x[2] == saved[1] and v.x[3] == saved[2]
    assert v.x[4:18] == saved[0][4:18]     # x4..x17 keep the interrupted values
    assert v.pc == EP
    assert v.pstate & 0x3C0 == 0x3C0       # DAIF all masked
    assert v.pstate & 0xF == 0x5           # EL1h
    assert v.pstate & 0xF0000000 == 0x60000000  # NZCV kept
    assert v.elr[1] == 0 and v.spsr[1] == 0     # ELR/SPSR untouched
    # EVENT_CONTEXT reads the interrupted x0..x17
    for i in range(18):
        assert s.call(0, Fid.EVENT_CONTEXT, i) == saved[0][i]
    assert s.ret(0, Fid.EVENT_CONTEXT, 18) == INVALID
    v.x[5] = 0xDEAD                      # the handler clobbers x0..x17
    s.call(0, Fid.EVENT_COMPLETE, 0)
    assert (v.x[:18], v.pc, v.pstate) == tuple(saved)
    assert s.ret(0, Fid.EVENT_STATUS, PRIV_EV) == STATUS_REGISTERED | STATUS_ENABLED


def test_complete_and_resume_performs_an_exception_entry() -> None:
    s = Sim()
    s.setup(PRIV_EV, [0])
    v = s.vcpus[0]
    v.pstate = 0x80000000 | 0x5
    v.pc = 0x40083000
    saved_x = list(v.x[:18])
    s.trigger(PRIV_EV, 0)
    assert s.dispatch(0) == PRIV_EV
    s.call(0, Fid.EVENT_COMPLETE_AND_RESUME, 0x40090280)
    assert v.x[:18] == saved_x
    assert v.pc == 0x40090280
    assert v.elr[1] == 0x40083000
    assert v.spsr[1] == 0x80000005
    assert v.pstate & 0x3CF == 0x3C5       # EL1h, DAIF masked


def test_entry_pstate_follows_take_exception() -> None:
    s = Sim()
    s.setup(PRIV_EV, [0])
    v = s.vcpus[0]
    v.sctlr_el1 = 1 << 44                  # SPAN=0 -> PAN set; DSSBS=1 -> SSBS set
    v.pstate = (1 << 21) | (1 << 20) | (3 << 10) | (1 << 24) | 0x5  # SS, IL, BTYPE, DIT
    s.trigger(PRIV_EV, 0)
    s.dispatch(0)
    p = v.pstate
    assert p & (1 << 22) and p & (1 << 12) and p & (1 << 24)
    assert not p & ((1 << 21) | (1 << 20) | (3 << 10))


def test_relative_entry_point_is_an_offset_from_vbar() -> None:
    s = Sim()
    assert s.ret(0, Fid.EVENT_REGISTER, PRIV_EV, 0x400, 0, 2, 0) == 0
    s.call(0, Fid.EVENT_ENABLE, PRIV_EV)
    s.call(0, Fid.PE_UNMASK)
    s.vcpus[0].vbar_el1 = 0x40100000
    s.trigger(PRIV_EV, 0)
    assert s.dispatch(0) == PRIV_EV
    assert s.vcpus[0].pc == 0x40100400


def test_el2_client_enters_and_resumes_at_el2() -> None:
    s = Sim()
    v = s.vcpus[0]
    v.pstate = 0x3C9                       # EL2h: a VHE kernel
    v.vbar_el2, v.sctlr_el2 = 0x50000000, 0
    s.setup(PRIV_EV, [0])
    s.trigger(PRIV_EV, 0)
    assert s.dispatch(0) == PRIV_EV
    assert v.pstate & 0xF == 0x9
    s.call(0, Fid.EVENT_COMPLETE_AND_RESUME, 0x50000280)
    assert v.pc == 0x50000280 and v.pstate & 0xF == 0x9 and v.elr[2] != 0


def test_complete_outside_a_handler_is_denied() -> None:
    s = Sim()
    assert s.ret(0, Fid.EVENT_COMPLETE, 0) == DENIED
    assert s.ret(0, Fid.EVENT_COMPLETE_AND_RESUME, 0x1000) == DENIED
    assert s.ret(0, Fid.EVENT_CONTEXT, 0) == DENIED


# ------------------------------------------------------------- nesting

def test_critical_preempts_normal_and_nothing_else_nests() -> None:
    s = Sim()
    s.setup(PRIV_EV, [0])
    s.setup(PRIV_CRIT, [0])
    s.setup(SHARED_EV, [0])
    s.trigger(PRIV_EV, 0)
    assert s.dispatch(0) == PRIV_EV
    s.trigger(SHARED_EV)                   # same priority: waits
    assert s.dispatch(0) is None
    s.trigger(PRIV_CRIT, 0)                # critical: preempts
    assert s.dispatch(0) == PRIV_CRIT
    assert [f.event for f in s.d.pes[0].frames] == [PRIV_EV, PRIV_CRIT]
    # EVENT_CONTEXT reads the innermost context: the normal handler's registers
    assert s.call(0, Fid.EVENT_CONTEXT, 0) == PRIV_EV
    s.call(0, Fid.EVENT_COMPLETE, 0)       # back into the normal handler
    assert s.vcpus[0].pc == EP and s.vcpus[0].x[0] == PRIV_EV
    assert s.dispatch(0) is None           # the shared normal still waits
    s.call(0, Fid.EVENT_COMPLETE, 0)
    assert 0 in s.kicked                   # now it is due: the reply says pull
    assert s.dispatch(0) == SHARED_EV


def test_critical_is_taken_before_normal_when_both_are_pending() -> None:
    s = Sim()
    s.setup(SHARED_EV, [0])
    s.setup(SHARED_CRIT, [0])
    s.trigger(SHARED_EV)
    s.trigger(SHARED_CRIT)
    assert s.dispatch(0) == SHARED_CRIT
    assert s.dispatch(0) is None           # critical running: normal cannot nest above


# ------------------------------------------------------------- routing

def test_rm_any_is_taken_by_exactly_one_pe() -> None:
    s = Sim()
    s.setup(SHARED_EV, [0])
    for pe in range(1, 4):
        s.call(pe, Fid.PE_UNMASK)
    s.trigger(SHARED_EV)
    taken = [pe for pe in range(4) if s.dispatch(pe) == SHARED_EV]
    assert len(taken) == 1


def test_rm_any_trigger_on_a_masked_pe_is_offered_to_another() -> None:
    s = Sim(nr_pes=2)
    s.setup(SHARED_EV, [0])
    s.call(1, Fid.PE_UNMASK)
    s.trigger(SHARED_EV)
    first = min(s.kicked)
    s.kicked.clear()
    s.call(first, Fid.PE_MASK)             # the kicked PE masks itself first
    other = 1 - first
    assert other in s.kicked
    assert s.dispatch(first) is None
    assert s.dispatch(other) == SHARED_EV


def test_rm_pe_targets_only_its_pe() -> None:
    s = Sim()
    s.setup(SHARED_EV, [0], flags=1, aff=0x2)
    for pe in range(4):
        s.call(pe, Fid.PE_UNMASK)
    s.trigger(SHARED_EV)
    assert s.kicked == {2}
    assert s.dispatch(0) is None and s.dispatch(1) is None
    assert s.dispatch(2) == SHARED_EV


def test_signal_event_0_across_pes() -> None:
    s = Sim()
    s.setup(SIGNAL_EVENT, range(4))
    for target in range(4):
        assert s.ret(0, Fid.EVENT_SIGNAL, 0, target) == 0
        entered = s.pump()
        assert entered == [(target, 0)]
        s.call(target, Fid.EVENT_COMPLETE, 0)
    assert s.ret(0, Fid.EVENT_SIGNAL, PRIV_EV, 1) == INVALID   # only event 0
    assert s.ret(0, Fid.EVENT_SIGNAL, 0, 0x55) == INVALID      # no such PE
    s.call(3, Fid.PE_MASK)
    assert s.ret(0, Fid.EVENT_SIGNAL, 0, 3) == INVALID         # target masked


# ------------------------------------------------------------- bindings

def test_bind_slots_and_features() -> None:
    s = Sim()
    slots = s.call(0, Fid.FEATURES, 0)
    assert slots & 0xFFFF == 16 and slots >> 16 == 32
    assert s.call(0, Fid.FEATURES, 1) == 1
    assert Sim(minor=0).ret(0, Fid.FEATURES, 1) == INVALID
    assert s.ret(0, Fid.FEATURES, 2) == INVALID


def test_bind_accepts_only_ppis_and_spis() -> None:
    s = Sim()
    for intid in (0, 15, 32 + 64, 1020, 1 << 40):
        assert s.ret(0, Fid.INTERRUPT_BIND, intid) == INVALID
    ppi = s.ret(0, Fid.INTERRUPT_BIND, 30)
    spi = s.ret(0, Fid.INTERRUPT_BIND, 34)
    assert s.ret(0, Fid.EVENT_GET_INFO, ppi, 0) == 0     # private
    assert s.ret(0, Fid.EVENT_GET_INFO, spi, 0) == 1     # shared
    assert s.ret(1, Fid.INTERRUPT_BIND, 34) == spi       # same line, same event
    assert (30, 3) in s.claimed and (34, 0) in s.claimed


def test_bind_runs_out_of_slots() -> None:
    s = Sim(d=Dispatcher(Topology.linear(4), PlatformConfig(shared_slots=2)))
    assert s.ret(0, Fid.INTERRUPT_BIND, 40) >= 0
    assert s.ret(0, Fid.INTERRUPT_BIND, 41) >= 0
    assert s.ret(0, Fid.INTERRUPT_BIND, 42) == OOR


def test_bound_ppi_fires_a_private_handler_per_pe() -> None:
    s = Sim()
    ev = s.ret(0, Fid.INTERRUPT_BIND, 30)
    s.setup(ev, range(4))
    s.line(30, 2, 1)
    assert s.pump() == [(2, ev)]
    s.line(30, 2, 0)
    s.call(2, Fid.EVENT_COMPLETE, 0)
    assert s.pump() == []


def test_level_still_high_after_complete_dispatches_again() -> None:
    s = Sim()
    ev = s.ret(0, Fid.INTERRUPT_BIND, 34)
    s.setup(ev, [0])
    s.line(34, 0, 1)
    assert s.pump() == [(0, ev)]
    s.call(0, Fid.EVENT_COMPLETE, 0)     # the handler did not quiet the device
    assert s.pump() == [(0, ev)]
    s.line(34, 0, 0)
    s.call(0, Fid.EVENT_COMPLETE, 0)
    assert s.pump() == []


def test_release_hands_the_line_back_only_when_unregistered() -> None:
    s = Sim()
    ev = s.ret(0, Fid.INTERRUPT_BIND, 34)
    s.setup(ev, [0])
    assert s.ret(0, Fid.INTERRUPT_RELEASE, ev) == DENIED
    assert s.ret(0, Fid.INTERRUPT_RELEASE, SHARED_EV) == INVALID   # not dynamic
    s.call(0, Fid.EVENT_UNREGISTER, ev)
    assert s.ret(0, Fid.INTERRUPT_RELEASE, ev) == 0
    assert s.released == [(34, 0)] and not s.claimed
    assert s.ret(0, Fid.INTERRUPT_RELEASE, ev) == INVALID          # no longer bound
    s.line(34, 0, 1)                     # a late level report is ignored
    assert s.kicked == set()


# ---------------------------------------------------------- unregister

def test_unregister_while_running_is_pending_until_complete() -> None:
    s = Sim()
    s.setup(PRIV_EV, [0])
    s.trigger(PRIV_EV, 0)
    s.dispatch(0)
    assert s.ret(0, Fid.EVENT_UNREGISTER, PRIV_EV) == PENDING
    assert s.ret(0, Fid.EVENT_STATUS, PRIV_EV) == STATUS_RUNNING
    assert s.ret(0, Fid.EVENT_UNREGISTER, PRIV_EV) == PENDING
    s.call(0, Fid.EVENT_COMPLETE, 0)
    assert s.ret(0, Fid.EVENT_STATUS, PRIV_EV) == 0
    assert s.ret(0, Fid.EVENT_REGISTER, PRIV_EV, EP, 0, 0, 0) == 0


# --------------------------------------------------------------- resets

def test_resets_are_denied_while_a_handler_runs() -> None:
    s = Sim()
    s.setup(PRIV_EV, [0])
    s.setup(SHARED_EV, [1])
    s.trigger(PRIV_EV, 0)
    s.dispatch(0)
    assert s.ret(0, Fid.PRIVATE_RESET) == DENIED
    assert s.ret(0, Fid.EVENT_STATUS, PRIV_EV) & STATUS_REGISTERED  # nothing changed
    assert s.ret(1, Fid.PRIVATE_RESET) == 0                        # PE 1 runs nothing
    s.call(0, Fid.EVENT_COMPLETE, 0)
    s.trigger(SHARED_EV)
    assert s.pump()
    assert s.ret(2, Fid.SHARED_RESET) == DENIED


def test_resets_leave_nothing_behind() -> None:
    s = Sim()
    ppi = s.ret(0, Fid.INTERRUPT_BIND, 30)
    spi = s.ret(0, Fid.INTERRUPT_BIND, 34)
    for pe in range(4):
        s.setup(PRIV_EV, [pe])
        s.setup(ppi, [pe])
    s.setup(SHARED_EV, [0])
    s.setup(spi, [0])
    assert s.ret(0, Fid.SHARED_RESET) == DENIED   # private dynamic still registered
    for pe in range(4):
        assert s.ret(pe, Fid.PRIVATE_RESET) == 0
        assert s.ret(pe, Fid.EVENT_STATUS, PRIV_EV) == 0
    assert s.ret(0, Fid.SHARED_RESET) == 0
    assert s.ret(0, Fid.EVENT_STATUS, SHARED_EV) == 0
    assert not s.d.bound and not s.claimed and not s.d.levels
    assert s.ret(0, Fid.INTERRUPT_BIND, 34) == spi  # slot free again


def test_system_reset_returns_to_boot_state() -> None:
    s = Sim()
    s.setup(SHARED_EV, [0])
    s.ret(0, Fid.INTERRUPT_BIND, 34)
    s.d.reset()
    fresh = Sim()
    assert s.d == fresh.d


# ---------------------------------------------------------- power

def test_cpu_on_masks_and_clears_private_registrations() -> None:
    s = Sim()
    s.setup(PRIV_EV, [1])
    s.setup(SHARED_EV, [1])
    s.d.pe_power(1, PE_POWER_OFF)
    assert s.d.pes[1].online is False
    s.d.pe_power(1, PE_POWER_ON)
    assert s.d.pes[1].masked and s.d.pes[1].online
    assert s.ret(1, Fid.EVENT_STATUS, PRIV_EV) == 0
    assert s.ret(1, Fid.EVENT_STATUS, SHARED_EV) == STATUS_REGISTERED | STATUS_ENABLED


def test_off_pe_is_never_targeted_and_wake_masks() -> None:
    s = Sim(nr_pes=2)
    s.setup(SHARED_EV, [0])
    s.call(1, Fid.PE_UNMASK)
    s.d.pe_power(0, PE_POWER_OFF)
    s.trigger(SHARED_EV)
    assert s.kicked == {1}
    s.call(1, Fid.PE_UNMASK)
    s.d.pe_power(1, PE_POWER_WAKE)
    assert s.d.pes[1].masked


def test_power_off_inside_a_handler_abandons_it() -> None:
    s = Sim()
    s.setup(SHARED_EV, [0])
    s.trigger(SHARED_EV)
    assert s.dispatch(0) == SHARED_EV
    s.d.pe_power(0, PE_POWER_OFF)
    assert s.ret(1, Fid.EVENT_STATUS, SHARED_EV) == STATUS_REGISTERED | STATUS_ENABLED


# ------------------------------------------------------- hostile values

@pytest.mark.parametrize("fid", list(Fid))
def test_every_call_survives_hostile_arguments(fid: Fid) -> None:
    s = Sim()
    for args in ((U64,) * 5, (1 << 63,) * 5, (0x80000000, U64, 0, 0xFF, U64), ()):
        s.call(0, fid, *args)  # must not raise
    s.d.trigger(SHARED_EV, None)
    assert s.d.snapshot()  # still a consistent, serializable state


def test_stats_count_calls_by_function() -> None:
    s = Sim()
    s.call(0, Fid.VERSION)
    s.call(1, Fid.PE_UNMASK)
    s.call(1, Fid.PE_UNMASK)
    s.call(0, 0xC400003F)
    st = s.d.stats
    assert st["calls"] == 4
    assert st["call.VERSION"] == 1 and st["call.PE_UNMASK"] == 2
    assert st["call.unsupported"] == 1


# ------------------------------------- an error record's event, idle or not

@pytest.mark.parametrize(("event", "pe"), [(SHARED_EV, None), (PRIV_EV, 0)])
def test_record_event_idle_follows_the_instance(event: int, pe: int | None) -> None:
    """lifecycle.record_event_idle: what lets sdeid tell a record nobody
    signalled from one the guest is still handling."""
    from sdeid.lifecycle import record_event_idle
    s = Sim()
    assert not record_event_idle(s.d, event, pe)          # not registered
    s.setup(event, [0])
    assert record_event_idle(s.d, event, pe)
    assert s.trigger(event, pe) == 0
    assert not record_event_idle(s.d, event, pe)          # pending
    assert s.dispatch(0) == event
    assert not record_event_idle(s.d, event, pe)          # running its handler
    s.call(0, Fid.EVENT_COMPLETE, 0)
    assert record_event_idle(s.d, event, pe)
    assert not record_event_idle(s.d, 4242, pe)           # no such event
    if pe is not None:
        assert not record_event_idle(s.d, event, None)    # a private one needs its PE
        assert not record_event_idle(s.d, event, 99)
