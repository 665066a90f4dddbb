"""LEGACY (protocol 1, see sdeid/v1/__init__.py): the asyncio rings around
the pure core: device socket, lifecycle, state file.

One VM per daemon process: the device socket serves one front-end at a time
(a second connection while one is active is refused and closed).  A peer
that breaks the protocol, stalls mid-frame or vanishes is logged and
dropped; the Backend keeps the dispatcher state for the next connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdeid.errors import ConfigError, ConnectionLog, PeerError, StateError
from sdeid.lifecycle import MAX_OBSERVED, DaemonState, check_record_target, peer_uid, qmp_event
from sdeid.model.dispatcher import Dispatcher
from sdeid.model.types import PlatformConfig
from sdeid.v1 import spec
from sdeid.v1.session import Backend, ConnState, Session

log = logging.getLogger("sdeid.server")

# A frame that has started must finish within this many seconds.
STALL_TIMEOUT = 10.0


class DeviceProtocol(asyncio.Protocol):
    """One front-end connection."""

    def __init__(self, daemon: Daemon, n: int) -> None:
        self.daemon = daemon
        self.session = Session(daemon.backend, name=f"fe{n}")
        self.log = ConnectionLog(log, f"fe{n}")
        self.transport: asyncio.Transport | None = None
        self._stall: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if not self.daemon.uid_allowed(uid):
            self.log.error("refusing peer with uid %s (allowed: %s)", uid,
                           self.daemon.allowed_desc())
            transport.abort()
            return
        if self.daemon.active is not None:
            self.log.error("refusing a second front-end: one VM per daemon")
            transport.abort()
            return
        self.daemon.active = self
        self.daemon.set_state(DaemonState.CONNECTED)
        self.log.info("front-end connected (uid %s)", uid)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            out = self.session.receive_data(data)
        except PeerError as e:
            self.log.error("protocol error, dropping front-end: %s", e)
            self.transport.abort()
            return
        if out:
            self.transport.write(out)
        if self.session.state == ConnState.CLOSED:
            self.transport.close()
            return
        self._arm_stall()

    def _arm_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self.session.reader.buffered:
            loop = asyncio.get_running_loop()
            self._stall = loop.call_later(self.daemon.stall_timeout, self._stalled)

    def _stalled(self) -> None:
        self.log.error("front-end stalled inside a frame for %.1f s, dropping it",
                       self.daemon.stall_timeout)
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        try:
            self.session.eof()
        except PeerError as e:
            self.log.error("front-end closed mid-frame: %s", e)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall is not None:
            self._stall.cancel()
        if self.daemon.active is self:
            self.daemon.active = None
            self.daemon.set_state(DaemonState.LISTENING)
            self.log.info("front-end disconnected%s", f": {exc}" if exc else "")

    def send_effects(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class Daemon:
    """The process: backend, device listener, optional state file."""

    def __init__(self, config: PlatformConfig, *, state_file: Path | None = None,
                 allowed_uids: set[int] | None = None, allow_any_uid: bool = False,
                 stall_timeout: float = STALL_TIMEOUT) -> None:
        self.backend = Backend(config=config, observe=self._observe, changed=self._changed)
        self.state = DaemonState.STARTING
        self.state_history: list[DaemonState] = [self.state]
        # Operators' reads of the dispatcher hold this (see sdeid.proto.daemon,
        # where vCPU threads share it); uncontended here.
        self.lock = threading.RLock()
        self.state_file = state_file
        self.allowed_uids = allowed_uids if allowed_uids is not None else {os.getuid()}
        self.allow_any_uid = allow_any_uid
        self.stall_timeout = stall_timeout
        self.active: DeviceProtocol | None = None
        self.server: asyncio.AbstractServer | None = None
        self.socket_path: Path | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_OBSERVED)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._conn_count = 0
        if state_file is not None and state_file.exists():
            try:
                self.backend.dispatcher = Dispatcher.restore(state_file.read_bytes())
            except StateError as e:
                raise ConfigError(f"cannot restore {state_file}: {e}") from e
            log.info("restored dispatcher state from %s", state_file)

    def set_state(self, new: DaemonState) -> None:
        if new != self.state:
            log.info("daemon %s -> %s", self.state.value, new.value)
            self.state = new
            self.state_history.append(new)

    def uid_allowed(self, uid: int | None) -> bool:
        return self.allow_any_uid or (uid is not None and uid in self.allowed_uids)

    def allowed_desc(self) -> str:
        return "any" if self.allow_any_uid else ",".join(map(str, sorted(self.allowed_uids)))

    def _protocol(self) -> DeviceProtocol:
        self._conn_count += 1
        return DeviceProtocol(self, self._conn_count)

    async def listen_path(self, path: Path) -> None:
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise ConfigError(f"{path} exists and is not a socket")
            path.unlink()  # a stale socket from an earlier run
        old = os.umask(0o177)  # the socket file is created 0600
        try:
            self.server = await asyncio.get_running_loop().create_unix_server(
                self._protocol, path=str(path))
        except OSError as e:
            raise ConfigError(f"cannot listen on {path}: {e.strerror}") from e
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.socket_path = path
        self.set_state(DaemonState.LISTENING)
        log.info("listening on %s", path)

    async def listen_fd(self, fd: int) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise ConfigError(f"--fd {fd}: {e.strerror}") from e
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ConfigError(f"--fd {fd} is not a Unix stream socket")
        loop = asyncio.get_running_loop()
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if listening:
            self.server = await loop.create_unix_server(self._protocol, sock=sock)
            self.set_state(DaemonState.LISTENING)
        else:
            self.set_state(DaemonState.LISTENING)
            await loop.connect_accepted_socket(self._protocol, sock=sock)
        log.info("serving inherited fd %d (%s)", fd, "listening" if listening else "connected")

    async def close(self) -> None:
        if self.state == DaemonState.STARTING:  # never served: nothing to report
            self.state = DaemonState.STOPPED
            return
        self.set_state(DaemonState.STOPPING)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.active is not None and self.active.transport is not None:
            self.active.transport.close()
        if self.socket_path is not None:
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
        self._save_state()
        self.set_state(DaemonState.STOPPED)

    # -------------------------------------------------- operator actions

    def trigger(self, event: int, pe: int | None) -> int:
        """Raise an event (operator/platform); returns the SDEI status."""
        d = self.backend.dispatcher
        if d is None:
            raise LookupError("no VM has connected yet")
        ret, effects = d.trigger(event, pe)
        if self.active is not None:
            self.active.send_effects(self.active.session.encode_effects(effects))
        self._observe("SDEI_TRIGGER", {"event": event, "pe": pe, "status": int(ret)})
        self._changed()
        return int(ret)

    def inject_error(self, event: int, kind: int, address: int, pe: int | None) -> int:
        """Record a platform error in the front-end's firmware-first error
        source notified by `event`, then raise `event`.  The record goes
        out first on the same ordered socket, so it is in guest memory
        before any vCPU can enter the handler.  Raises LookupError when
        this cannot be done; returns the trigger's SDEI status."""
        d = self.backend.dispatcher
        if d is None or self.active is None:
            raise LookupError("no VM is connected")
        session = self.active.session
        if not session.features & spec.FEATURES["ERROR_RECORDS"]:
            raise LookupError("the VMM has no firmware-first error sources "
                              "(feature ERROR_RECORDS not negotiated)")
        check_record_target(d, event, pe)
        self.active.send_effects(session.encode_error_record(event, kind, address))
        self._observe("SDEI_ERROR_RECORD", {"event": event, "kind": kind, "address": address})
        return self.trigger(event, pe)

    # ------------------------------------------------------------ hooks

    def _observe(self, kind: str, data: dict[str, Any]) -> None:
        ev = qmp_event(kind, data)
        self.events.append(ev)
        for listener in list(self.listeners):
            listener(ev)

    def _changed(self) -> None:
        if self.state_file is not None:
            self._save_state()

    def _save_state(self) -> None:
        d = self.backend.dispatcher
        if self.state_file is None or d is None:
            return
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(d.snapshot())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)  # atomic: a crash leaves old or new
