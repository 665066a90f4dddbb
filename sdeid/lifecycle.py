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
from sdeid.model.state import SHARED, Instance

MAX_OBSERVED = 1000  # bounded event history for the control socket


class DaemonState(enum.Enum):
    STARTING = "starting"
    LISTENING = "listening"
    CONNECTED = "connected"
    STOPPING = "stopping"
    STOPPED = "stopped"


class DaemonInput(enum.Enum):
    LISTEN = "the device socket is listening (or attached)"
    CONNECT = "a front-end's handshake began"
    DISCONNECT = "the front-end is gone"
    STOP = "asked to stop (signal, quit, the VM's end)"
    CLOSED = "every socket and thread is closed"


D, I = DaemonState, DaemonInput
# The daemon's life, one entry per (state, input) pair.  None: the input
# cannot happen in that state, so seeing it is a bug of ours.  Inputs that
# race with a stop (a connection ending while the ring closes it, a late
# handshake) leave STOPPING and STOPPED as they are.
DAEMON_TRANSITIONS: dict[tuple[DaemonState, DaemonInput], DaemonState | None] = {
    (D.STARTING, I.LISTEN): D.LISTENING,
    (D.STARTING, I.CONNECT): None,
    (D.STARTING, I.DISCONNECT): None,
    (D.STARTING, I.STOP): D.STOPPED,        # nothing was opened
    (D.STARTING, I.CLOSED): None,
    (D.LISTENING, I.LISTEN): None,
    (D.LISTENING, I.CONNECT): D.CONNECTED,
    (D.LISTENING, I.DISCONNECT): None,
    (D.LISTENING, I.STOP): D.STOPPING,
    (D.LISTENING, I.CLOSED): None,
    (D.CONNECTED, I.LISTEN): None,
    (D.CONNECTED, I.CONNECT): None,         # one VM per daemon: refused before this
    (D.CONNECTED, I.DISCONNECT): D.LISTENING,
    (D.CONNECTED, I.STOP): D.STOPPING,
    (D.CONNECTED, I.CLOSED): None,
    (D.STOPPING, I.LISTEN): None,
    (D.STOPPING, I.CONNECT): D.STOPPING,
    (D.STOPPING, I.DISCONNECT): D.STOPPING,
    (D.STOPPING, I.STOP): D.STOPPING,
    (D.STOPPING, I.CLOSED): D.STOPPED,
    (D.STOPPED, I.LISTEN): None,
    (D.STOPPED, I.CONNECT): D.STOPPED,
    (D.STOPPED, I.DISCONNECT): D.STOPPED,
    (D.STOPPED, I.STOP): D.STOPPED,
    (D.STOPPED, I.CLOSED): None,
}


def daemon_next(state: DaemonState, event: DaemonInput) -> DaemonState:
    """The state after `event`; RuntimeError for a pair that cannot happen."""
    nxt = DAEMON_TRANSITIONS[(state, event)]
    if nxt is None:
        raise RuntimeError(f"daemon: {event.name} in state {state.value} cannot happen")
    return nxt


def qmp_event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """An observed event as the control socket sends it (QMP's event shape)."""
    now = time.time()
    return {"event": kind, "data": data,
            "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}


def _record_instance(d: Dispatcher, event: int, pe: int | None
                     ) -> tuple[Instance | None, tuple[int, int] | None]:
    """The instance of `event` that an error record notifies (on `pe` for a
    private one; None when there is none) and its key in the pending set."""
    ev = d.events[event]
    if ev.type == EventType.SHARED:
        return d.shared.get(event), (event, SHARED)
    if pe is not None and 0 <= pe < len(d.pes):
        return d.private[pe].get(event), (event, pe)
    return None, None


def check_record_target(d: Dispatcher, event: int, pe: int | None) -> None:
    """LookupError unless `event` is a static event the guest registered
    (on `pe` for a private one): the only events an error record may notify."""
    ev = d.events.get(event)
    if ev is None or ev.dynamic:
        raise LookupError(f"event {event} is not a static platform event")
    inst, _key = _record_instance(d, event, pe)
    if inst is None or not inst.state.registered:
        raise LookupError(f"event {event} is not registered by the guest")


def record_event_idle(d: Dispatcher, event: int, pe: int | None) -> bool:
    """Whether the registered instance of `event` that an error record
    notifies (check_record_target) has nothing to do: no trigger waiting and
    no handler running.  A GHES source still holding an unacknowledged
    record then holds one nobody signalled: the guest acknowledges a record
    from the event's handler, before it completes."""
    if event not in d.events:
        return False
    inst, key = _record_instance(d, event, pe)
    return (inst is not None and inst.state.registered and not inst.pending
            and not inst.state.running and key not in d.pending)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of a Unix-socket peer (SO_PEERCRED), or None if unknown."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
