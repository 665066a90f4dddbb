"""Lifecycle hooks from QEMU's QMP monitor (via the qemu.qmp library).

QMP events have no ordering against guest execution (ARCHITECTURE.md,
invariant 2), so nothing here changes dispatcher state: the device socket
carries reset, power and state.  The hooks log the VM's lifecycle, record it
for operators, turn on migration events, and end the daemon when the VM
shuts down (`--exit-with-vm`).

The one command sdeid sends for the guest's sake is `inject-ghes-v2-error`
(`inject_ghes`): an error record is written into guest memory when the
command returns, and only then does the daemon raise the event that tells
the guest to read it, so the order the guest sees is the daemon's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from qemu.qmp import QMPClient, Runstate
from qemu.qmp.error import QMPError
from qemu.qmp.qmp_client import ExecuteError

from sdeid import cper

log = logging.getLogger("sdeid.qmp")
HISTORY_KEPT = 16

# Events worth an operator's attention; everything else is discarded.
WATCHED = ("RESET", "STOP", "RESUME", "SHUTDOWN", "MIGRATION", "POWERDOWN",
           "GUEST_PANICKED")


class _DropConnectFailures(logging.Filter):
    """Drops qemu.qmp's "Failed to establish ..." records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to establish")


class QmpHooks:
    def __init__(self, path: str, observe: Callable[[str, dict[str, Any]], None],
                 on_shutdown: Callable[[], None] | None = None,
                 connect_timeout: float = 30.0) -> None:
        self.path = path
        self.observe = observe
        self.on_shutdown = on_shutdown
        self.connect_timeout = connect_timeout
        self.client = QMPClient("sdeid")
        self.task: asyncio.Task[None] | None = None
        self._ghes_event: int | None = None     # the smccc-user device's ghes-event

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="qmp-hooks")

    async def _connect(self) -> None:
        """Connect, retrying until `connect_timeout`: QEMU may not have
        created its monitor yet.  qemu.qmp logs every failed attempt at
        ERROR; while retrying those are expected, so one INFO line says what
        we wait for and only the final failure is reported (by _run)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        quiet = _DropConnectFailures()
        self.client.logger.addFilter(quiet)
        said = False
        try:
            while True:
                try:
                    await self.client.connect(self.path)
                    return
                except (QMPError, OSError) as e:
                    if loop.time() > deadline:
                        raise ConnectionError(f"QMP {self.path}: {e}") from e
                    if not said:
                        log.info("waiting for QEMU's QMP monitor at %s (%s)", self.path, e)
                        said = True
                    await asyncio.sleep(0.1)
        finally:
            self.client.logger.removeFilter(quiet)

    async def _run(self) -> None:
        try:
            await self._connect()
            log.info("QMP connected to %s", self.path)
            try:
                await self.client.execute("migrate-set-capabilities", {
                    "capabilities": [{"capability": "events", "state": True}]})
            except QMPError as e:
                log.warning("cannot enable migration events: %s", e)
            status = await self.client.execute("query-status")
            self.observe("VM_STATUS", {"status": status})
            events = self.client.events  # the default listener: cannot be removed
            async for event in events:
                # qemu.qmp 0.0.6 (pinned) appends every event to this
                # listener's private history and never trims it; a daemon
                # that lives as long as its VM must not grow with it.
                del events._history[:-HISTORY_KEPT]
                name = str(event["event"])
                raw = event.get("data", {})
                data: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
                log.info("VM event %s %s", name, data or "")
                self.observe("VM_" + name, data)
                if name == "SHUTDOWN" and self.on_shutdown is not None:
                    self.on_shutdown()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the hook must never take the daemon down
            log.warning("QMP hooks stopped: %s", e)
            if self.on_shutdown is not None and isinstance(e, (EOFError, ConnectionError)):
                self.on_shutdown()

    async def inject_ghes(self, event: int, record: bytes) -> None:
        """Write `record` into the GHES source that SDEI event `event`
        notifies (the smccc-user device's ghes-event), with QEMU's
        inject-ghes-v2-error.  cper.RecordBusy while the guest has not
        acknowledged the previous record; LookupError when it cannot be
        written at all."""
        if self.client.runstate != Runstate.RUNNING:
            raise LookupError(f"QEMU's QMP monitor {self.path} is not connected")
        try:
            if self._ghes_event is None:
                self._ghes_event = await self._find_ghes_event()
            if event != self._ghes_event:
                raise LookupError(
                    f"QEMU has no error source notified by event {event} "
                    + (f"(its smccc-user device has ghes-event={self._ghes_event})"
                       if self._ghes_event else "(its smccc-user device has no ghes-event)"))
            await self.client.execute("inject-ghes-v2-error", cper.qmp_argument(record))
        except ExecuteError as e:
            # QEMU's words for a source whose last record is unread (ghes.c).
            if "does not acknowledge" in str(e):
                raise cper.RecordBusy(str(e)) from None
            raise LookupError(f"QEMU refused the error record: {e}") from None
        except QMPError as e:
            raise LookupError(f"QEMU's QMP monitor: {e}") from None

    async def _find_ghes_event(self) -> int:
        """The ghes-event property of QEMU's smccc-user device, 0 if none."""
        for parent in ("/machine/peripheral", "/machine/peripheral-anon"):
            children = await self.client.execute("qom-list", {"path": parent})
            assert isinstance(children, list)
            for child in children:
                if child["type"] == "child<smccc-user>":
                    value = await self.client.execute("qom-get", {
                        "path": f"{parent}/{child['name']}", "property": "ghes-event"})
                    assert isinstance(value, int)
                    return value
        return 0

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        try:
            await self.client.disconnect()
        except Exception as e:  # noqa: BLE001 - QEMU closing first is the normal case
            # qemu.qmp re-raises the reader's failure here: EOFError when QEMU
            # closed the monitor as the VM shut down.  Nothing is left to do.
            log.debug("QMP disconnect: %r", e)
