"""The v2 back-end session core against the v2 front-end core, in memory."""

from __future__ import annotations

import itertools

import pytest

from sdeid.model.abi import EventType, Fid, Priority, Ret
from sdeid.model.types import EventDef, PlatformConfig
from sdeid.proto import codec as c
from sdeid.proto import session as s
from sdeid.proto import spec
from sdeid.testing.pair2 import FD_BASE, Pair

A = spec.ACTIONS
HANDLER = 0x40100000


def register_enable(p: Pair, pe: int, event: int, ep: int = HANDLER, arg: int = 0x77) -> None:
    assert p.ret(pe, Fid.EVENT_REGISTER, event, ep, arg, 0, 0) == 0
    assert p.ret(pe, Fid.EVENT_ENABLE, event) == 0
    assert p.ret(pe, Fid.PE_UNMASK) == 0


# -------------------------------------------------------------- the table

def test_table_covers_every_pair() -> None:
    assert set(s.TRANSITIONS) == set(itertools.product(s.ConnState, s.Input))


def _in_state(state: s.ConnState) -> Pair:
    # Two PEs, so that one more channel in AWAIT_CHANNELS is not the last
    # (the last one makes the connection READY: test_handshake_...).
    p = Pair(2)
    if state == s.ConnState.AWAIT_HELLO:
        return p
    if state == s.ConnState.CLOSED:
        p.carry(p.session.eof())
        return p
    p.carry(p.session.receive_control(p.fe.hello()))
    if state == s.ConnState.READY:
        p.carry(p.session.receive_control(p.fe.channel(0), (FD_BASE,)))
        p.carry(p.session.receive_control(p.fe.channel(1), (FD_BASE + 1,)))
    assert p.session.state == state
    return p


def _feed(p: Pair, inp: s.Input) -> None:
    sess = p.session
    if inp == s.Input.HELLO:
        p.carry(sess.receive_control(p.fe.hello()))
    elif inp == s.Input.VCPU_CHANNEL:
        pe = 0 if sess.state == s.ConnState.AWAIT_CHANNELS else 1
        p.carry(sess.receive_control(p.fe.channel(pe), (FD_BASE + 9,)))
    elif inp == s.Input.CONTROL:
        p.carry(sess.receive_control(p.fe.request("RESET", tag=5)))
    elif inp == s.Input.REPLY:
        # A reply is only acceptable for something outstanding: make one.
        if sess.state == s.ConnState.READY:
            sess._outstanding[9] = ("LINE_RELEASE", {"intid": 40, "pe": 0})
        p.carry(sess.receive_control(c.encode_control("LINE_RELEASE", {"status": 0}, tag=9,
                                                      reply=True)))
    elif inp == s.Input.VCPU:
        p.carry(sess.receive_vcpu(0, p.fe.call(0, Fid.VERSION)))
    else:
        p.carry(sess.eof())


@pytest.mark.parametrize("state,inp", sorted(s.TRANSITIONS, key=lambda k: (k[0].value,
                                                                            k[1].value)))
def test_every_state_input_pair(state: s.ConnState, inp: s.Input) -> None:
    p = _in_state(state)
    want = s.TRANSITIONS[(state, inp)]
    if want is None:
        with pytest.raises(c.ProtocolError):
            _feed(p, inp)
    else:
        _feed(p, inp)
        assert p.session.state == want


# ------------------------------------------------------------- handshake

def test_handshake_adopts_every_channel_and_agrees_features() -> None:
    p = Pair(4, features=spec.FEATURES["LINES"] | (1 << 40))
    p.connect()
    assert p.session.state == s.ConnState.READY
    assert p.adopted == {pe: FD_BASE + pe for pe in range(4)}
    assert p.fe.hello_reply is not None and p.fe.hello_reply["status"] == 0
    assert p.fe.features == spec.FEATURES["LINES"]      # unknown bit 40 dropped
    assert p.session.history == [s.ConnState.AWAIT_HELLO, s.ConnState.AWAIT_CHANNELS,
                                 s.ConnState.READY]


def test_wrong_version_is_refused_and_closes() -> None:
    p = Pair(1)
    hello = bytearray(p.fe.hello())
    hello[spec.CONTROL_HEADER_SIZE] = 1        # version 1
    p.control(bytes(hello))
    assert p.fe.hello_reply is not None
    assert p.fe.hello_reply["status"] == spec.STATUS["EPROTO"]
    assert p.session.state == s.ConnState.CLOSED


def test_duplicate_channel_is_a_protocol_error_and_its_fd_closed() -> None:
    p = Pair(2)
    p.control(p.fe.hello())
    p.control(p.fe.channel(0), (FD_BASE,))
    with pytest.raises(c.BadValue):
        p.carry(p.session.receive_control(p.fe.channel(0), (FD_BASE + 7,)))
    p.carry(p.session.abort())
    assert p.closed == [FD_BASE, FD_BASE + 7]     # neither was adopted


def test_eof_before_ready_closes_the_received_channels() -> None:
    p = Pair(2)
    p.control(p.fe.hello())
    p.control(p.fe.channel(0), (FD_BASE,))
    p.carry(p.session.eof())
    assert p.closed == [FD_BASE]


# ----------------------------------------------------------------- calls

def test_version_call_returns_x0() -> None:
    p = Pair(1)
    p.connect()
    rep = p.call(0, Fid.VERSION)
    assert rep.action == A["RETURN"]
    assert rep.x[0] >> 48 == 1 and (rep.x[0] >> 32) & 0xFFFF == 1
    assert p.fe.vcpus[0].x[0] == rep.x[0]


def test_signal_kick_pull_enter_complete_restores_exactly() -> None:
    p = Pair(2)
    p.connect()
    register_enable(p, 0, 0)
    v = p.fe.vcpus[0]
    assert p.ret(0, Fid.EVENT_SIGNAL, 0, p.fe.mpidrs[0]) == 0
    assert 0 in p.fe.kicked
    v.x[0:18] = list(range(100, 118))
    v.pc, v.pstate = 0x40001234, 0x20000005       # EL1h, C set, IRQs unmasked
    before = (list(v.x[0:18]), v.pc, v.pstate)
    rep = p.pull(0)
    assert rep.action == A["ENTER"] and rep.el == 1 and rep.addr == HANDLER
    assert rep.x[0:4] == (0, 0x77, 0x40001234, 0x20000005)
    assert v.pc == HANDLER and v.pstate == 0x200003C5
    assert v.x[4:18] == before[0][4:18]            # untouched by entry
    rep = p.call(0, Fid.EVENT_COMPLETE, 0)
    assert rep.action == A["RESTORE"]
    assert (v.x[0:18], v.pc, v.pstate) == before


def test_complete_and_resume_is_restore_then_irq_entry() -> None:
    p = Pair(1)
    p.connect()
    register_enable(p, 0, 0)
    v = p.fe.vcpus[0]
    p.ret(0, Fid.EVENT_SIGNAL, 0, p.fe.mpidrs[0])
    v.pc, v.pstate = 0x40002000, 0x5              # EL1h, all unmasked
    p.pull(0)
    rep = p.call(0, Fid.EVENT_COMPLETE_AND_RESUME, 0x40000280)
    assert rep.action == A["RESTORE_IRQ"] and rep.el == 1 and rep.addr == 0x40000280
    assert v.pc == 0x40000280 and v.elr[1] == 0x40002000 and v.spsr[1] == 0x5
    assert v.pstate & 0x3C0 == 0x3C0


def test_smc32_encoded_sdei_call_is_not_supported() -> None:
    p = Pair(1)
    p.connect()
    assert p.ret(0, Fid.VERSION & ~0x40000000) == Ret.NOT_SUPPORTED


# --------------------------------------------------------- exactly-once

def test_resent_sequence_number_gets_the_stored_reply_and_changes_nothing() -> None:
    p = Pair(1)
    p.connect()
    req = p.fe.call(0, Fid.EVENT_REGISTER, 0, HANDLER, 1, 0, 0)
    p.carry(p.session.receive_vcpu(0, req))
    first = p.vcpu_out[0].pop()
    calls = p.backend.dispatcher.stats["calls"]
    journal = len(p.journal)
    p.carry(p.session.receive_vcpu(0, p.fe.resend(0)))
    assert p.vcpu_out[0].pop() == first
    assert p.backend.dispatcher.stats["calls"] == calls
    assert len(p.journal) == journal
    p.fe.receive_vcpu(0, first)
    # A fresh request (next seq) is processed: registering again is DENIED.
    assert p.ret(0, Fid.EVENT_REGISTER, 0, HANDLER, 1, 0, 0) == Ret.DENIED


def test_reconnect_with_same_instance_replays_the_lost_reply() -> None:
    p = Pair(1)
    p.connect()
    req = p.fe.call(0, Fid.EVENT_REGISTER, 0, HANDLER, 1, 0, 0)
    p.carry(p.session.receive_vcpu(0, req))
    p.vcpu_out[0].clear()                          # the reply is lost with the connection
    p.carry(p.session.eof())
    q = Pair(1, backend=p.backend)
    q.fe = p.fe                                    # the same QEMU, reconnecting
    q.connect()
    q.carry(q.session.receive_vcpu(0, p.fe.resend(0)))
    rep = p.fe.receive_vcpu(0, q.vcpu_out[0].pop())
    assert rep.x[0] == 0                           # SUCCESS, not DENIED: not applied twice


def test_another_instance_does_not_get_stored_replies() -> None:
    p = Pair(1)
    p.connect()
    p.ret(0, Fid.EVENT_REGISTER, 0, HANDLER, 1, 0, 0)
    p.carry(p.session.eof())
    q = Pair(1, backend=p.backend, instance=0xD00D)   # a migration destination
    q.connect()
    assert q.backend.replies == {}
    # seq 1 again, but a new instance: processed, and the event is still registered.
    assert q.ret(0, Fid.EVENT_REGISTER, 0, HANDLER, 1, 0, 0) == Ret.DENIED


def test_every_mutating_input_is_committed_before_its_sends() -> None:
    p = Pair(1)
    p.connect()
    out = p.session.receive_vcpu(0, p.fe.call(0, Fid.PE_UNMASK))
    kinds = [type(o) for o in out]
    assert kinds[0] is s.Commit and s.SendVcpu in kinds
    p.carry(out)


# ----------------------------------------------------- features and lines

def test_without_lines_bind_is_refused_and_nothing_is_claimed() -> None:
    p = Pair(1, features=spec.FEATURES_ALL & ~spec.FEATURES["LINES"])
    p.connect()
    assert p.ret(0, Fid.INTERRUPT_BIND, 40) == Ret.INVALID_PARAMETERS
    assert p.fe.claimed == set()
    with pytest.raises(c.ProtocolError, match="LINES"):
        p.control(p.fe.line_level(40, 0, 1))


def test_power_without_the_feature_is_a_protocol_error() -> None:
    p = Pair(2, features=0)
    p.connect()
    with pytest.raises(c.ProtocolError, match="PE_POWER"):
        p.exchange(0, p.fe.power(0, 1, "OFF"))


def test_state_transfer_without_the_feature_is_a_protocol_error() -> None:
    p = Pair(1, features=0)
    p.connect()
    with pytest.raises(c.ProtocolError, match="STATE"):
        p.control(p.fe.request("SAVE_STATE"), (55,))
    p.carry(p.session.abort())
    assert p.closed == [55]


def test_bind_refuses_a_line_the_front_end_cannot_intercept() -> None:
    # Under KVM the arch timer PPIs are the kernel's: not advertised.
    p = Pair(1, lines=set(range(32, 96)))
    p.connect()
    assert p.ret(0, Fid.INTERRUPT_BIND, 27) == Ret.INVALID_PARAMETERS
    event = p.ret(0, Fid.INTERRUPT_BIND, 40)
    assert event >= 2000
    assert p.fe.claimed == {(40, 0)}


def test_claim_hands_over_a_high_level_and_the_event_fires() -> None:
    p = Pair(1)
    p.connect()
    p.fe.levels[(40, 0)] = 1                      # the device holds the line high already
    event = p.ret(0, Fid.INTERRUPT_BIND, 40)
    register_enable(p, 0, event)
    assert 0 in p.fe.kicked
    assert p.pull(0).action == A["ENTER"]


def test_a_latched_pulse_is_not_lost() -> None:
    p = Pair(1)
    p.connect()
    event = p.ret(0, Fid.INTERRUPT_BIND, 40)
    register_enable(p, 0, event)
    p.control(p.fe.line_level(40, 0, 0, edges=1))   # high and low again between two reads
    assert 0 in p.fe.kicked
    rep = p.pull(0)
    assert rep.action == A["ENTER"] and rep.x[0] == event


def test_reconnect_reclaims_owned_lines() -> None:
    p = Pair(1)
    p.connect()
    p.ret(0, Fid.INTERRUPT_BIND, 40)
    p.carry(p.session.eof())
    q = Pair(1, backend=p.backend)
    q.connect()
    assert q.fe.claimed == {(40, 0)}


def test_a_level_held_from_the_last_connection_yields_to_the_claim() -> None:
    """The line was high when the connection died (its LINE_LEVEL(0) died
    with it); the new front-end's claim says low.  Found by scripts/load-test
    as a livelock: the dispatcher kept the old level and every COMPLETE
    re-entered the handler."""
    p = Pair(1)
    p.connect()
    event = p.ret(0, Fid.INTERRUPT_BIND, 40)
    register_enable(p, 0, event)
    p.control(p.fe.line_level(40, 0, 1))
    assert p.pull(0).action == A["ENTER"]          # the handler runs...
    p.carry(p.session.eof())                        # ...and the connection dies
    q = Pair(1, backend=p.backend)                  # QEMU reconnects: the line is low
    q.connect()
    assert q.fe.claimed == {(40, 0)}
    assert p.backend.dispatcher is not None
    assert p.backend.dispatcher.levels[(40, 0)] is False
    assert q.journal[-1] == ("line", 40, 0, 0, 0)   # committed like any level
    rep = q.call(0, Fid.EVENT_COMPLETE, 0)
    assert rep.action == A["RESTORE"]
    assert q.pull(0).action == A["NONE"]            # nothing dispatched again


def test_reply_to_nothing_outstanding_is_a_protocol_error() -> None:
    p = Pair(1)
    p.connect()
    with pytest.raises(c.BadHeader, match="outstanding"):
        p.control(c.encode_control("LINE_CLAIM", {"status": 0, "level": 0}, tag=77,
                                   reply=True))


# ----------------------------------------------------------- power, reset

def test_power_off_abandons_the_running_handler() -> None:
    p = Pair(2)
    p.connect()
    register_enable(p, 1, 0)
    p.ret(1, Fid.EVENT_SIGNAL, 0, p.fe.mpidrs[1])
    assert p.pull(1).action == A["ENTER"]
    rep = p.exchange(0, p.fe.power(0, 1, "OFF"))
    assert rep.action == A["NONE"]
    assert p.backend.dispatcher.pes[1].frames == []
    assert ("SDEI_PE_POWER", {"pe": 1, "state": 0}) in p.observed


def test_reset_acks_and_forgets_registrations() -> None:
    p = Pair(1)
    p.connect()
    register_enable(p, 0, 0)
    p.control(p.fe.request("RESET", tag=3))
    assert p.journal[-1] == ("reset",)
    assert p.ret(0, Fid.EVENT_STATUS, 0) == 0


# ------------------------------------------------------------------ state

def test_save_state_writes_the_blob_to_the_pipe_then_acks() -> None:
    p = Pair(1)
    p.connect()
    register_enable(p, 0, 0)
    out = p.session.receive_control(p.fe.request("SAVE_STATE", tag=4), (60,))
    assert isinstance(out[0], s.WriteBlob) and out[0].fd == 60
    assert isinstance(out[1], s.SendControl)
    p2 = Pair(1)
    p2.connect()
    p2.control(p2.fe.request("LOAD_STATE", tag=5), (61,))
    assert p2.reads == [s.ReadBlob(61, 5)]
    p2.carry(p2.session.blob_read(5, out[0].blob, 61))
    assert p2.statuses == [s.BlobStatus(61, 0)]      # answered on its socket too
    assert p2.backend.dispatcher == p.backend.dispatcher
    assert p2.journal[-1] == ("state", out[0].blob)


def test_load_state_refuses_garbage_and_keeps_the_old_state() -> None:
    p = Pair(1)
    p.connect()
    register_enable(p, 0, 0)
    before = p.backend.dispatcher.snapshot()
    out = p.session.blob_read(9, b"not a state blob", 62)
    assert all(not isinstance(o, s.Commit) for o in out)
    # The refusal goes on the blob's own socket first (the front-end fails
    # its incoming migration on it), then as the control reply.
    assert out[0] == s.BlobStatus(62, spec.STATUS["EINVAL"])
    assert isinstance(out[1], s.SendControl)
    p.carry(out)
    assert p.backend.dispatcher.snapshot() == before


def test_operator_trigger_commits_and_kicks() -> None:
    cfg = PlatformConfig(static_events=(EventDef(100, EventType.SHARED, Priority.NORMAL),))
    p = Pair(1, config=cfg)
    p.connect()
    register_enable(p, 0, 100)
    ret, out = p.session.trigger(100)
    assert ret == 0
    p.carry(out)
    assert p.journal[-1] == ("trigger", 100, -1)
    assert 0 in p.fe.kicked
    assert p.pull(0).x[0] == 100
