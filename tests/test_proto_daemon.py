"""`sdeid --protocol 2`: the real process, its control socket, its journal."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest
from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError

from sdeid.model.abi import Fid
from sdeid.proto import spec
from sdeid.testing.frontend2 import FakeGhes, FrontendCore, SocketFrontend
from tests.test_cli import start, stop

HANDLER = 0x40100000


def _daemon(tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return start("--protocol", "2", "--socket-path", str(tmp_path / "sdei.sock"),
                 "--control-socket", str(tmp_path / "ctl.sock"),
                 "--event", "100:shared:normal", *extra)


async def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def test_operator_trigger_reaches_the_v2_front_end_and_records_need_qmp(
        tmp_path: Path) -> None:
    p = _daemon(tmp_path)
    fe = SocketFrontend(str(tmp_path / "sdei.sock"), FrontendCore((0, 1)))
    qmp = QMPClient("test")
    try:
        assert await _in_thread(fe.ret, 0, Fid.EVENT_REGISTER, 100, HANDLER, 9, 0, 0) == 0
        assert await _in_thread(fe.ret, 0, Fid.EVENT_ENABLE, 100) == 0
        assert await _in_thread(fe.ret, 0, Fid.PE_UNMASK) == 0
        await qmp.connect(str(tmp_path / "ctl.sock"))
        status = await qmp.execute("query-status")
        assert status["connected"] is True and status["pes"] == 2
        # Records are written through QEMU's QMP monitor: without --qmp the
        # injection is refused with the reason, and nothing is triggered.
        with pytest.raises(ExecuteError, match="QMP monitor"):
            await qmp.execute("sdei-inject-error", {"event": 100, "address": 0x44000000})
        assert not fe.core.kicked
        await qmp.execute("sdei-trigger", {"event": 100})
        assert await _in_thread(fe.wait_kick, 0)
        rep = await _in_thread(fe.pull, 0)
        assert rep.action == spec.ACTIONS["ENTER"] and rep.x[0] == 100
        sdei = await qmp.execute("query-sdei")
        assert sdei["pes"][0]["running"] == [100]
        stats = await qmp.execute("query-stats")
        assert stats["dispatches"] == 1
        assert stats["error-records-delivered"] == 0 and stats["error-records-refused"] == 1
    finally:
        await qmp.disconnect()
        await _in_thread(fe.close)
        stop(p)


async def test_a_sigkilled_daemon_restarts_from_its_journal(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    p = _daemon(tmp_path, "--state-file", state)
    core = FrontendCore((0,))
    fe = SocketFrontend(str(tmp_path / "sdei.sock"), core)
    assert await _in_thread(fe.ret, 0, Fid.EVENT_REGISTER, 100, HANDLER, 9, 0, 0) == 0
    p.send_signal(signal.SIGKILL)
    p.communicate()
    await _in_thread(fe.close)
    p = _daemon(tmp_path, "--state-file", state)
    fe = SocketFrontend(str(tmp_path / "sdei.sock"), core)
    qmp = QMPClient("test")
    try:
        await qmp.connect(str(tmp_path / "ctl.sock"))
        reg = (await qmp.execute("query-sdei"))["registered"]
        assert [(r["event"], r["entry"], r["argument"]) for r in reg] == [(100, HANDLER, 9)]
        assert await _in_thread(fe.ret, 0, Fid.EVENT_REGISTER, 100, HANDLER, 9, 0, 0) == -3
    finally:
        await qmp.disconnect()
        await _in_thread(fe.close)
        stop(p)


# --------------------------------------- error records: read-ack, bounded

async def _inprocess(tmp_path: Path):  # type: ignore[no-untyped-def]
    from sdeid.config import load_config
    from sdeid.proto.daemon import Daemon2
    d = Daemon2(load_config(None, ["100:shared:normal"], None, None, None))
    ghes = FakeGhes(100)
    d.record_writer = ghes.write
    await d.listen_path(tmp_path / "sdei.sock")
    fe = await _in_thread(SocketFrontend, str(tmp_path / "sdei.sock"), FrontendCore((0, 1)))
    for fid, *a in ((Fid.EVENT_REGISTER, 100, HANDLER, 9, 0, 0), (Fid.EVENT_ENABLE, 100),
                    (Fid.PE_UNMASK,)):
        assert await _in_thread(fe.ret, 0, fid, *a) == 0
    return d, fe, ghes


def _guest(fe: SocketFrontend, ghes: FakeGhes, n: int, seen: list[int]) -> None:
    """A guest's GHES handler: take the event, read (acknowledge) the
    record, complete; n times."""
    while len(seen) < n:
        if not fe.wait_kick(0, 10):
            return
        rep = fe.pull(0)
        if rep.action != spec.ACTIONS["ENTER"]:
            continue
        with fe.lock:
            seen.append(ghes.address(ghes.records[-1]))
            ghes.ack()
        fe.call(0, Fid.EVENT_COMPLETE, 0)


async def test_a_burst_of_error_records_is_delivered_one_per_acknowledgement(
        tmp_path: Path) -> None:
    d, fe, ghes = await _inprocess(tmp_path)
    seen: list[int] = []
    guest = asyncio.get_running_loop().run_in_executor(None, _guest, fe, ghes, 31, seen)
    try:
        addrs = [0x44000000 + i * 0x1000 for i in range(31)]
        results = await asyncio.gather(*(d.inject_error(100, a, None) for a in addrs))
        await asyncio.wait_for(guest, 20)
        assert results == [0] * 31
        assert sorted(seen) == addrs               # every record reached the guest once
        assert d.extra_stats["error-records-delivered"] == 31
        assert d.extra_stats["error-records-refused"] == 0
    finally:
        await _in_thread(fe.close)
        await d.close()


async def test_a_record_nobody_signalled_is_signalled_before_ours(tmp_path: Path) -> None:
    """Someone wrote a record with QEMU's own inject-ghes-v2-error, which
    raises no event: the source stays busy and the guest would never read
    it.  The next injection finds the source busy while the event is idle,
    raises the event once for that record, then delivers its own."""
    from sdeid import cper
    d, fe, ghes = await _inprocess(tmp_path)
    foreign = 0x48000000
    ghes.records.append(cper.memory_error(foreign, cper.SEV_RECOVERABLE))
    ghes.unacked = True
    seen: list[int] = []
    guest = asyncio.get_running_loop().run_in_executor(None, _guest, fe, ghes, 2, seen)
    try:
        assert await d.inject_error(100, 0x44000000, None) == 0
        await asyncio.wait_for(guest, 20)
        assert seen == [foreign, 0x44000000]       # the stale record, then ours
        assert [ghes.address(r) for r in ghes.records] == [foreign, 0x44000000]
        stats = d.extra_stats
        assert stats["error-records-signalled-for-others"] == 1
        assert stats["error-records-delivered"] == 1 and stats["error-records-refused"] == 0
    finally:
        await _in_thread(fe.close)
        await d.close()


async def test_error_records_beyond_the_queue_bound_are_refused(tmp_path: Path) -> None:
    from sdeid.proto import daemon as dmod
    d, fe, ghes = await _inprocess(tmp_path)
    ghes.unacked = True               # the guest never acknowledges
    old = dmod.ACK_TIMEOUT
    dmod.ACK_TIMEOUT = 0.3
    try:
        n = dmod.MAX_QUEUED_RECORDS + 6
        res = await asyncio.gather(*(d.inject_error(100, 0x44000000 + i * 0x1000, None)
                                     for i in range(n)), return_exceptions=True)
        full = [r for r in res if isinstance(r, LookupError) and "already waiting" in str(r)]
        late = [r for r in res if isinstance(r, LookupError) and "did not acknowledge" in str(r)]
        assert len(full) == 6 and len(late) == dmod.MAX_QUEUED_RECORDS
        assert ghes.records == []
        assert d.extra_stats["error-records-refused"] == n
        assert d.extra_stats["error-records-queued"] == 0
        # the event was raised once for the record in the way; the guest
        # never took it, so it stayed pending and was not raised again
        assert d.extra_stats["error-records-signalled-for-others"] == 1
    finally:
        dmod.ACK_TIMEOUT = old
        await _in_thread(fe.close)
        await d.close()


async def test_an_nmi_with_nmi_ghes_writes_a_fatal_record_then_raises_the_event(
        tmp_path: Path) -> None:
    from sdeid import cper
    from sdeid.config import load_config
    from sdeid.proto import codec
    from sdeid.proto.daemon import Daemon2
    d = Daemon2(load_config(None, ["100:shared:critical"], None, None, None),
                nmi_event=100, nmi_ghes=True)
    ghes = FakeGhes(100)
    order: list[str] = []
    ghes.on_write = lambda record: order.append("record")
    d.record_writer = ghes.write
    seen: list[dict[str, object]] = []
    d.listeners.append(seen.append)
    await d.listen_path(tmp_path / "sdei.sock")
    fe = await _in_thread(SocketFrontend, str(tmp_path / "sdei.sock"), FrontendCore((0, 1)))
    try:
        for fid, *a in ((Fid.EVENT_REGISTER, 100, HANDLER, 9, 0, 0), (Fid.EVENT_ENABLE, 100),
                        (Fid.PE_UNMASK,)):
            assert await _in_thread(fe.ret, 0, fid, *a) == 0
        await _in_thread(fe.send_control, codec.encode_control("NMI", {"cpu": 1}))
        assert await _in_thread(fe.wait_kick, 0)
        order.append("kick")
        assert order == ["record", "kick"]
        assert [ghes.severity(r) for r in ghes.records] == [cper.SEV_FATAL]
        for _ in range(100):
            if any(e["event"] == "SDEI_NMI" for e in seen):
                break
            await asyncio.sleep(0.02)
        nmi = [e["data"] for e in seen if e["event"] == "SDEI_NMI"]
        assert nmi == [{"cpu": 1, "event": 100, "record": "fatal", "status": 0,
                        "delivered": True}]
        assert d.extra_stats["nmi-delivered"] == 1 and d.extra_stats["nmi-refused"] == 0
        # The guest never acknowledged: a second NMI cannot overwrite the
        # record and is refused, reported and counted, after ACK_TIMEOUT.
        from sdeid.proto import daemon as dmod
        old, dmod.ACK_TIMEOUT = dmod.ACK_TIMEOUT, 0.2
        try:
            await _in_thread(fe.send_control, codec.encode_control("NMI", {"cpu": 0}))
            for _ in range(100):
                if len([e for e in seen if e["event"] == "SDEI_NMI"]) == 2:
                    break
                await asyncio.sleep(0.02)
        finally:
            dmod.ACK_TIMEOUT = old
        last = [e["data"] for e in seen if e["event"] == "SDEI_NMI"][-1]
        assert last["delivered"] is False and "did not acknowledge" in str(last["reason"])
        assert d.extra_stats["nmi-refused"] == 1 and len(ghes.records) == 1
    finally:
        await _in_thread(fe.close)
        await d.close()

