"""The daemon over real Unix sockets: the front-end peer in a thread, the
daemon in the test's event loop.  Hostile peers are dropped and logged; the
dispatcher state survives them and the next peer is served."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from qemu.qmp import ExecuteError, QMPClient

from sdeid.control import ControlServer
from sdeid.model.abi import Fid
from sdeid.model.dispatcher import Dispatcher
from sdeid.server import Daemon, DaemonState
from sdeid.testing.frontend import FrontEnd, FrontEndError
from sdeid.wire import codec as w
from sdeid.wire import spec
from tests.sim import EP, SHARED_EV, config

MPIDRS = [0, 1, 2, 3]


@pytest_asyncio.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(config(), stall_timeout=0.3)
    await d.listen_path(tmp_path / "sdei.sock")
    yield d
    await d.close()


def fe(d: Daemon, mpidrs: list[int] = MPIDRS) -> FrontEnd:
    assert d.socket_path is not None
    return FrontEnd(str(d.socket_path), mpidrs)


async def run(fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(fn, *args)


async def until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a condition the daemon reaches asynchronously (no sleeps as proof)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def raw(d: Daemon, data: bytes, close: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, str(d.socket_path))
    if data:
        await loop.sock_sendall(s, data)
    if close:
        s.close()
    return s


def hello_frame() -> bytes:
    return w.encode(w.Hello(1, spec.FEATURES_ALL, 64, tuple(MPIDRS)), id=1, need_reply=True)


# ------------------------------------------------------------------ basics

async def test_socket_is_private_and_lifecycle_is_observable(daemon: Daemon) -> None:
    assert daemon.socket_path is not None
    mode = stat.S_IMODE(os.stat(daemon.socket_path).st_mode)
    assert mode == 0o600
    f = fe(daemon)
    await run(f.__enter__)
    await until(lambda: daemon.state == DaemonState.CONNECTED)
    await run(f.close)
    await until(lambda: daemon.state == DaemonState.LISTENING)
    assert daemon.state_history == [DaemonState.STARTING, DaemonState.LISTENING,
                                    DaemonState.CONNECTED, DaemonState.LISTENING]


async def test_calls_dispatch_and_completion_over_the_socket(daemon: Daemon) -> None:
    f = fe(daemon)

    def scenario() -> list[tuple[int, int]]:
        with f:
            assert f.call(0, Fid.VERSION) == 0x1000153444549
            for pe in range(4):
                assert f.call(pe, Fid.EVENT_REGISTER, 0, EP, 0x42, 0, 0) == 0
                f.call(pe, Fid.EVENT_ENABLE, 0)
                f.call(pe, Fid.PE_UNMASK)
            assert f.call(1, Fid.EVENT_SIGNAL, 0, 3) == 0
            f.sync()
            entered = f.pump()
            saved_pc = f.vcpus[3].x[2]
            f.call(3, Fid.EVENT_COMPLETE, 0)
            assert f.vcpus[3].pc == saved_pc
            return entered

    assert await run(scenario) == [(3, 0)]


async def test_bound_line_claim_level_and_release(daemon: Daemon) -> None:
    f = fe(daemon)

    def scenario() -> None:
        with f:
            f.set_line(34, 0, 1)                  # the device asserts before the bind
            ev = f.call(0, Fid.INTERRUPT_BIND, 34)
            assert (34, 0) in f.claimed           # claimed before the reply
            f.call(0, Fid.EVENT_REGISTER, ev, EP, 0, 0, 0)
            f.call(0, Fid.EVENT_ENABLE, ev)
            f.call(0, Fid.PE_UNMASK)              # reply says pull: level was reported
            assert f.pump() == [(0, ev)]
            f.set_line(34, 0, 0)
            f.call(0, Fid.EVENT_COMPLETE, 0)
            f.call(0, Fid.EVENT_UNREGISTER, ev)
            assert f.call(0, Fid.INTERRUPT_RELEASE, ev) == 0
            assert (34, 0) not in f.claimed and f.gic_seen[-1] == (34, 0, 0)

    await run(scenario)


# ------------------------------------------------------ reconnect and state

async def test_reconnect_keeps_state_and_reasserts_lines(daemon: Daemon) -> None:
    f = fe(daemon)

    def first() -> None:
        with f:
            ev = f.call(0, Fid.INTERRUPT_BIND, 40)
            f.call(1, Fid.EVENT_REGISTER, SHARED_EV, EP, 7, 1, 1)
            f.call(1, Fid.EVENT_ENABLE, SHARED_EV)
            f.call(1, Fid.PE_UNMASK)
            assert ev == 2000

    await run(first)
    await until(lambda: daemon.active is None)
    daemon.trigger(SHARED_EV, None)              # fires while QEMU is away
    g = fe(daemon)

    def second() -> None:
        with g:
            g.sync()
            assert (40, 0) in g.claimed           # re-asserted after HELLO
            assert g.kicked == {1}                # and the pending event kicked
            assert g.pump() == [(1, SHARED_EV)]

    await run(second)


async def test_different_topology_is_refused(daemon: Daemon) -> None:
    await run(lambda: fe(daemon).__enter__().close())
    g = fe(daemon, [0, 1])
    status = await run(g.connect)
    g.close()
    assert status == spec.STATUS["EBUSY"]


async def test_state_blob_over_the_socket(daemon: Daemon) -> None:
    f = fe(daemon)

    def scenario() -> None:
        with f:
            f.call(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 1, 0, 0)
            blob = f.get_state()
            f.call(0, Fid.EVENT_UNREGISTER, SHARED_EV)
            assert f.set_state(b"garbage") == spec.STATUS["EINVAL"]
            assert f.call(0, Fid.EVENT_STATUS, SHARED_EV) == 0   # state kept
            assert f.set_state(blob) == 0
            assert f.call(0, Fid.EVENT_STATUS, SHARED_EV) == 1   # state loaded
            other = Dispatcher.restore(blob)
            assert other.topology.nr_pes == 4

    await run(scenario)


async def test_state_file_survives_a_daemon_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    d = Daemon(config(), state_file=state)
    await d.listen_path(tmp_path / "a.sock")
    f = FrontEnd(str(tmp_path / "a.sock"), MPIDRS)

    def scenario() -> None:
        with f:
            f.call(2, Fid.EVENT_REGISTER, SHARED_EV, EP, 9, 0, 0)
            f.call(2, Fid.EVENT_ENABLE, SHARED_EV)

    await run(scenario)
    before = d.backend.dispatcher
    await d.close()
    e = Daemon(config(), state_file=state)
    assert e.backend.dispatcher == before
    await e.close()


# ------------------------------------------------------------ hostile peers

async def survives(d: Daemon) -> None:
    """The daemon still serves a good peer, with its state intact."""
    await until(lambda: d.active is None)
    before = None if d.backend.dispatcher is None else d.backend.dispatcher.snapshot()
    f = fe(d)

    def check() -> None:
        with f:
            assert f.call(0, Fid.VERSION) == 0x1000153444549

    await run(check)
    if before is not None:
        assert d.backend.dispatcher is not None
        after = Dispatcher.restore(before)
        assert after.topology == d.backend.dispatcher.topology


@pytest.mark.parametrize("payload", [
    b"\xff" * 64,                                            # garbage
    w.HEADER.pack(2, 1, spec.MAX_PAYLOAD + 1, 1),            # absurd size
    w.HEADER.pack(99, 1, 0, 1),                              # unknown request
    w.encode(w.Kick(0), id=1),                               # wrong direction
    w.encode(w.Call(0, 0xC4000020, (0,) * 5, 0, 0x3C5), id=1, need_reply=True),  # before HELLO
    hello_frame() + hello_frame(),                           # second HELLO
    hello_frame() + w.encode(w.Call(7, 0xC4000020, (0,) * 5, 0, 0x3C5), id=2),  # PE out of range
    hello_frame() + w.encode(w.PePower(0, 9), id=2, need_reply=True),          # bad power state
    hello_frame() + w.encode(w.LineLevel(34, 0, 5), id=2),   # level not 0/1
], ids=["garbage", "absurd-size", "unknown-request", "wrong-direction", "call-before-hello",
        "second-hello", "pe-out-of-range", "bad-power-state", "bad-level"])
async def test_protocol_errors_drop_the_peer_not_the_daemon(
        daemon: Daemon, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    await run(lambda: fe(daemon).__enter__().close())     # some state exists
    await until(lambda: daemon.active is None)
    with caplog.at_level(logging.ERROR, logger="sdeid"):
        s = await raw(daemon, payload, close=False)
        await until(lambda: any("protocol error" in r.message for r in caplog.records))
        s.close()
    await survives(daemon)


async def test_truncated_frame_then_close(daemon: Daemon,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="sdeid"):
        await raw(daemon, hello_frame()[:20])
        await until(lambda: any("mid-frame" in r.message for r in caplog.records))
    await survives(daemon)


async def test_peer_that_stalls_mid_frame_is_dropped(daemon: Daemon,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="sdeid"):
        s = await raw(daemon, hello_frame()[:30], close=False)
        await until(lambda: any("stalled" in r.message for r in caplog.records))
        s.close()
    await survives(daemon)


async def test_disconnect_mid_exchange_keeps_state(daemon: Daemon) -> None:
    f = fe(daemon)

    def scenario() -> None:
        f.connect()
        f.call(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 1, 0, 0)
        assert f.sock is not None
        f.sock.sendall(w.encode(w.Call(0, Fid.EVENT_ENABLE, (SHARED_EV, 0, 0, 0, 0), 0, 0x3C5),
                                id=99, need_reply=True))
        f.close()                                  # gone before reading the reply

    await run(scenario)
    await until(lambda: daemon.active is None)
    g = fe(daemon)

    def check() -> int:
        with g:
            return g.call(0, Fid.EVENT_STATUS, SHARED_EV)

    assert await run(check) in (1, 3)   # registered; enabled if the call was processed


async def test_second_front_end_is_refused_while_one_is_connected(daemon: Daemon) -> None:
    f = fe(daemon)
    await run(f.__enter__)
    g = fe(daemon)
    with pytest.raises((ConnectionError, OSError, FrontEndError)):
        await run(g.connect)
    g.close()
    assert await run(f.call, 0, Fid.VERSION) == 0x1000153444549
    await run(f.close)


async def test_peer_with_another_uid_is_refused(tmp_path: Path) -> None:
    d = Daemon(config(), allowed_uids={os.getuid() + 12345})
    await d.listen_path(tmp_path / "u.sock")
    f = FrontEnd(str(tmp_path / "u.sock"), MPIDRS)
    with pytest.raises((ConnectionError, OSError)):
        await run(f.connect)
    f.close()
    assert d.backend.dispatcher is None
    await d.close()


# ---------------------------------------------------------- control socket

async def _bounded(listener, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """Events from a qemu.qmp listener, failing instead of waiting forever."""
    while True:
        yield await asyncio.wait_for(listener.get(), timeout)


async def test_control_socket_with_qemu_qmp(daemon: Daemon, tmp_path: Path) -> None:
    stopped = asyncio.Event()
    control = ControlServer(daemon, on_quit=stopped.set)
    await control.listen(tmp_path / "control.sock")
    qmp = QMPClient("test")
    await qmp.connect(str(tmp_path / "control.sock"))
    try:
        with pytest.raises(ExecuteError, match="no VM"):
            await qmp.execute("query-sdei")
        f = fe(daemon)

        def arm() -> None:
            f.connect()
            f.call(2, Fid.EVENT_REGISTER, SHARED_EV, EP, 1, 0, 0)
            f.call(2, Fid.EVENT_ENABLE, SHARED_EV)
            f.call(2, Fid.PE_UNMASK)

        await run(arm)
        status = await qmp.execute("query-status")
        assert status == {"state": "connected", "connected": True, "sdei-version": "1.1",
                          "pes": 4}
        with qmp.listener() as listener:
            await qmp.execute("sdei-trigger", {"event": SHARED_EV})
            await run(f.drain, 2.0)
            assert f.kicked == {2}
            assert await run(f.pump) == [(2, SHARED_EV)]
            seen = []
            async for ev in _bounded(listener):
                seen.append(ev["event"])
                if ev["event"] == "SDEI_DISPATCH":
                    assert ev["data"] == {"pe": 2, "event": SHARED_EV}
                    break
            assert seen[0] == "SDEI_TRIGGER"
        info = await qmp.execute("query-sdei")
        assert info["pes"][2]["running"] == [SHARED_EV]
        assert any(r["event"] == SHARED_EV for r in info["registered"])
        with pytest.raises(ExecuteError, match="cannot be triggered"):
            await qmp.execute("sdei-trigger", {"event": 4242})
        with pytest.raises(ExecuteError, match="not been found"):
            await qmp.execute("no-such-command")
        blob = await qmp.execute("query-state-blob")
        assert isinstance(blob["blob"], str) and len(blob["blob"]) > 20
        await qmp.execute("quit")
        await asyncio.wait_for(stopped.wait(), 5)
        await run(f.close)
    finally:
        await qmp.disconnect()
        await control.close()


async def test_control_socket_survives_garbage(daemon: Daemon, tmp_path: Path) -> None:
    control = ControlServer(daemon, on_quit=lambda: None)
    await control.listen(tmp_path / "c.sock")
    try:
        r, wr = await asyncio.open_unix_connection(str(tmp_path / "c.sock"))
        assert b"QMP" in await r.readline()
        for line in (b"not json\n", b"[1,2]\n", b'{"execute": 5}\n',
                     b'{"execute": "query-status"}\n'):
            wr.write(line)
            await wr.drain()
            assert b'"error"' in await r.readline()
        wr.write(b'{"execute": "qmp_capabilities"}\n{"execute": "query-status", "id": 7}\n')
        await wr.drain()
        assert b'"return": {}' in await r.readline()
        assert b'"id": 7' in await r.readline()
        wr.write(b"x" * (70 * 1024) + b"\n")        # over the line limit: dropped
        await wr.drain()
        assert await r.read() == b""
        wr.close()
        await wr.wait_closed()
    finally:
        await control.close()


async def test_error_injection_writes_the_record_before_the_event(daemon: Daemon,
                                                                 tmp_path: Path) -> None:
    control = ControlServer(daemon, on_quit=lambda: None)
    await control.listen(tmp_path / "ctl.sock")
    qmp = QMPClient("ops")
    await qmp.connect(str(tmp_path / "ctl.sock"))
    f = fe(daemon)
    try:
        def arm() -> None:
            f.connect()
            f.call(1, Fid.EVENT_REGISTER, SHARED_EV, EP, 0xE44, 0, 0)
            f.call(1, Fid.PE_UNMASK)

        await run(arm)
        with pytest.raises(ExecuteError, match="not registered"):
            await qmp.execute("sdei-inject-error", {"event": 101, "address": 0x1000})
        with pytest.raises(ExecuteError, match="static platform event"):
            await qmp.execute("sdei-inject-error", {"event": 2000, "address": 0x1000})
        with pytest.raises(ExecuteError, match="non-negative"):
            await qmp.execute("sdei-inject-error", {"event": SHARED_EV, "address": -1})
        await run(f.call, 1, Fid.EVENT_ENABLE, SHARED_EV)
        await qmp.execute("sdei-inject-error", {"event": SHARED_EV, "address": 0x4000_2000})
        await run(f.drain, 2.0)
        assert f.error_records == [(SHARED_EV, spec.ERROR_KINDS["MEMORY"], 0x4000_2000)]
        assert f.log[-2:] == ["ErrorRecord", "Kick"]   # the record first, then the kick
        assert await run(f.pump) == [(1, SHARED_EV)]
    finally:
        await run(f.close)
        await qmp.disconnect()
        await control.close()


async def test_error_injection_needs_the_feature(daemon: Daemon) -> None:
    f = FrontEnd(str(daemon.socket_path), MPIDRS,
                 features=spec.FEATURES_ALL & ~spec.FEATURES["ERROR_RECORDS"])

    def arm() -> None:
        f.connect()
        f.call(0, Fid.EVENT_REGISTER, SHARED_EV, EP, 1, 0, 0)

    await run(arm)
    with pytest.raises(LookupError, match="ERROR_RECORDS"):
        daemon.inject_error(SHARED_EV, 1, 0x1000, None)
    await run(f.close)
