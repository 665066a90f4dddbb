"""The daemon (sdeid.proto.daemon.Daemon2) in the test's event loop over
real Unix sockets, with the v2 front-end (sdeid.testing.frontend2) in
threads: the device socket's lifecycle and privacy, lines, reconnects,
hostile peers, and the operators' control socket.  Hostile peers are
dropped and logged; the dispatcher state survives them and the next peer
is served.

What the ring alone proves is in test_proto_ring.py (calls across real
sockets, parallel vCPUs, a second front-end refused, the journal), what
the real process proves in test_proto_daemon.py and test_cli.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from qemu.qmp import ExecuteError, QMPClient

from sdeid.control import ControlServer
from sdeid.lifecycle import DaemonState
from sdeid.model.abi import Fid
from sdeid.proto import codec as c
from sdeid.proto import spec
from sdeid.proto.daemon import Daemon2
from sdeid.testing.frontend2 import FakeGhes, FrontendCore, SocketFrontend
from tests.sim import EP, SHARED_EV, config

MPIDRS = (0, 1, 2, 3)
STATUS_REGISTERED, STATUS_ENABLED = 1, 2


@pytest_asyncio.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon2]:
    d = Daemon2(config())
    await d.listen_path(tmp_path / "sdei.sock")
    yield d
    await d.close()


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition the daemon reaches asynchronously (no sleeps as proof)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


class RecordingCore(FrontendCore):
    """A front-end core that also logs the back-end's requests by name, in
    the order they arrived on the control channel."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.log: list[str] = []
        self._peek = c.ControlReader("be->fe")

    def receive_control(self, data: bytes) -> bytes:
        self._peek.feed(data)
        while (f := self._peek.next_frame()) is not None:
            if not f.reply:
                self.log.append(f.name)
        return super().receive_control(data)


async def connect(d: Daemon2, mpidrs: tuple[int, ...] = MPIDRS,
                  core: FrontendCore | None = None) -> SocketFrontend:
    """A front-end whose every channel the daemon holds (the first call proves it)."""
    assert d.socket_path is not None
    fe = await run(SocketFrontend, str(d.socket_path), core or RecordingCore(mpidrs))
    assert await run(fe.ret, 0, Fid.VERSION) >> 48 == 1
    return fe


async def close(d: Daemon2, fe: SocketFrontend) -> None:
    await run(fe.close)
    await until(lambda: d.active is None)


async def raw(d: Daemon2, data: bytes, close: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, str(d.socket_path))
    if data:
        await loop.sock_sendall(s, data)
    if close:
        s.close()
    return s


def hello(nr_pes: int = 4) -> bytes:
    return FrontendCore(tuple(range(nr_pes))).hello()


# ------------------------------------------------------------------ basics

async def test_socket_is_private_and_lifecycle_is_observable(daemon: Daemon2) -> None:
    assert daemon.socket_path is not None
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600
    fe = await connect(daemon)
    await until(lambda: daemon.state == DaemonState.CONNECTED)
    await close(daemon, fe)
    await until(lambda: daemon.state == DaemonState.LISTENING)
    assert list(daemon.state_history) == [DaemonState.STARTING, DaemonState.LISTENING,
                                          DaemonState.CONNECTED, DaemonState.LISTENING]


async def test_bound_line_claim_level_and_release(daemon: Daemon2) -> None:
    fe = await connect(daemon)

    def scenario() -> None:
        with fe.lock:
            fe.core.levels[(34, 0)] = 1             # the device asserts before the bind
        ev = fe.ret(0, Fid.INTERRUPT_BIND, 34)
        assert ev >= 2000
        with fe.lock:   # LINE_CLAIM went out before the reply, on the control channel
            assert fe.kick.wait_for(lambda: (34, 0) in fe.core.claimed, 5)
        assert fe.ret(0, Fid.EVENT_REGISTER, ev, EP, 0, 0, 0) == 0
        assert fe.ret(0, Fid.EVENT_ENABLE, ev) == 0
        # The level handed over at claim counts: PE_UNMASK's reply asks for a
        # pull, or (the claim's answer still on its way) a kick follows.
        rep = fe.call(0, Fid.PE_UNMASK)
        assert rep.flags & spec.REP_F_PULL or fe.wait_kick(0)
        rep = fe.pull(0)
        assert rep.action == spec.ACTIONS["ENTER"] and rep.x[0] == ev
        with fe.lock:
            low = fe.core.line_level(34, 0, 0)
        fe.send_control(low)
        assert fe.call(0, Fid.EVENT_COMPLETE, 0).action == spec.ACTIONS["RESTORE"]
        assert fe.ret(0, Fid.EVENT_UNREGISTER, ev) == 0
        assert fe.ret(0, Fid.INTERRUPT_RELEASE, ev) == 0
        with fe.lock:
            assert fe.kick.wait_for(lambda: (34, 0) not in fe.core.claimed, 5)
            assert fe.core.log.count("LINE_CLAIM") == 1
            assert fe.core.log.count("LINE_RELEASE") == 1

    try:
        await run(scenario)
    finally:
        await close(daemon, fe)


# ------------------------------------------------------ reconnect and state

async def test_reconnect_keeps_state_reclaims_lines_and_kicks(daemon: Daemon2) -> None:
    fe = await connect(daemon)
    ev = await run(fe.ret, 0, Fid.INTERRUPT_BIND, 40)
    assert ev == 2000
    for fid, *a in ((Fid.EVENT_REGISTER, SHARED_EV, EP, 7, 1, 1),
                    (Fid.EVENT_ENABLE, SHARED_EV), (Fid.PE_UNMASK,)):
        assert await run(fe.ret, 1, fid, *a) == 0
    await close(daemon, fe)
    with daemon.lock:
        assert daemon.trigger(SHARED_EV, None) == 0   # fires while QEMU is away
    g = await connect(daemon)
    try:
        assert await run(g.wait_kick, 1)              # the pending event kicked
        with g.lock:
            assert (40, 0) in g.core.claimed          # the bound line claimed again
        rep = await run(g.pull, 1)
        assert rep.action == spec.ACTIONS["ENTER"] and rep.x[0] == SHARED_EV
        assert rep.x[1] == 7 and rep.addr == EP
    finally:
        await close(daemon, g)


async def test_different_topology_is_refused(daemon: Daemon2,
                                             caplog: pytest.LogCaptureFixture) -> None:
    await close(daemon, await connect(daemon))
    with caplog.at_level(logging.ERROR, logger="sdeid"):
        try:
            g = await run(SocketFrontend, str(daemon.socket_path), FrontendCore((0, 1)))
        except OSError:
            pass        # refused while it was still sending its channels
        else:
            with pytest.raises((EOFError, OSError)):
                await run(g.call, 0, Fid.VERSION)
            await run(g.close)
        await until(lambda: any("different topology" in r.message for r in caplog.records))
    assert daemon.backend.dispatcher is not None
    assert daemon.backend.dispatcher.topology.nr_pes == 4
    await close(daemon, await connect(daemon))      # the right VM is still served


async def test_state_file_survives_a_daemon_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = Daemon2(config(), state_file=state)
    await d.listen_path(tmp_path / "a.sock")
    fe = await connect(d)
    assert await run(fe.ret, 2, Fid.EVENT_REGISTER, SHARED_EV, EP, 9, 0, 0) == 0
    assert await run(fe.ret, 2, Fid.EVENT_ENABLE, SHARED_EV) == 0
    await close(d, fe)
    before = d.backend.dispatcher
    assert before is not None
    await d.close()
    e = Daemon2(config(), state_file=state)
    try:
        assert e.backend.dispatcher is not None
        assert e.backend.dispatcher.snapshot() == before.snapshot()
    finally:
        await e.close()


async def test_disconnect_mid_exchange_loses_and_doubles_nothing(daemon: Daemon2) -> None:
    core = FrontendCore(MPIDRS)
    fe = await connect(daemon, core=core)
    assert await run(fe.ret, 0, Fid.EVENT_REGISTER, SHARED_EV, EP, 1, 0, 0) == 0
    with fe.lock:
        enable = core.call(0, Fid.EVENT_ENABLE, SHARED_EV)
    fe.mine[0].send(enable)
    await close(daemon, fe)                           # gone before reading the reply
    g = await run(SocketFrontend, str(daemon.socket_path), core)   # same instance
    try:
        rep = await run(g.exchange, 0, core.resend(0))   # QEMU re-sends what was in flight
        assert rep.x[0] == 0                          # ENABLE succeeded exactly once
        assert await run(g.ret, 0, Fid.EVENT_STATUS, SHARED_EV) == (
            STATUS_REGISTERED | STATUS_ENABLED)
    finally:
        await close(daemon, g)


# ------------------------------------------------------------ hostile peers

async def survives(d: Daemon2) -> None:
    """The daemon still serves a good peer, with its state intact."""
    await until(lambda: d.active is None)
    before = None if d.backend.dispatcher is None else d.backend.dispatcher.snapshot()
    await close(d, await connect(d))
    if before is not None:
        assert d.backend.dispatcher is not None
        assert d.backend.dispatcher.snapshot() == before


def _header(code: int, size: int, flags: int = 0) -> bytes:
    return c.HEADER.pack(code, flags, size, 1, 0)


@pytest.mark.parametrize("payload", [
    b"\xff" * 64,                                               # garbage
    _header(spec.CONTROL_BY_NAME["HELLO"].code, 1 << 20),       # absurd size
    _header(999, 0),                                            # unknown message
    c.encode_control("KICK", {"pe": 0}),                        # wrong direction
    c.encode_control("LINE_LEVEL", {"intid": 34, "pe": 0, "level": 1}),  # before HELLO
    hello() + hello(),                                          # second HELLO
    hello() + c.encode_control("LINE_LEVEL", {"intid": 34, "pe": 0, "level": 5}),  # bad level
], ids=["garbage", "absurd-size", "unknown-message", "wrong-direction", "before-hello",
        "second-hello", "bad-level"])
async def test_protocol_errors_drop_the_peer_not_the_daemon(
        daemon: Daemon2, payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    await close(daemon, await connect(daemon))       # some state exists
    with caplog.at_level(logging.ERROR, logger="sdeid"):
        s = await raw(daemon, payload, close=False)
        await until(lambda: any("protocol error" in r.message for r in caplog.records))
        s.close()
    await survives(daemon)


async def test_a_vcpu_channel_that_is_not_seqpacket_drops_the_peer(
        daemon: Daemon2, caplog: pytest.LogCaptureFixture) -> None:
    await close(daemon, await connect(daemon))       # some state exists
    core = FrontendCore(MPIDRS)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(daemon.socket_path))
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in MPIDRS]
    with caplog.at_level(logging.ERROR, logger="sdeid"):
        s.sendall(core.hello())
        for pe, (_a, b) in enumerate(pairs):
            socket.send_fds(s, [core.channel(pe)], [b.fileno()])
        await until(lambda: any("SOCK_SEQPACKET" in r.message for r in caplog.records))
    s.close()
    for a, b in pairs:
        a.close()
        b.close()
    await survives(daemon)


async def test_truncated_frame_then_close(daemon: Daemon2,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="sdeid"):
        await raw(daemon, hello()[:20])
        await until(lambda: any("inside a frame" in r.message for r in caplog.records))
    await survives(daemon)


async def test_a_control_frame_stalled_midway_holds_up_no_vcpu(daemon: Daemon2) -> None:
    """v2 has no mid-frame timeout (v1 dropped such a peer after 10 s): a
    half-sent control frame stalls nothing else.  The vCPU channels keep
    being served, and the frame is taken whole once the rest arrives."""
    fe = await connect(daemon)
    try:
        ev = await run(fe.ret, 0, Fid.INTERRUPT_BIND, 34)
        for fid, *a in ((Fid.EVENT_REGISTER, ev, EP, 0, 0, 0), (Fid.EVENT_ENABLE, ev),
                        (Fid.PE_UNMASK,)):
            assert await run(fe.ret, 0, fid, *a) == 0
        with fe.lock:
            # The claim's answer went out before: nothing of the front-end's
            # own can come between the two halves below.
            assert fe.kick.wait_for(lambda: (34, 0) in fe.core.claimed, 5)
            high = fe.core.line_level(34, 0, 1)
        fe.send_control(high[:10])
        for pe in range(4):
            assert await run(fe.ret, pe, Fid.VERSION) >> 48 == 1
        with fe.lock:
            assert 0 not in fe.core.kicked
        fe.send_control(high[10:])
        assert await run(fe.wait_kick, 0)
        rep = await run(fe.pull, 0)
        assert rep.action == spec.ACTIONS["ENTER"] and rep.x[0] == ev
    finally:
        await close(daemon, fe)


async def test_peer_with_another_uid_is_refused(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    d = Daemon2(config(), allowed_uids={os.getuid() + 12345})
    await d.listen_path(tmp_path / "u.sock")
    try:
        with caplog.at_level(logging.ERROR, logger="sdeid"):
            try:
                fe = await run(SocketFrontend, str(tmp_path / "u.sock"), FrontendCore(MPIDRS))
            except OSError:
                pass                       # refused before the handshake was all sent
            else:
                with pytest.raises((EOFError, OSError)):
                    await run(fe.call, 0, Fid.VERSION)
                await run(fe.close)
            await until(lambda: any("refusing peer" in r.message for r in caplog.records))
        assert d.backend.dispatcher is None
        assert d.state == DaemonState.LISTENING
    finally:
        await d.close()


# ---------------------------------------------------------- control socket

async def _bounded(listener: Any, timeout: float = 5.0) -> AsyncIterator[Any]:
    """Events from a qemu.qmp listener, failing instead of waiting forever."""
    while True:
        yield await asyncio.wait_for(listener.get(), timeout)


async def test_control_socket_with_qemu_qmp(daemon: Daemon2, tmp_path: Path) -> None:
    stopped = asyncio.Event()
    control = ControlServer(daemon, on_quit=stopped.set)
    await control.listen(tmp_path / "control.sock")
    qmp = QMPClient("test")
    await qmp.connect(str(tmp_path / "control.sock"))
    fe = None
    try:
        with pytest.raises(ExecuteError, match="no VM"):
            await qmp.execute("query-sdei")
        fe = await connect(daemon)
        for fid, *a in ((Fid.EVENT_REGISTER, SHARED_EV, EP, 1, 0, 0),
                        (Fid.EVENT_ENABLE, SHARED_EV), (Fid.PE_UNMASK,)):
            assert await run(fe.ret, 2, fid, *a) == 0
        status = await qmp.execute("query-status")
        assert status == {"state": "connected", "connected": True, "ready": True,
                          "sdei-version": "1.1", "pes": 4}
        with qmp.listener() as listener:
            await qmp.execute("sdei-trigger", {"event": SHARED_EV})
            assert await run(fe.wait_kick, 2)
            rep = await run(fe.pull, 2)
            assert rep.action == spec.ACTIONS["ENTER"] and rep.x[0] == SHARED_EV
            seen = []
            async for ev in _bounded(listener):
                seen.append(ev["event"])
                if ev["event"] == "SDEI_DISPATCH":
                    assert ev["data"]["pe"] == 2 and ev["data"]["event"] == SHARED_EV
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
    finally:
        if fe is not None:
            await close(daemon, fe)
        await qmp.disconnect()
        await control.close()


async def test_control_socket_survives_garbage(daemon: Daemon2, tmp_path: Path) -> None:
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


async def test_error_injection_writes_the_record_before_the_event(daemon: Daemon2,
                                                                 tmp_path: Path) -> None:
    control = ControlServer(daemon, on_quit=lambda: None)
    await control.listen(tmp_path / "ctl.sock")
    qmp = QMPClient("ops")
    await qmp.connect(str(tmp_path / "ctl.sock"))
    fe = await connect(daemon)
    core = fe.core
    assert isinstance(core, RecordingCore)
    ghes = FakeGhes(SHARED_EV)
    # The record is in guest memory when the writer returns; the log shows
    # whether the KICK came after it.
    ghes.on_write = lambda record: core.log.append("RECORD")
    daemon.record_writer = ghes.write
    try:
        assert await run(fe.ret, 1, Fid.EVENT_REGISTER, SHARED_EV, EP, 0xE44, 0, 0) == 0
        assert await run(fe.ret, 1, Fid.PE_UNMASK) == 0
        with pytest.raises(ExecuteError, match="not registered"):
            await qmp.execute("sdei-inject-error", {"event": 101, "address": 0x1000})
        with pytest.raises(ExecuteError, match="static platform event"):
            await qmp.execute("sdei-inject-error", {"event": 2000, "address": 0x1000})
        with pytest.raises(ExecuteError, match="non-negative"):
            await qmp.execute("sdei-inject-error", {"event": SHARED_EV, "address": -1})
        ghes.refuse = "QEMU refused the error record: no GHES error source (yet)"
        with pytest.raises(ExecuteError, match="no GHES error source"):
            await qmp.execute("sdei-inject-error", {"event": SHARED_EV, "address": 0x1000})
        ghes.refuse = None
        assert ghes.records == [] and "RECORD" not in core.log
        assert await run(fe.ret, 1, Fid.EVENT_ENABLE, SHARED_EV) == 0
        await qmp.execute("sdei-inject-error", {"event": SHARED_EV, "address": 0x4000_2000})
        assert await run(fe.wait_kick, 1)
        with fe.lock:
            assert [ghes.address(r) for r in ghes.records] == [0x4000_2000]
            assert core.log[-2:] == ["RECORD", "KICK"]   # the record first
        rep = await run(fe.pull, 1)
        assert rep.action == spec.ACTIONS["ENTER"] and rep.x[0] == SHARED_EV
        stats = await qmp.execute("query-stats")
        assert stats["error-records-delivered"] == 1 and stats["error-records-refused"] == 3
    finally:
        await close(daemon, fe)
        await qmp.disconnect()
        await control.close()


async def test_error_injection_needs_qemus_monitor(daemon: Daemon2) -> None:
    fe = await connect(daemon)
    try:
        assert await run(fe.ret, 0, Fid.EVENT_REGISTER, SHARED_EV, EP, 1, 0, 0) == 0
        with pytest.raises(LookupError, match="sdeid --qmp"):
            await daemon.inject_error(SHARED_EV, 0x1000, None)
        assert not fe.core.kicked
        assert daemon.extra_stats["error-records-refused"] == 1
    finally:
        await close(daemon, fe)


# ------------------------------------------------------------------ state

def _state_request(fe: SocketFrontend, name: str, tag: int) -> socket.socket:
    """Send SAVE_STATE or LOAD_STATE with one end of a stream socket pair,
    as the QEMU device does; returns our end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with fe.lock:
            data = fe.core.request(name, tag=tag)
        socket.send_fds(fe.sock, [data], [theirs.fileno()])
    finally:
        theirs.close()
    ours.settimeout(5)
    return ours


def _load(fe: SocketFrontend, blob: bytes, tag: int) -> int:
    """LOAD_STATE: the blob, end of it (shutdown), then the i32 status."""
    s = _state_request(fe, "LOAD_STATE", tag)
    with s:
        s.sendall(blob)
        s.shutdown(socket.SHUT_WR)
        status = b""
        while len(status) < 4:
            chunk = s.recv(4 - len(status))
            assert chunk, "the back-end closed the state socket without a status"
            status += chunk
        assert s.recv(1) == b""
    return int.from_bytes(status, "little", signed=True)


async def test_state_moves_over_a_socket_and_a_refusal_is_answered_on_it(
        tmp_path: Path) -> None:
    src, dst = Daemon2(config()), Daemon2(config())
    await src.listen_path(tmp_path / "src.sock")
    await dst.listen_path(tmp_path / "dst.sock")
    try:
        a = await connect(src)
        assert await run(a.ret, 0, Fid.EVENT_REGISTER, SHARED_EV, EP, 7, 0, 0) == 0

        def save() -> bytes:
            s = _state_request(a, "SAVE_STATE", 3)
            with s:
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks)

        blob = await run(save)
        assert blob.startswith(b"SDEISTAT")
        b = await connect(dst)
        assert await run(b.ret, 0, Fid.EVENT_STATUS, SHARED_EV) == 0
        # A corrupt blob: refused on the socket (-EINVAL), the state in force stays.
        bad = blob[:-1] + bytes([blob[-1] ^ 0xFF])
        assert await run(_load, b, bad, 4) == spec.STATUS["EINVAL"]
        assert await run(b.ret, 0, Fid.EVENT_STATUS, SHARED_EV) == 0
        # The real one: 0 on the socket, and the registration came with it.
        assert await run(_load, b, blob, 5) == 0
        await until(lambda: any(e["event"] == "SDEI_STATE_LOADED" for e in dst.events))
        assert await run(b.ret, 0, Fid.EVENT_STATUS, SHARED_EV) == STATUS_REGISTERED
        await close(src, a)
        await close(dst, b)
    finally:
        await src.close()
        await dst.close()


# ------------------------------------------------------------------ life

async def test_a_daemon_stopped_before_listening_goes_straight_to_stopped() -> None:
    d = Daemon2(config())
    await d.close()
    assert list(d.state_history) == [DaemonState.STARTING, DaemonState.STOPPED]


async def test_a_stop_while_connected_never_goes_back_to_listening(daemon: Daemon2) -> None:
    """The ring ends the connection while it closes: that DISCONNECT must
    not make a stopping daemon 'listening' again (it used to)."""
    fe = await connect(daemon)
    await until(lambda: daemon.state == DaemonState.CONNECTED)
    await daemon.close()
    await asyncio.sleep(0.05)       # let a late disconnect callback run, if any
    await run(fe.close)
    assert list(daemon.state_history)[-3:] == [DaemonState.CONNECTED, DaemonState.STOPPING,
                                               DaemonState.STOPPED]
    assert daemon.state == DaemonState.STOPPED


async def test_a_state_file_of_another_configuration_is_refused_at_start(
        tmp_path: Path) -> None:
    """The events and slots are the guest's ABI: a journal written under one
    configuration must not be served under another, silently."""
    from sdeid.errors import ConfigError
    from sdeid.model.types import PlatformConfig

    state = tmp_path / "state"
    d = Daemon2(config(), state_file=state)
    await d.listen_path(tmp_path / "a.sock")
    fe = await connect(d)
    assert await run(fe.ret, 0, Fid.EVENT_REGISTER, SHARED_EV, EP, 7, 0, 0) == 0
    await close(d, fe)
    await d.close()
    other = PlatformConfig(static_events=config().static_events[1:])
    with pytest.raises(ConfigError, match="another platform configuration"):
        Daemon2(other, state_file=state)
    again = Daemon2(config(), state_file=state)     # the same one is served
    assert again.backend.dispatcher is not None
    assert again.backend.dispatcher.shared[SHARED_EV].state.registered
    await again.close()
