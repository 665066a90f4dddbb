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
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdeid.errors import ConfigError, StateError
from sdeid.model.abi import EventType
from sdeid.model.types import PlatformConfig
from sdeid.proto import session as s
from sdeid.proto import spec
from sdeid.proto.journal import Journal
from sdeid.proto.ring import Ring
from sdeid.server import MAX_OBSERVED, DaemonState, peer_uid

log = logging.getLogger("sdeid.server")
RECORD_TIMEOUT = 5.0


class Daemon2:
    protocol = spec.PROTOCOL_VERSION

    def __init__(self, config: PlatformConfig, *, state_file: Path | None = None,
                 allowed_uids: set[int] | None = None, allow_any_uid: bool = False) -> None:
        self.backend = s.Backend(config)
        self.state = DaemonState.STARTING
        self.state_history: list[DaemonState] = [self.state]
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
            if self.backend.dispatcher is not None:
                log.info("restored dispatcher state from %s (%d journal records)",
                         state_file, n)
            self.journal.open(self.backend)
        self.ring = Ring(self.backend, journal=self.journal, observe=self._observe,
                         accept=self._accept_peer, on_change=self._connection_changed)
        self.lock = self.ring.lock
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> Any:
        return self.ring.active

    def set_state(self, new: DaemonState) -> None:
        if new != self.state:
            log.info("daemon %s -> %s", self.state.value, new.value)
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
        self._call_soon(self.set_state,
                        DaemonState.CONNECTED if connected else DaemonState.LISTENING)

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
        self.set_state(DaemonState.LISTENING)
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
        self.set_state(DaemonState.LISTENING)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            self.ring.serve(sock)
        else:
            self.ring.attach(sock)

    async def close(self) -> None:
        if self.state == DaemonState.STARTING:
            self.state = DaemonState.STOPPED
            return
        self.set_state(DaemonState.STOPPING)
        await asyncio.get_running_loop().run_in_executor(None, self.ring.close)
        if self.socket_path is not None:
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
        self.set_state(DaemonState.STOPPED)

    # -------------------------------------------------- operator actions

    def trigger(self, event: int, pe: int | None) -> int:
        ret = self.ring.trigger(event, pe)
        return ret

    async def inject_error(self, event: int, kind: int, address: int,
                           pe: int | None) -> int:
        """Write an error record into the front-end's error source notified
        by `event`, then raise `event`.  Refused (LookupError, nothing
        written) when the guest has not acknowledged the source's previous
        record, so no record is ever overwritten unseen."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()

        def settle(status: int) -> None:
            if not fut.done():
                fut.set_result(status)

        def done(d: s.RequestDone) -> None:
            loop.call_soon_threadsafe(settle, d.status)

        with self.lock:
            d = self.backend.dispatcher
            c = self.ring.active
            if d is None or c is None or c.session.state != s.ConnState.READY:
                raise LookupError("no VM is connected")
            if not c.session.features & spec.FEATURES["ERROR_RECORDS"]:
                raise LookupError("the VMM has no firmware-first error sources "
                                  "(feature ERROR_RECORDS not agreed)")
            ev = d.events.get(event)
            if ev is None or ev.dynamic:
                raise LookupError(f"event {event} is not a static platform event")
            inst = d.shared.get(event) if ev.type == EventType.SHARED else (
                d.private[pe].get(event) if pe is not None and 0 <= pe < len(d.pes) else None)
            if inst is None or not inst.state.registered:
                raise LookupError(f"event {event} is not registered by the guest")
            self.ring.error_record(event, kind, address, done)
        try:
            status = await asyncio.wait_for(fut, RECORD_TIMEOUT)
        except TimeoutError:
            raise LookupError("the VMM did not answer the error record within "
                              f"{RECORD_TIMEOUT:.0f} s") from None
        if status == spec.STATUS["EAGAIN"]:
            raise LookupError("the guest has not acknowledged the previous error record "
                              "of this source yet; nothing was written (retry later)")
        if status == spec.STATUS["ENOENT"]:
            raise LookupError(f"the VMM has no error source notified by event {event}")
        if status:
            raise LookupError(f"the VMM refused the error record (status {status})")
        self._observe("SDEI_ERROR_RECORD", {"event": event, "kind": kind, "address": address})
        return self.trigger(event, pe)

    # ------------------------------------------------------------ hooks

    def _observe(self, kind: str, data: dict[str, Any]) -> None:
        now = time.time()
        ev = {"event": kind, "data": data,
              "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}
        self._call_soon(self._emit, ev)

    def _emit(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        for listener in list(self.listeners):
            listener(ev)
