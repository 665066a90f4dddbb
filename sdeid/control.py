"""The operators' control socket, speaking QMP's wire format.

Operators script sdeid with the tools they already use on QEMU (qemu.qmp's
QMPClient, `qmp-shell`, socat): a greeting, `qmp_capabilities`, then
`{"execute": ..., "arguments": ..., "id": ...}` commands answered with
`{"return": ...}` or `{"error": {"class", "desc"}}`, and asynchronous
`{"event": ..., "data": ..., "timestamp": ...}` messages.

A client that sends garbage gets a QMP error and stays connected, as with
QEMU; a line over MAX_LINE bytes ends that client.  Nothing a control client
does can touch the device connection except through the commands below.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdeid import __version__
from sdeid.errors import ConfigError
from sdeid.lifecycle import peer_uid
from sdeid.model.abi import EventType, Ret
from sdeid.proto.session import ConnState

if TYPE_CHECKING:
    from sdeid.proto.daemon import Daemon2

log = logging.getLogger("sdeid.control")
MAX_LINE = 64 * 1024
MAX_QUEUED_EVENTS = 1000


class JsonSyntaxError(str):
    """Marks input that was not JSON (answered with a QMP error)."""


class JsonStream:
    """Splits a byte stream into JSON values, as QEMU's JSON streamer does:
    values need no separators, whitespace between them is skipped.  A value
    not complete within `limit` bytes is an error that ends the client;
    text that cannot start a value is reported and skipped up to the next
    newline, so one typo does not cost the connection."""

    def __init__(self, limit: int) -> None:
        self.buf = ""
        self.limit = limit
        self.decoder = json.JSONDecoder()
        self.pending = b""

    def feed(self, data: bytes) -> list[Any]:
        self.pending += data
        try:
            text = self.pending.decode()
            self.pending = b""
        except UnicodeDecodeError as e:
            if e.start >= len(self.pending) - 3:   # a character split across reads
                text = self.pending[:e.start].decode()
                self.pending = self.pending[e.start:]
            else:
                self.pending = b""
                return [JsonSyntaxError("invalid UTF-8")]
        self.buf += text
        out: list[Any] = []
        while True:
            self.buf = self.buf.lstrip()
            if not self.buf:
                break
            try:
                value, end = self.decoder.raw_decode(self.buf)
            except json.JSONDecodeError as e:
                if e.pos >= len(self.buf) and len(self.buf) <= self.limit:
                    break   # incomplete: wait for more
                nl = self.buf.find("\n")
                if nl < 0 and len(self.buf) <= self.limit:
                    break
                if nl < 0:
                    raise ValueError(f"input over {self.limit} bytes without a value") from e
                out.append(JsonSyntaxError(e.msg))
                self.buf = self.buf[nl + 1:]
                continue
            out.append(value)
            self.buf = self.buf[end:]
        if len(self.buf) > self.limit:
            raise ValueError(f"input over {self.limit} bytes without a value")
        return out


class QmpError(Exception):
    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.cls = cls


class ControlServer:
    def __init__(self, daemon: Daemon2, on_quit: Callable[[], None]) -> None:
        self.daemon = daemon
        self.on_quit = on_quit
        self.server: asyncio.AbstractServer | None = None
        self.path: Path | None = None
        self.clients: set[asyncio.Task[None]] = set()
        self.commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any] | Any]] = {
            "query-status": self.query_status,
            "query-sdei": self.query_sdei,
            "query-stats": self.query_stats,
            "query-state-blob": self.query_state_blob,
            "query-events": self.query_events,
            "sdei-trigger": self.sdei_trigger,
            "sdei-inject-error": self.sdei_inject_error,
            "query-commands": self.query_commands,
            "quit": self.quit,
        }

    async def listen(self, path: Path) -> None:
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise ConfigError(f"{path} exists and is not a socket")
            path.unlink()
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._client, path=str(path),
                                                          limit=MAX_LINE)
        except OSError as e:
            raise ConfigError(f"cannot listen on {path}: {e.strerror}") from e
        finally:
            os.umask(old)
        self.path = path
        log.info("control socket on %s", path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.clients):
            t.cancel()
        if self.clients:
            await asyncio.gather(*self.clients, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
        if self.path is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED_EVENTS)

        def listener(ev: dict[str, Any]) -> None:
            if events.full():  # a client that does not read loses old events
                events.get_nowait()
            events.put_nowait(ev)

        pump: asyncio.Task[None] | None = None
        try:
            uid = _peer_uid(writer)
            if not self.daemon.uid_allowed(uid):
                log.error("control: refusing peer with uid %s", uid)
                return
            await self._send(writer, {"QMP": {
                "version": {"qemu": {"major": 0, "minor": 1, "micro": 0},
                            "package": f"sdeid {__version__}"},
                "capabilities": []}})
            negotiated = False
            stream = JsonStream(MAX_LINE)
            while True:
                data = await reader.read(4096)
                if not data:
                    return
                try:
                    items = stream.feed(data)
                except ValueError as e:
                    log.error("control: %s, dropping client", e)
                    return
                for item in items:
                    reply = await self._execute(item, negotiated)
                    if reply.pop("_negotiated", False):
                        negotiated = True
                        self.daemon.listeners.append(listener)
                        pump = asyncio.create_task(self._pump(events, writer))
                    await self._send(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            # Synchronous clean-up first: a cancellation arriving at one of
            # the awaits below must not leave the transport open.
            if listener in self.daemon.listeners:
                self.daemon.listeners.remove(listener)
            writer.close()
            self.clients.discard(task)
            if pump is not None:
                pump.cancel()
            try:
                if pump is not None:
                    await asyncio.gather(pump, return_exceptions=True)
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass

    async def _pump(self, events: asyncio.Queue[dict[str, Any]],
                    writer: asyncio.StreamWriter) -> None:
        while True:
            ev = await events.get()
            await self._send(writer, ev)

    async def _send(self, writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj).encode() + b"\r\n")
        await writer.drain()

    async def _execute(self, item: Any, negotiated: bool) -> dict[str, Any]:
        req_id: Any = None
        try:
            if isinstance(item, JsonSyntaxError):
                raise QmpError(f"JSON parse error: {item}")
            req = item
            if not isinstance(req, dict):
                raise QmpError("QMP input must be a JSON object")
            req_id = req.get("id")
            cmd = req.get("execute")
            if not isinstance(cmd, str):
                raise QmpError("QMP input lacks member 'execute'")
            args = req.get("arguments", {})
            if not isinstance(args, dict):
                raise QmpError("QMP input member 'arguments' must be an object")
            if cmd == "qmp_capabilities":
                if negotiated:
                    raise QmpError("Capabilities negotiation is already complete",
                                   "CommandNotFound")
                result: Any = {}
                reply = {"return": result, "_negotiated": True}
            else:
                if not negotiated:
                    raise QmpError(f"Expecting capabilities negotiation with "
                                   f"'qmp_capabilities', got {cmd!r}", "CommandNotFound")
                fn = self.commands.get(cmd)
                if fn is None:
                    raise QmpError(f"The command {cmd} has not been found", "CommandNotFound")
                with self.daemon.lock:   # the v2 ring's vCPU threads share the model
                    result = fn(args)
                if asyncio.iscoroutine(result):
                    result = await result
                reply = {"return": result}
        except QmpError as e:
            reply = {"error": {"class": e.cls, "desc": str(e)}}
        if req_id is not None:
            reply["id"] = req_id
        return reply

    # ------------------------------------------------------------ commands

    def _dispatcher(self) -> Any:
        d = self.daemon.backend.dispatcher
        if d is None:
            raise QmpError("no VM has connected yet (the dispatcher has no topology)")
        return d

    def query_commands(self, args: dict[str, Any]) -> list[dict[str, str]]:
        return [{"name": n} for n in sorted(self.commands)] + [{"name": "qmp_capabilities"}]

    def query_status(self, args: dict[str, Any]) -> dict[str, Any]:
        d = self.daemon.backend.dispatcher
        cfg = self.daemon.backend.config
        return {
            "state": self.daemon.state.value,
            "connected": self.daemon.active is not None,
            # The handshake is over: the front-end handed over every vCPU's
            # channel (QEMU's device is then ready for migration's LOAD_STATE).
            "ready": self.daemon.active is not None
                     and self.daemon.active.session.state == ConnState.READY,
            "sdei-version": f"1.{cfg.version_minor}",
            "pes": None if d is None else d.topology.nr_pes,
        }

    def query_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        d = self.daemon.backend.dispatcher
        stats = {} if d is None else dict(d.stats)
        stats.update(getattr(self.daemon, "extra_stats", {}))
        return stats

    def query_events(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The recent observed events (bounded history)."""
        return list(self.daemon.events)

    def query_sdei(self, args: dict[str, Any]) -> dict[str, Any]:
        d = self._dispatcher()
        pes = [{
            "index": i, "mpidr": p.mpidr, "masked": p.masked, "online": p.online,
            "running": [f.event for f in p.frames],
        } for i, p in enumerate(d.pes)]
        registered = []
        for number, inst in sorted(d.shared.items()):
            if inst.state.name != "reg":
                registered.append(_inst_info(number, "shared", None, inst))
        for pe, table in enumerate(d.private):
            for number, inst in sorted(table.items()):
                if inst.state.name != "reg":
                    registered.append(_inst_info(number, "private", pe, inst))
        events = [{"number": ev.number,
                   "type": "shared" if ev.type == EventType.SHARED else "private",
                   "priority": ev.priority.name.lower(),
                   "dynamic": ev.dynamic,
                   **({"bound-intid": d.bound[ev.number]} if ev.number in d.bound else {}),
                   **({"intid": ev.intid} if ev.intid is not None else {})}
                  for ev in sorted(d.events.values(), key=lambda e: e.number)
                  if not ev.dynamic or ev.number in d.bound]
        return {"pes": pes, "events": events, "registered": registered}

    def query_state_blob(self, args: dict[str, Any]) -> dict[str, str]:
        return {"blob": base64.b64encode(self._dispatcher().snapshot()).decode()}

    def sdei_trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        event = args.get("event")
        pe = args.get("pe")
        if not isinstance(event, int) or isinstance(event, bool):
            raise QmpError("Parameter 'event' is missing or not an integer", "GenericError")
        if pe is not None and (not isinstance(pe, int) or isinstance(pe, bool)):
            raise QmpError("Parameter 'pe' must be an integer", "GenericError")
        try:
            ret = self.daemon.trigger(event, pe)
        except LookupError as e:
            raise QmpError(str(e)) from e
        if ret != Ret.SUCCESS:
            raise QmpError(f"event {event} cannot be triggered: {Ret(ret).name}")
        return {}

    async def sdei_inject_error(self, args: dict[str, Any]) -> dict[str, Any]:
        """Write a memory-error record into the VM's firmware-first error
        source (ACPI GHES) notified by `event`, then fire the event:
        {"event": N, "address": GPA, "pe"?: N}."""
        event, address, pe = args.get("event"), args.get("address"), args.get("pe")
        for name, v in (("event", event), ("address", address)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise QmpError(f"Parameter '{name}' is missing or not a non-negative integer")
        if pe is not None and (not isinstance(pe, int) or isinstance(pe, bool)):
            raise QmpError("Parameter 'pe' must be an integer")
        assert isinstance(event, int) and isinstance(address, int)
        if address >= 1 << 64 or event >= 1 << 31:
            raise QmpError("Parameter out of range")
        try:
            # QEMU answers whether it wrote the record (GHESv2 read-ack).
            ret = await self.daemon.inject_error(event, address, pe)
        except LookupError as e:
            raise QmpError(str(e)) from e
        if ret != Ret.SUCCESS:
            raise QmpError(f"event {event} cannot be triggered: {Ret(ret).name}")
        return {}

    def quit(self, args: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self.on_quit)
        return {}


def _inst_info(number: int, kind: str, pe: int | None, inst: Any) -> dict[str, Any]:
    info = {"event": number, "type": kind, "state": inst.state.value,
            "entry": inst.ep, "argument": inst.arg, "flags": inst.flags,
            "affinity": inst.affinity, "pending": inst.pending}
    if pe is not None:
        info["pe"] = pe
    return info


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    return None if sock is None else peer_uid(sock)
