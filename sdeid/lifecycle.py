"""What the daemon process shares with its operators, whatever serves the
device: its lifecycle states, the peer check, the observed-event history
and the error-record target rule.

sdeid.proto.daemon (the v2 daemon) builds on these; the control socket
(sdeid.control) and the QMP hooks read what they produce.
"""

from __future__ import annotations

import enum
import socket
import struct
import time
from typing import Any

from sdeid.model.abi import EventType
from sdeid.model.dispatcher import Dispatcher

MAX_OBSERVED = 1000  # bounded event history for the control socket


class DaemonState(enum.Enum):
    STARTING = "starting"
    LISTENING = "listening"
    CONNECTED = "connected"
    STOPPING = "stopping"
    STOPPED = "stopped"


def qmp_event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """An observed event as the control socket sends it (QMP's event shape)."""
    now = time.time()
    return {"event": kind, "data": data,
            "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}


def check_record_target(d: Dispatcher, event: int, pe: int | None) -> None:
    """LookupError unless `event` is a static event the guest registered
    (on `pe` for a private one): the only events an error record may notify."""
    ev = d.events.get(event)
    if ev is None or ev.dynamic:
        raise LookupError(f"event {event} is not a static platform event")
    inst = d.shared.get(event) if ev.type == EventType.SHARED else (
        d.private[pe].get(event) if pe is not None and 0 <= pe < len(d.pes) else None)
    if inst is None or not inst.state.registered:
        raise LookupError(f"event {event} is not registered by the guest")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of a Unix-socket peer (SO_PEERCRED), or None if unknown."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
