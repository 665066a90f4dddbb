"""Issue 11, daemon side: QEMU's NMI triggers a configured static event, and
static events backed by a device interrupt (`intid=`).  The session core
against the front-end core, in memory (sdeid.testing.pair2), plus the
configuration, the model's rules and the state blob."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from sdeid.config import load_settings, parse_event
from sdeid.errors import ConfigError
from sdeid.model import snapshot
from sdeid.model.abi import EventType, Fid, Priority, Ret
from sdeid.model.dispatcher import Dispatcher
from sdeid.model.types import Context, EventDef, PlatformConfig, Topology
from sdeid.proto import codec as c
from sdeid.proto import session as s
from sdeid.proto import spec
from sdeid.testing.pair2 import Pair

A = spec.ACTIONS
HANDLER = 0x40100000
NMI_EV, RTC_EV, PPI_EV, RTC = 300, 200, 201, 34


def cfg() -> PlatformConfig:
    return PlatformConfig(static_events=(
        EventDef(NMI_EV, EventType.SHARED, Priority.CRITICAL),
        EventDef(210, EventType.PRIVATE, Priority.CRITICAL),
        EventDef(RTC_EV, EventType.SHARED, Priority.CRITICAL, intid=RTC),
    ))


def register_enable(p: Pair, pe: int, event: int) -> None:
    assert p.ret(pe, Fid.EVENT_REGISTER, event, HANDLER, 0x77, 0, 0) == 0
    assert p.ret(pe, Fid.EVENT_ENABLE, event) == 0
    assert p.ret(pe, Fid.PE_UNMASK) == 0


def nmi(p: Pair, cpu: int = 0) -> dict[str, object]:
    p.control(c.encode_control("NMI", {"cpu": cpu}))
    kinds = [k for k, _ in p.observed]
    assert kinds[-1] == "SDEI_NMI", kinds
    return p.observed[-1][1]


# ---------------------------------------------------------------- the NMI

def test_nmi_triggers_the_configured_event_journaled_and_reported() -> None:
    p = Pair(2, backend=s.Backend(cfg(), nmi_event=NMI_EV))
    p.connect()
    register_enable(p, 1, NMI_EV)
    p.fe.kicked.clear()
    data = nmi(p, cpu=1)
    assert data == {"cpu": 1, "event": NMI_EV, "status": 0, "delivered": True}
    assert p.journal[-1] == ("trigger", NMI_EV, -1)          # replayed like sdei-trigger
    assert p.fe.kicked == {1}
    rep = p.pull(1)
    assert rep.action == A["ENTER"] and rep.x[0] == NMI_EV
    assert p.backend.nmi_stats == {"nmi-received": 1, "nmi-delivered": 1, "nmi-refused": 0}
    # The journal alone rebuilds the same state (exactly once, no double).
    b = s.Backend(cfg(), nmi_event=NMI_EV)
    s.replay(b, p.journal)
    assert b.dispatcher == p.backend.dispatcher


def test_nmi_with_nmi_ghes_asks_the_daemon_for_a_record_and_triggers_nothing() -> None:
    """--nmi-ghes: the record is written through QEMU's monitor, which only
    the daemon can do, before the event; the core triggers nothing itself."""
    p = Pair(2, backend=s.Backend(cfg(), nmi_event=NMI_EV, nmi_ghes=True))
    p.connect()
    register_enable(p, 0, NMI_EV)
    p.fe.kicked.clear()
    p.journal.clear()
    p.control(c.encode_control("NMI", {"cpu": 1}))
    assert p.nmi_records == [s.NmiRecord(1, NMI_EV)]
    assert not p.fe.kicked and p.journal == []
    assert p.backend.nmi_stats["nmi-received"] == 1


def test_nmi_for_an_unregistered_event_is_refused_and_counted() -> None:
    p = Pair(1, backend=s.Backend(cfg(), nmi_event=NMI_EV))
    p.connect()
    journal = len(p.journal)
    data = nmi(p)
    assert data["delivered"] is False and data["status"] == Ret.DENIED
    assert "not registered" in str(data["reason"])
    assert len(p.journal) == journal                           # nothing changed
    assert p.backend.nmi_stats == {"nmi-received": 1, "nmi-delivered": 0, "nmi-refused": 1}


def test_nmi_without_an_nmi_event_is_reported_and_refused_not_dropped() -> None:
    p = Pair(1, backend=s.Backend(cfg()))
    p.connect()
    register_enable(p, 0, NMI_EV)
    data = nmi(p)
    assert data["event"] is None and data["delivered"] is False
    assert "--nmi-event" in str(data["reason"])
    assert p.backend.nmi_stats["nmi-refused"] == 1
    assert not p.backend.dispatcher.pending                    # nothing was triggered


def test_nmi_on_a_private_event_targets_the_cpu_it_names() -> None:
    p = Pair(2, backend=s.Backend(cfg(), nmi_event=210))
    p.connect()
    register_enable(p, 1, 210)
    assert nmi(p, cpu=0)["status"] == Ret.DENIED               # not registered on PE 0
    assert nmi(p, cpu=1)["delivered"] is True
    assert p.journal[-1] == ("trigger", 210, 1)
    assert nmi(p, cpu=7)["status"] == Ret.INVALID_PARAMETERS   # no such PE
    assert p.backend.nmi_stats == {"nmi-received": 3, "nmi-delivered": 1, "nmi-refused": 2}


def test_nmi_without_the_feature_agreed_is_a_protocol_error() -> None:
    p = Pair(1, backend=s.Backend(cfg(), nmi_event=NMI_EV),
             features=spec.FEATURES_ALL & ~spec.FEATURES["NMI"])
    p.connect()
    with pytest.raises(c.ProtocolError):
        p.control(c.encode_control("NMI", {"cpu": 0}))


# ------------------------------------------------ interrupt-backed events

def test_static_line_is_claimed_at_the_handshake_and_a_rising_level_triggers() -> None:
    p = Pair(2, config=cfg())
    p.connect()
    assert p.fe.claimed == {(RTC, 0)}
    register_enable(p, 0, RTC_EV)
    p.fe.kicked.clear()
    p.control(p.fe.line_level(RTC, 0, 1))
    assert p.fe.kicked == {0}
    rep = p.pull(0)
    assert rep.action == A["ENTER"] and rep.x[0] == RTC_EV


def test_a_level_already_high_at_the_claim_triggers_once_registered() -> None:
    p = Pair(1, config=cfg())
    p.fe.levels[(RTC, 0)] = 1
    p.connect()
    assert p.backend.dispatcher.levels[(RTC, 0)] is True
    register_enable(p, 0, RTC_EV)
    assert p.pull(0).x[0] == RTC_EV


def test_front_end_that_cannot_intercept_the_line_is_refused_at_hello() -> None:
    p = Pair(1, config=cfg(), lines=set(range(16, 32)))       # e.g. KVM with irqfd SPIs
    p.carry(p.session.receive_control(p.fe.hello()))
    assert p.fe.hello_reply is not None
    assert p.fe.hello_reply["status"] == spec.STATUS["ENOTSUP"]
    assert p.session.closed and p.backend.dispatcher is None
    q = Pair(1, config=cfg(), features=spec.FEATURES_ALL & ~spec.FEATURES["LINES"])
    q.carry(q.session.receive_control(q.fe.hello()))
    assert q.fe.hello_reply is not None
    assert q.fe.hello_reply["status"] == spec.STATUS["ENOTSUP"] and q.session.closed
    r = Pair(1, config=cfg(), nr_spis=2)                     # INTID 34 is not an SPI there
    r.carry(r.session.receive_control(r.fe.hello()))
    assert r.fe.hello_reply is not None and r.session.closed


def test_guest_cannot_release_or_bind_the_static_line() -> None:
    p = Pair(1, config=cfg())
    p.connect()
    assert p.ret(0, Fid.INTERRUPT_RELEASE, RTC_EV) == Ret.DENIED
    assert p.ret(0, Fid.INTERRUPT_RELEASE, NMI_EV) == Ret.INVALID_PARAMETERS  # no line: as before
    assert p.ret(0, Fid.INTERRUPT_BIND, RTC) == Ret.INVALID_PARAMETERS
    assert p.ret(0, Fid.SHARED_RESET) == 0                     # releases bindings, not this
    assert p.fe.claimed == {(RTC, 0)}
    assert p.backend.dispatcher.levels == {(RTC, 0): False}


def test_reset_reclaims_the_static_line() -> None:
    p = Pair(1, config=cfg())
    p.connect()
    p.fe.claimed.clear()                                       # RESET: lines back to the GIC
    p.control(p.fe.request("RESET", tag=9))
    assert p.fe.claimed == {(RTC, 0)}


def test_critical_line_event_nests_over_a_running_normal_handler() -> None:
    p = Pair(1, config=cfg())
    p.connect()
    register_enable(p, 0, RTC_EV)
    assert p.ret(0, Fid.EVENT_REGISTER, 0, HANDLER, 0, 0, 0) == 0
    assert p.ret(0, Fid.EVENT_ENABLE, 0) == 0
    p.ret(0, Fid.EVENT_SIGNAL, 0, 0)
    assert p.pull(0).x[0] == 0                                 # normal handler runs
    p.control(p.fe.line_level(RTC, 0, 1))
    assert p.pull(0).x[0] == RTC_EV                            # critical preempts it
    assert [f.event for f in p.backend.dispatcher.pes[0].frames] == [0, RTC_EV]


# ------------------------------------------------ model, config, snapshot

def test_model_owns_static_lines_from_start_and_validates() -> None:
    d = Dispatcher(Topology.linear(2), cfg())
    assert d.owned_lines() == [(RTC, 0)]
    d.state.validate()
    d.line_level(RTC, 0, True)
    assert d.state.pending == {(RTC_EV, -1)}                   # pending while high
    d.state.validate()
    d.levels.pop((RTC, 0))
    with pytest.raises(ValueError, match="line levels"):
        d.state.validate()


def test_snapshot_round_trip_and_a_format_1_0_blob_still_loads() -> None:
    d = Dispatcher(Topology.linear(1), cfg())
    d.call(0, Fid.EVENT_REGISTER, (RTC_EV, HANDLER, 0, 0, 0))
    d.line_level(RTC, 0, True)
    again = Dispatcher.restore(d.snapshot())
    assert again == d and again.config.static_events[2].intid == RTC
    # A 1.0 writer had no intid: its blob gets the default (no line).
    old = Dispatcher(Topology.linear(1), PlatformConfig(static_events=(
        EventDef(100, EventType.SHARED, Priority.NORMAL),)))
    data = snapshot.to_data(old.state)
    assert data["config"]["static_events"] == [[100, int(EventType.SHARED), 0]]
    body = zlib.compress(json.dumps(data).encode())
    blob = struct.pack("<8sHHII", b"SDEISTAT", 1, 0, len(body), zlib.crc32(body)) + body
    assert Dispatcher.restore(blob) == old
    assert snapshot.FORMAT_MINOR == 1


def test_dispatch_consumes_an_operator_trigger_of_a_line_event_once() -> None:
    d = Dispatcher(Topology.linear(1), cfg())
    for fid, args in ((Fid.EVENT_REGISTER, (RTC_EV, HANDLER, 0, 0, 0)),
                      (Fid.EVENT_ENABLE, (RTC_EV,)), (Fid.PE_UNMASK, ())):
        d.call(0, fid, args)
    assert d.trigger(RTC_EV)[0] == Ret.SUCCESS
    ctx = Context((0,) * 18, 0x1000, 0x3C5)
    assert d.dispatch(0, ctx).event == RTC_EV
    assert not d.pending
    d.state.validate()


def test_config_parses_intid_and_nmi_event(tmp_path: Path) -> None:
    ev = parse_event("200:shared:critical:intid=34")
    assert (ev.number, ev.type, ev.priority, ev.intid) == (200, EventType.SHARED,
                                                           Priority.CRITICAL, 34)
    assert parse_event("200:intid=0x22").intid == 34
    toml = tmp_path / "sdeid.toml"
    toml.write_text('nmi_event = 300\n[[event]]\nnumber = 300\npriority = "critical"\n'
                    '[[event]]\nnumber = 201\ntype = "private"\nintid = 23\n')
    st = load_settings(toml, [], None, None, None)
    assert st.nmi_event == 300 and st.platform.static_events[1].intid == 23
    assert load_settings(None, ["5"], None, None, None, nmi_event=5).nmi_event == 5


@pytest.mark.parametrize("events, nmi, msg", [
    (["200:shared:critical:intid=20"], None, "not an SPI"),
    (["200:private:normal:intid=34"], None, "not a PPI"),
    (["200:intid=34", "201:intid=34"], None, "share intid 34"),
    (["200:shared:intid=x"], None, "'intid' must be an integer"),
    (["200:shared:color=3"], None, "expected NUMBER"),
    (["100"], 7, "--nmi-event 7 is not a static event"),
    (["100"], 0, "--nmi-event 0 is not a static event"),
    (["100"], 2000, "--nmi-event 2000 is not a static event"),
])
def test_config_mistakes_are_one_line(events: list[str], nmi: int | None, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg) as e:
        load_settings(None, events, None, None, None, nmi_event=nmi)
    assert "\n" not in str(e.value)


# ------------------------------------- the daemon over real Unix sockets

async def test_daemon_nmi_event_stats_and_refusals_on_the_control_socket(
        tmp_path: Path) -> None:
    import asyncio

    from qemu.qmp import QMPClient

    from sdeid.control import ControlServer
    from sdeid.proto.daemon import Daemon2
    from tests.test_daemon import close, connect, run, until

    d = Daemon2(cfg(), nmi_event=NMI_EV)
    await d.listen_path(tmp_path / "sdei.sock")
    control = ControlServer(d, on_quit=lambda: None)
    await control.listen(tmp_path / "control.sock")
    qmp = QMPClient("ops")
    await qmp.connect(str(tmp_path / "control.sock"))
    fe = await connect(d)
    try:
        with qmp.listener("SDEI_NMI") as listener:
            # Not registered yet: refused, and the operator sees why.
            await run(fe.send_control, c.encode_control("NMI", {"cpu": 0}))
            ev = await asyncio.wait_for(listener.get(), 5)
            assert ev["data"]["delivered"] is False and ev["data"]["status"] == Ret.DENIED
            for fid, *a in ((Fid.EVENT_REGISTER, NMI_EV, HANDLER, 0, 0, 0),
                            (Fid.EVENT_ENABLE, NMI_EV), (Fid.PE_UNMASK,)):
                assert await run(fe.ret, 3, fid, *a) == 0
            await run(fe.send_control, c.encode_control("NMI", {"cpu": 3}))
            ev = await asyncio.wait_for(listener.get(), 5)
            assert ev["data"] == {"cpu": 3, "event": NMI_EV, "status": 0, "delivered": True}
        assert await run(fe.wait_kick, 3)
        rep = await run(fe.pull, 3)
        assert rep.action == A["ENTER"] and rep.x[0] == NMI_EV
        stats = await qmp.execute("query-stats")
        assert isinstance(stats, dict)
        assert (stats["nmi-received"], stats["nmi-delivered"], stats["nmi-refused"]) == (2, 1, 1)
        info = await qmp.execute("query-sdei")
        assert isinstance(info, dict)
        assert {"number": RTC_EV, "type": "shared", "priority": "critical", "dynamic": False,
                "intid": RTC} in info["events"]
        # The RTC line was claimed at the handshake.
        with fe.lock:
            assert (RTC, 0) in fe.core.claimed
    finally:
        await close(d, fe)
        await qmp.disconnect()
        await control.close()
        await d.close()
    await until(lambda: d.active is None)


async def test_daemon_drops_a_front_end_that_cannot_intercept_the_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sdeid.proto.daemon import Daemon2
    from sdeid.testing.frontend2 import FrontendCore, SocketFrontend
    from tests.test_daemon import run, until

    d = Daemon2(cfg())
    await d.listen_path(tmp_path / "sdei.sock")
    try:
        core = FrontendCore((0, 1), lines=set(range(16, 32)))
        fe = await run(SocketFrontend, str(tmp_path / "sdei.sock"), core)
        await until(lambda: core.hello_reply is not None and d.active is None)
        assert core.hello_reply is not None
        assert core.hello_reply["status"] == spec.STATUS["ENOTSUP"]
        assert any("static event 200 needs INTID 34" in r.getMessage()
                   for r in caplog.records)
        await run(fe.close)
        assert d.backend.dispatcher is None
    finally:
        await d.close()
