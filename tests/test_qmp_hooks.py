"""The daemon's QMP client (sdeid.qmp_hooks.QmpHooks) against a small QMP
server on a real socket: it waits quietly for a monitor that does not exist
yet, then follows the VM's lifecycle to its SHUTDOWN."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sdeid.qmp_hooks import QmpHooks

GREETING = {"QMP": {"version": {"qemu": {"major": 10, "minor": 2, "micro": 2},
                                "package": ""}, "capabilities": []}}


async def requests(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """QMP requests as a client writes them: JSON values back to back (qemu.qmp
    ends them with no newline)."""
    decoder, buf = json.JSONDecoder(), ""
    while chunk := await reader.read(4096):
        buf += chunk.decode()
        while buf.strip():
            try:
                value, end = decoder.raw_decode(buf.lstrip())
            except json.JSONDecodeError:
                break                   # the rest has not arrived yet
            buf = buf.lstrip()[end:]
            yield value


async def fake_qemu_monitor(path: Path, ready: asyncio.Event) -> asyncio.Server:
    """Greets, answers every command (query-status with a running VM), and
    sends SHUTDOWN after query-status, as QEMU does when the guest powers off."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(GREETING).encode() + b"\n")
            async for req in requests(reader):
                ret: Any = {"status": "running", "running": True} \
                    if req["execute"] == "query-status" else {}
                reply = {"return": ret, **({"id": req["id"]} if "id" in req else {})}
                writer.write(json.dumps(reply).encode() + b"\n")
                if req["execute"] == "query-status":
                    writer.write(json.dumps({"event": "SHUTDOWN", "data": {"guest": True},
                                             "timestamp": {"seconds": 0, "microseconds": 0}}
                                            ).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass                # the client left first: it may, once it saw SHUTDOWN
        finally:
            writer.close()
    server = await asyncio.start_unix_server(serve, path=str(path))
    ready.set()
    return server


async def test_waits_quietly_for_the_monitor_then_follows_the_vm(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "qmp.sock"
    seen: list[tuple[str, dict[str, Any]]] = []
    shutdown = asyncio.Event()
    hooks = QmpHooks(str(path), lambda name, data: seen.append((name, data)),
                     on_shutdown=shutdown.set, connect_timeout=30)
    caplog.set_level(logging.DEBUG)
    await hooks.start()
    await asyncio.sleep(0.6)              # several attempts on a missing socket
    ready = asyncio.Event()
    server = await fake_qemu_monitor(path, ready)
    try:
        await asyncio.wait_for(shutdown.wait(), 30)
    finally:
        await hooks.close()
        server.close()
        await server.wait_closed()
    assert [name for name, _ in seen] == ["VM_STATUS", "VM_SHUTDOWN"]
    assert seen[1][1] == {"guest": True}
    waits = [r for r in caplog.records if "waiting for QEMU's QMP monitor" in r.getMessage()]
    assert len(waits) == 1 and waits[0].levelno == logging.INFO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_monitor_that_never_comes_is_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutdown = asyncio.Event()
    hooks = QmpHooks(str(tmp_path / "never.sock"), lambda name, data: None,
                     on_shutdown=shutdown.set, connect_timeout=0.5)
    await hooks.start()
    await asyncio.wait_for(shutdown.wait(), 30)     # --exit-with-vm: the VM is gone
    await hooks.close()
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelname for r in problems] == ["WARNING"], [r.getMessage() for r in problems]
    assert "QMP hooks stopped" in problems[0].getMessage()
    assert "never.sock" in problems[0].getMessage()
