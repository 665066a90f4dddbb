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
from sdeid.testing.frontend2 import FrontendCore, SocketFrontend
from tests.test_cli import start, stop

HANDLER = 0x40100000


def _daemon(tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return start("--protocol", "2", "--socket-path", str(tmp_path / "sdei.sock"),
                 "--control-socket", str(tmp_path / "ctl.sock"),
                 "--event", "100:shared:normal", *extra)


async def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def test_operator_trigger_and_error_record_reach_the_v2_front_end(
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
        # The guest has not acknowledged the source's last record: refused,
        # nothing written, nothing triggered.
        fe.core.record_status = spec.STATUS["EAGAIN"]
        with pytest.raises(ExecuteError, match="not acknowledged"):
            await qmp.execute("sdei-inject-error", {"event": 100, "address": 0x44000000})
        assert fe.core.records == [] and not fe.core.kicked
        fe.core.record_status = 0
        await qmp.execute("sdei-inject-error", {"event": 100, "address": 0x44000000})
        assert fe.core.records == [{"event": 100, "kind": 1, "address": 0x44000000}]
        assert await _in_thread(fe.wait_kick, 0)
        rep = await _in_thread(fe.pull, 0)
        assert rep.action == spec.ACTIONS["ENTER"] and rep.x[0] == 100
        sdei = await qmp.execute("query-sdei")
        assert sdei["pes"][0]["running"] == [100]
        stats = await qmp.execute("query-stats")
        assert stats["dispatches"] == 1
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
