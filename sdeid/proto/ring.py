"""The I/O ring around the v2 session core: sockets, threads, the journal.

One thread accepts front-ends (one at a time: one VM per daemon), one
thread reads the control channel, and one thread per vCPU channel blocks
in ``recv`` on its SOCK_SEQPACKET socket.  A vCPU's request is handled on
its own thread: decode, the model (under one lock, because the model is
one value), journal, reply.  That is the shortest path Python offers from
a datagram to its answer; scripts/bench-channel measures it next to the
socketpair floor and next to an asyncio reader of the same socket.

Everything the core returns is carried out in order while the lock is
held, so a Commit is in the journal before any byte that follows it
leaves, and replies of different PEs never interleave with a state
change half done.  A peer that breaks the protocol is logged and
disconnected; the Backend (dispatcher, stored replies) stays for the next
connection.  Every buffer is bounded: the control channel is written with
a send timeout (a front-end that stops reading is dropped), blobs are read
up to Backend.max_blob, and nothing is queued in user space.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdeid.errors import ConnectionLog, PeerError
from sdeid.proto import session as s
from sdeid.proto.journal import Journal

log = logging.getLogger("sdeid.proto.ring")

SEND_TIMEOUT = 10.0      # a front-end that does not read for this long is dropped
BLOB_TIMEOUT = 30.0      # SAVE_STATE/LOAD_STATE pipes
MAX_FDS = 4


def recv_with_fds(sock: socket.socket, size: int = 65536,
                  flags: int = 0) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, anc, _flags, _addr = sock.recvmsg(size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize),
                                            flags)
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


class Connection:
    """One front-end: its control socket, its vCPU channels, their threads."""

    def __init__(self, ring: Ring, sock: socket.socket, n: int) -> None:
        self.ring = ring
        self.sock = sock
        self.session = s.Session(ring.backend, name=f"fe{n}")
        self.log = ConnectionLog(log, f"fe{n}")
        self.channels: dict[int, socket.socket] = {}
        self.threads: list[threading.Thread] = []
        self.closed = threading.Event()
        self._send_lock = threading.Lock()
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        _timeval(SEND_TIMEOUT))

    # ------------------------------------------------------------ threads

    def run_control(self) -> None:
        # Bytes are only ever taken off the control socket with the lock held
        # (here, and by a vCPU thread before each request, see run_vcpu), so
        # the model sees control messages and vCPU requests in the order the
        # front-end sent them.  This thread only waits for readability.
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        try:
            while not self.closed.is_set():
                try:
                    poller.poll()
                except OSError as e:  # pragma: no cover - EINTR is retried by Python
                    self.log.info("control channel: %s", e)
                    break
                with self.ring.lock:
                    if self.closed.is_set() or not self._drain_control():
                        break
        finally:
            self.close()

    def _drain_control(self) -> bool:
        """Feed the session everything the control socket holds now; called
        with ring.lock held.  False once the connection is over."""
        while True:
            try:
                data, fds = recv_with_fds(self.sock, flags=socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError as e:
                if not self.closed.is_set():
                    self.log.info("control channel: %s", e)
                return False
            if not data:
                if self.session.reader.buf:
                    self.log.error("front-end closed the connection inside a frame "
                                   "(%d bytes)", len(self.session.reader.buf))
                self._perform(self.session.eof())
                return False
            try:
                self._perform(self.session.receive_control(data, tuple(fds)))
            except PeerError as e:
                self.log.error("protocol error, dropping front-end: %s", e)
                return False
            if self.session.closed:
                return False

    def run_vcpu(self, pe: int, chan: socket.socket) -> None:
        ring = self.ring
        sess = self.session
        try:
            while True:
                try:
                    data = chan.recv(1024)
                except OSError:
                    break
                if not data:
                    # End of file, or an empty datagram (recv cannot tell them
                    # apart).  A QEMU that exits closes its vCPU channels
                    # before the control stream, so this is how most
                    # connections end: not an error, but the connection
                    # cannot go on without the channel.
                    if not self.closed.is_set():
                        self.log.info("PE %d's channel ended: ending the connection", pe)
                        self._shutdown()
                    break
                with ring.lock:
                    if self.closed.is_set():
                        break
                    # What the front-end sent on the control channel before
                    # this request happened before it (a line lowered by the
                    # handler before its COMPLETE): take it in first.
                    if not self._drain_control():
                        self._shutdown()
                        break
                    try:
                        self._perform(sess.receive_vcpu(pe, data))
                    except PeerError as e:
                        self.log.error("protocol error on PE %d's channel, dropping "
                                       "front-end: %s", pe, e)
                        self._shutdown()
                        break
        finally:
            chan.close()

    # ------------------------------------------------------------ outputs

    def _perform(self, outputs: list[s.Output]) -> None:
        """Carry out the core's outputs in order; called with ring.lock held."""
        ring = self.ring
        for o in outputs:
            if isinstance(o, s.Commit):
                ring.commit(o.record)
            elif isinstance(o, s.SendVcpu):
                chan = self.channels.get(o.pe)
                if chan is not None:
                    try:
                        chan.send(o.data)
                    except OSError as e:
                        self.log.info("PE %d's channel: %s", o.pe, e)
            elif isinstance(o, s.SendControl):
                self.send_control(o.data)
            elif isinstance(o, s.AdoptChannel):
                self._adopt(o.pe, o.fd)
            elif isinstance(o, s.CloseFd):
                os.close(o.fd)
            elif isinstance(o, s.WriteBlob):
                _write_blob(o.fd, o.blob)
            elif isinstance(o, s.ReadBlob):
                blob = _read_blob(o.fd, ring.backend.max_blob)
                self._perform(self.session.blob_read(o.tag, blob, o.fd))
            elif isinstance(o, s.BlobStatus):
                _blob_status(o.fd, o.status)
            elif isinstance(o, s.RequestDone):
                ring.request_done(o)
            elif isinstance(o, s.Observed):
                ring.observe(o.kind, o.data)
            elif isinstance(o, s.NmiRecord) and ring.nmi_record is not None:
                ring.nmi_record(o.cpu, o.event)

    def send_control(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as e:
                # Includes the send timeout: the front-end stopped reading.
                self.log.error("dropping front-end: control channel write failed: %s", e)
                self._shutdown()

    def _adopt(self, pe: int, fd: int) -> None:
        chan = socket.socket(fileno=fd)
        if chan.type != socket.SOCK_SEQPACKET or chan.family != socket.AF_UNIX:
            chan.close()
            raise PeerError(f"PE {pe}'s channel is not a Unix SOCK_SEQPACKET socket")
        self.channels[pe] = chan
        t = threading.Thread(target=self.run_vcpu, args=(pe, chan), name=f"sdeid-pe{pe}",
                             daemon=True)
        self.threads.append(t)
        t.start()

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        for chan in list(self.channels.values()):
            with contextlib.suppress(OSError):
                chan.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._shutdown()
        with self.ring.lock:
            if not self.session.closed:
                self._perform(self.session.abort())
        for t in self.threads:
            if t is not threading.current_thread():
                t.join()
        self.sock.close()
        self.ring.disconnected(self)


class Ring:
    """The v2 device server: a listening socket and at most one connection."""

    def __init__(self, backend: s.Backend, *, journal: Journal | None = None,
                 observe: Callable[[str, dict[str, Any]], None] | None = None,
                 accept: Callable[[socket.socket], bool] | None = None,
                 on_change: Callable[[bool], None] | None = None,
                 nmi_record: Callable[[int, int], None] | None = None) -> None:
        self.backend = backend
        self.nmi_record = nmi_record
        self._accept_peer = accept
        self._on_change = on_change
        self.journal = journal
        self.lock = threading.RLock()
        # Held from a change of `active` to its on_change report, so the
        # reports reach the daemon in the order of the changes: an old
        # front-end's disconnect and a new one's connect come from two
        # threads, and reported outside any lock the connect could overtake.
        self._reporting = threading.RLock()
        self.active: Connection | None = None
        self._observe = observe
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._count = 0
        self._waiting: dict[int, Callable[[s.RequestDone], None]] = {}
        self.idle = threading.Event()
        self.idle.set()

    def commit(self, record: tuple[Any, ...]) -> None:
        if self.journal is not None:
            self.journal.append(record, self.backend)

    def observe(self, kind: str, data: dict[str, Any]) -> None:
        if self._observe is not None:
            self._observe(kind, data)

    def request_done(self, done: s.RequestDone) -> None:
        cb = self._waiting.pop(done.tag, None)
        if cb is not None:
            cb(done)

    # ------------------------------------------------------------ serving

    def listen(self, path: Path) -> None:
        if path.exists() or path.is_symlink():
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        self.serve(sock)

    def serve(self, sock: socket.socket) -> None:
        sock.listen(4)
        self._listener = sock
        self._accept_thread = threading.Thread(target=self._accept, name="sdeid-accept",
                                               daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _addr = self._listener.accept()
            except OSError:
                break
            self.attach(conn)

    def attach(self, conn: socket.socket) -> Connection | None:
        """Serve one connected front-end socket (refused if one is active)."""
        if self._accept_peer is not None and not self._accept_peer(conn):
            conn.close()
            return None
        with self._reporting:
            with self.lock:
                if self.active is not None:
                    log.error("refusing a second front-end: one VM per daemon")
                    conn.close()
                    return None
                self._count += 1
                c = self.active = Connection(self, conn, self._count)
                self.idle.clear()
            log.info("front-end connected")
            if self._on_change is not None:
                self._on_change(True)
        t = threading.Thread(target=c.run_control, name=f"sdeid-fe{self._count}", daemon=True)
        t.start()
        return c

    def disconnected(self, c: Connection) -> None:
        with self._reporting:
            with self.lock:
                if self.active is not c:
                    return
                self.active = None
                self.idle.set()
            log.info("front-end disconnected")
            if self._on_change is not None:
                self._on_change(False)

    # ----------------------------------------------------- operator side

    def trigger(self, event: int, pe: int | None = None) -> int:
        with self.lock:
            c = self.active
            if c is not None and c.session.state == s.ConnState.READY:
                ret, out = c.session.trigger(event, pe)
                c._perform(out)
                return ret
            d = self.backend.dispatcher
            if d is None:
                raise LookupError("no VM has connected yet")
            ret_, _fx = d.trigger(event, pe)   # kicks go out at the next connection
            if ret_ == 0:
                self.commit(("trigger", event, -1 if pe is None else pe))
            return int(ret_)

    def close(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join()
        c = self.active
        if c is not None:
            c.close()
        if self.journal is not None:
            with self.lock:
                self.journal.close(self.backend)


def _timeval(seconds: float) -> bytes:
    import struct
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


def _write_blob(fd: int, blob: bytes) -> None:
    """Write a blob to a pipe with a deadline; close it either way."""
    try:
        os.set_blocking(fd, False)
        view = memoryview(blob)
        deadline = time.monotonic() + BLOB_TIMEOUT
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                log.error("SAVE_STATE: the front-end stopped reading the state pipe")
                return
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
            except OSError as e:
                log.error("SAVE_STATE: %s", e)
                return
    finally:
        os.close(fd)


def _blob_status(fd: int, status: int) -> None:
    """LOAD_STATE's status on its socket (a pipe has no way back), then close."""
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
            os.write(fd, struct.pack("<i", status))
    except OSError as e:
        log.info("LOAD_STATE: the front-end did not wait for the status: %s", e)
    finally:
        os.close(fd)


def _read_blob(fd: int, limit: int) -> bytes | None:
    """Read `fd` to EOF with a deadline (it stays open: _blob_status closes
    it); None when over `limit` or late."""
    chunks: list[bytes] = []
    total = 0
    try:
        os.set_blocking(fd, False)
        deadline = time.monotonic() + BLOB_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                log.error("LOAD_STATE: no end of the state pipe within %.0f s", BLOB_TIMEOUT)
                return None
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
    except OSError as e:
        log.error("LOAD_STATE: %s", e)
        return None
