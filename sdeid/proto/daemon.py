"""The sdeid process behind the v2 front-end: the ring plus what operators see.

`Daemon2` offers the interface the control socket (sdeid.control) and the
QMP hooks use of the v1 `sdeid.server.Daemon` — backend, state, events,
listeners, trigger, inject_error — over the threaded v2 ring.  The ring's
threads report through `_observe`, which hops onto the asyncio loop, so
listeners (control-socket clients) only ever run on the loop.  Anything
that reads the dispatcher from the loop holds `lock`, the ring's lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sdeid import cper
from sdeid.errors import ConfigError, StateError
from sdeid.lifecycle import (
    MAX_OBSERVED,
    DaemonInput,
    DaemonState,
    check_record_target,
    daemon_next,
    peer_uid,
    qmp_event,
    record_event_idle,
)
from sdeid.model.types import PlatformConfig
from sdeid.proto import session as s
from sdeid.proto import spec
from sdeid.proto.journal import Journal
from sdeid.proto.ring import Ring

log = logging.getLogger("sdeid.server")
RECORD_TIMEOUT = 5.0      # one answer from QEMU's monitor
ACK_TIMEOUT = 10.0        # the guest acknowledging the previous record of a source
RETRY_FIRST = 0.002       # first wait after a refusal to overwrite, doubled up to RETRY_MAX
RETRY_MAX = 0.1
MAX_QUEUED_RECORDS = 64   # injections waiting for their turn, all sources together
# The address an NMI's fatal record names: no page is at fault, and Linux
# panics on a fatal record before it looks at the address.
NMI_RECORD_ADDRESS = 0


# Writes one CPER record into the GHES source `event` notifies: returns once
# it is in guest memory; cper.RecordBusy to retry later, LookupError to refuse.
RecordWriter = Callable[[int, bytes], Awaitable[None]]


class Daemon2:
    protocol = spec.PROTOCOL_VERSION

    def __init__(self, config: PlatformConfig, *, state_file: Path | None = None,
                 allowed_uids: set[int] | None = None, allow_any_uid: bool = False,
                 nmi_event: int | None = None, nmi_ghes: bool = False) -> None:
        self.backend = s.Backend(config, nmi_event=nmi_event, nmi_ghes=nmi_ghes)
        self.record_writer: RecordWriter | None = None
        self.state = DaemonState.STARTING
        # Bounded: a front-end that reconnects forever must not grow it.
        self.state_history: deque[DaemonState] = deque([self.state], maxlen=64)
        self.allowed_uids = allowed_uids if allowed_uids is not None else {os.getuid()}
        self.allow_any_uid = allow_any_uid
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_OBSERVED)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.socket_path: Path | None = None
        self.journal: Journal | None = None
        if state_file is not None:
            self.journal = Journal(state_file)
            try:
                n = self.journal.load(self.backend)
            except StateError as e:
                raise ConfigError(f"cannot restore {state_file}: {e}") from e
            restored = self.backend.dispatcher
            if restored is not None and restored.config != self.backend.config:
                # The events, slots and version are the guest's ABI: a state
                # written under other ones would be served under the wrong
                # configuration, silently.
                raise ConfigError(
                    f"{state_file} was written with another platform configuration "
                    f"({_describe(restored.config)}) than this one "
                    f"({_describe(self.backend.config)}); start with the same --event, "
                    "--config, --sdei-version and slot options, or remove the file")
            if restored is not None:
                log.info("restored dispatcher state from %s (%d journal records)",
                         state_file, n)
            self.journal.open(self.backend)
        self.ring = Ring(self.backend, journal=self.journal, observe=self._observe,
                         accept=self._accept_peer, on_change=self._connection_changed,
                         nmi_record=self._nmi_record_soon)
        self.lock = self.ring.lock
        self._loop: asyncio.AbstractEventLoop | None = None
        # Error records go to a source one at a time, each after the guest
        # acknowledged the previous one: a lock per event orders them, and
        # `_queued` bounds how many operators may wait in line.
        self._record_locks: dict[int, asyncio.Lock] = {}
        self._queued = 0
        self.record_stats = {"error-records-delivered": 0, "error-records-refused": 0,
                             "error-records-queued": 0,
                             "error-records-signalled-for-others": 0,
                             "error-records-queue-max": MAX_QUEUED_RECORDS}

    @property
    def extra_stats(self) -> dict[str, int]:
        return dict(self.record_stats, **{"error-records-queued": self._queued},
                    **self.backend.nmi_stats)

    @property
    def active(self) -> Any:
        return self.ring.active

    def step(self, event: DaemonInput) -> None:
        """Every change of the daemon's state goes through DAEMON_TRANSITIONS."""
        new = daemon_next(self.state, event)
        if new != self.state:
            # A daemon that never listened (a bad configuration) ends with one
            # line, the error's: its stop is not news.
            level = logging.DEBUG if self.state == DaemonState.STARTING else logging.INFO
            log.log(level, "daemon %s -> %s", self.state.value, new.value)
            self.state = new
            self.state_history.append(new)

    def uid_allowed(self, uid: int | None) -> bool:
        return self.allow_any_uid or (uid is not None and uid in self.allowed_uids)

    def _accept_peer(self, sock: socket.socket) -> bool:
        uid = peer_uid(sock)
        if not self.uid_allowed(uid):
            log.error("refusing peer with uid %s", uid)
            return False
        return True

    def _connection_changed(self, connected: bool) -> None:
        self._call_soon(self.step, DaemonInput.CONNECT if connected else DaemonInput.DISCONNECT)

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    # ------------------------------------------------------------ serving

    async def listen_path(self, path: Path) -> None:
        self._loop = asyncio.get_running_loop()
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise ConfigError(f"{path} exists and is not a socket")
        try:
            self.ring.listen(path)
        except OSError as e:
            raise ConfigError(f"cannot listen on {path}: {e.strerror}") from e
        os.chmod(path, 0o600)
        self.socket_path = path
        self.step(DaemonInput.LISTEN)
        log.info("listening on %s (smccc-user v%d)", path, spec.PROTOCOL_VERSION)

    async def listen_fd(self, fd: int) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise ConfigError(f"--fd {fd}: {e.strerror}") from e
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ConfigError(f"--fd {fd} is not a Unix stream socket")
        self.step(DaemonInput.LISTEN)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            self.ring.serve(sock)
        else:
            self.ring.attach(sock)

    async def close(self) -> None:
        self.step(DaemonInput.STOP)
        if self.state == DaemonState.STOPPED:       # it never started listening
            return
        await asyncio.get_running_loop().run_in_executor(None, self.ring.close)
        if self.socket_path is not None:
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
        self.step(DaemonInput.CLOSED)

    # -------------------------------------------------- operator actions

    def trigger(self, event: int, pe: int | None) -> int:
        return self.ring.trigger(event, pe)

    async def inject_error(self, event: int, address: int, pe: int | None,
                           severity: int = cper.SEV_RECOVERABLE) -> int:
        """Write a memory-error record at `address` into the VM's GHES
        source that `event` notifies, then raise `event`; returns the
        trigger's SDEI status.

        The record goes through QEMU's own `inject-ghes-v2-error` on the QMP
        monitor (`record_writer`), which refuses to overwrite a record the
        guest has not acknowledged (GHESv2 read-ack): the injection then
        waits its turn, up to ACK_TIMEOUT, behind earlier ones for the same
        event.  Refused (LookupError, nothing written) when it cannot be
        delivered: no VM, no QMP, `event` is not the source's, the queue is
        full, or the guest did not acknowledge in time.  Every injection is
        counted as delivered or refused in query-stats."""
        if self._queued >= MAX_QUEUED_RECORDS:
            self.record_stats["error-records-refused"] += 1
            raise LookupError(f"{MAX_QUEUED_RECORDS} error records are already waiting "
                              "for the guest; nothing was written")
        self._queued += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT     # counted from the request, queue included
        try:
            lock = self._record_locks.setdefault(event, asyncio.Lock())
            try:
                await asyncio.wait_for(lock.acquire(), ACK_TIMEOUT)
            except TimeoutError:
                raise LookupError(self._late(event)) from None
            try:
                ret = await self._deliver_record(event, address, pe, severity, deadline)
            finally:
                lock.release()
        except LookupError:
            self.record_stats["error-records-refused"] += 1
            raise
        finally:
            self._queued -= 1
        self.record_stats["error-records-delivered"] += 1
        return ret

    @staticmethod
    def _late(event: int) -> str:
        return (f"the guest did not acknowledge the previous error record of event {event} "
                f"within {ACK_TIMEOUT:.0f} s; nothing was written")

    async def _deliver_record(self, event: int, address: int, pe: int | None,
                              severity: int, deadline: float) -> int:
        loop = asyncio.get_running_loop()
        record = cper.memory_error(address, severity)
        wait = RETRY_FIRST
        signalled = False
        while True:
            writer = self._check_record(event, pe)
            # Idle *before* the write is refused: then the record in the way
            # was never signalled.  (Checked after the refusal, the guest could
            # have taken, acknowledged and completed our previous record in
            # between, and the event would be raised for nothing.)
            idle = not signalled and self._event_idle(event, pe)
            try:
                await asyncio.wait_for(writer(event, record), RECORD_TIMEOUT)
                break
            except cper.RecordBusy:
                if idle:
                    signalled = True
                    self._signal_stale_record(event, pe)
            except TimeoutError:
                raise LookupError("QEMU did not answer inject-ghes-v2-error within "
                                  f"{RECORD_TIMEOUT:.0f} s") from None
            if loop.time() + wait > deadline:
                raise LookupError(self._late(event))
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)
        self._observe("SDEI_ERROR_RECORD", {"event": event, "address": address,
                                            "severity": severity})
        return self.trigger(event, pe)

    def _event_idle(self, event: int, pe: int | None) -> bool:
        """The event has nothing pending or running.  A source busy after
        this holds a record that was never signalled (QEMU's own
        inject-ghes-v2-error writes one without raising the event), which
        the guest would never read: each of our records is raised while we
        hold the event's lock, and the guest acknowledges it before it
        completes the handler."""
        with self.lock:
            d = self.backend.dispatcher
            return d is not None and record_event_idle(d, event, pe)

    def _signal_stale_record(self, event: int, pe: int | None) -> None:
        """Raise the event once for the record already there, so the guest
        reads and acknowledges it; this injection then takes its turn."""
        ret = self.trigger(event, pe)
        self.record_stats["error-records-signalled-for-others"] += 1
        log.warning("the error source of event %d holds a record nobody signalled (written "
                    "with QEMU's inject-ghes-v2-error?): event %d raised for it (status %d)",
                    event, event, ret)

    def _check_record(self, event: int, pe: int | None) -> RecordWriter:
        """The writer for a record notified by `event`, or LookupError."""
        with self.lock:
            d = self.backend.dispatcher
            c = self.ring.active
            if d is None or c is None or c.session.state != s.ConnState.READY:
                raise LookupError("no VM is connected")
            check_record_target(d, event, pe)
        if self.record_writer is None:
            raise LookupError("error records need QEMU's QMP monitor (sdeid --qmp PATH)")
        return self.record_writer

    async def _nmi_record(self, cpu: int, event: int) -> None:
        """An NMI delivered as a fatal error record (--nmi-ghes): a stock
        kernel with GHES panics from the event's handler."""
        data: dict[str, Any] = {"cpu": cpu, "event": event, "record": "fatal"}
        try:
            s.nmi_triggered(data, await self.inject_error(
                event, NMI_RECORD_ADDRESS, None, cper.SEV_FATAL))
        except LookupError as e:
            data.update(status=None, delivered=False, reason=str(e))
        s.nmi_outcome(self.backend, log, data, "fatal error record, event %d triggered")
        self._emit(qmp_event("SDEI_NMI", data))

    # ------------------------------------------------------------ hooks

    def _nmi_record_soon(self, cpu: int, event: int) -> None:
        """From a ring thread: the NMI's record is written on the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._nmi_record(cpu, event), loop)
            fut.add_done_callback(_log_failure)

    def _observe(self, kind: str, data: dict[str, Any]) -> None:
        self._call_soon(self._emit, qmp_event(kind, data))

    def _emit(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        for listener in list(self.listeners):
            listener(ev)


def _log_failure(fut: concurrent.futures.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("NMI record failed", exc_info=fut.exception())


def _describe(config: PlatformConfig) -> str:
    events = ",".join(f"{e.number}:{e.type.name.lower()}:{e.priority.name.lower()}"
                      + (f":intid={e.intid}" if e.intid is not None else "")
                      for e in config.static_events) or "none"
    return (f"SDEI 1.{config.version_minor}, {config.private_slots}/{config.shared_slots} "
            f"bind slots, static events {events}")
