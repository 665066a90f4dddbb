"""The dispatcher state as one versioned blob.

Migration (QEMU's vmstate carries it), the crash-recovery state file and the
operator's `query-state` all use this one format:

    offset size
    0      8    magic  b"SDEISTAT"
    8      2    format major (u16 le)
    10     2    format minor (u16 le)
    12     4    length of the compressed body (u32 le)
    16     4    CRC-32 of the compressed body (u32 le)
    20     n    zlib-compressed UTF-8 JSON of `to_state()`

Compatibility rule: a daemon restores any blob with its own major and a minor
no greater than its own.  A minor adds optional fields only (a reader fills
in their defaults); anything else bumps the major.  A blob from a newer minor
is refused, because restoring it would silently drop state the writer relied
on.  Outstanding kicks are not state: after a restore the session resyncs.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import TYPE_CHECKING, Any

from sdeid.errors import StateError
from sdeid.model.abi import EventType, Priority
from sdeid.model.states import State
from sdeid.model.types import EventDef, PlatformConfig, Topology

if TYPE_CHECKING:
    from sdeid.model.dispatcher import Dispatcher

MAGIC = b"SDEISTAT"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
_HEAD = struct.Struct("<8sHHII")
# A blob is bounded like any other wire payload; decompression is bounded too
# so a hostile blob cannot balloon.
MAX_BLOB = 4 * 1024 * 1024
MAX_JSON = 64 * 1024 * 1024


def to_state(d: Dispatcher) -> dict[str, Any]:
    """The dispatcher as plain JSON-able data (canonical: sorted, no kicks)."""

    def inst(i: Any) -> list[Any]:
        return [i.state.name, i.ep, i.arg, i.flags, i.affinity, i.client_el,
                i.pending, i.running_on]

    return {
        "topology": {"mpidrs": list(d.topology.mpidrs), "nr_spis": d.topology.nr_spis},
        "config": {
            "version_minor": d.config.version_minor,
            "private_slots": d.config.private_slots,
            "shared_slots": d.config.shared_slots,
            "static_events": [[e.number, int(e.type), int(e.priority)]
                              for e in d.config.static_events],
        },
        "pes": [
            {"masked": p.masked, "online": p.online,
             "frames": [[f.event, int(f.priority), list(f.x), f.pc, f.pstate, f.sctlr,
                         f.client_el] for f in p.frames]}
            for p in d.pes
        ],
        "private": [
            {str(ev): inst(i) for ev, i in sorted(t.items()) if _live(i)} for t in d.private
        ],
        "shared": {str(ev): inst(i) for ev, i in sorted(d.shared.items()) if _live(i)},
        "bound": {str(ev): intid for ev, intid in sorted(d.bound.items())},
        "levels": [[intid, pe, lvl] for (intid, pe), lvl in sorted(d.levels.items())],
        "pending": sorted([ev, owner] for ev, owner in d.pending),
    }


def _live(i: Any) -> bool:
    """Instances in their initial state carry no information."""
    return bool(i.state != State.reg or i.pending or i.ep or i.arg)


def dump(d: Dispatcher) -> bytes:
    body = zlib.compress(json.dumps(to_state(d), sort_keys=True,
                                    separators=(",", ":")).encode())
    if len(body) + _HEAD.size > MAX_BLOB:
        raise StateError(f"state blob would be {len(body)} bytes, over {MAX_BLOB}")
    return _HEAD.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, len(body), zlib.crc32(body)) + body


def load(blob: bytes) -> Dispatcher:
    """Restore a dispatcher from a blob; StateError says why one is refused."""
    if len(blob) < _HEAD.size:
        raise StateError("state blob is shorter than its header")
    if len(blob) > MAX_BLOB:
        raise StateError(f"state blob of {len(blob)} bytes is over {MAX_BLOB}")
    magic, major, minor, length, crc = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise StateError("not an sdeid state blob (bad magic)")
    if major != FORMAT_MAJOR or minor > FORMAT_MINOR:
        raise StateError(f"state format {major}.{minor} is not readable by format "
                         f"{FORMAT_MAJOR}.{FORMAT_MINOR}")
    body = blob[_HEAD.size:]
    if len(body) != length or zlib.crc32(body) != crc:
        raise StateError("state blob is truncated or corrupt (length/CRC mismatch)")
    try:
        z = zlib.decompressobj()
        raw = z.decompress(body, MAX_JSON)
        if z.unconsumed_tail:
            raise StateError("state blob expands beyond the size limit")
        return from_state(json.loads(raw))
    except StateError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, zlib.error) as e:
        raise StateError(f"state blob content is invalid: {e}") from e


def from_state(s: dict[str, Any]) -> Dispatcher:
    from sdeid.model.dispatcher import Dispatcher, Frame, Instance

    topo = Topology(tuple(int(m) for m in s["topology"]["mpidrs"]),
                    int(s["topology"]["nr_spis"]))
    c = s["config"]
    config = PlatformConfig(
        version_minor=int(c["version_minor"]),
        private_slots=int(c["private_slots"]),
        shared_slots=int(c["shared_slots"]),
        static_events=tuple(EventDef(int(n), EventType(t), Priority(p))
                            for n, t, p in c["static_events"]),
    )
    d = Dispatcher(topo, config)
    if len(s["pes"]) != topo.nr_pes or len(s["private"]) != topo.nr_pes:
        raise ValueError("per-PE lists do not match the topology")

    def inst(v: list[Any]) -> Instance:
        state, ep, arg, flags, aff, el, pending, running_on = v
        return Instance(State[state], int(ep), int(arg), int(flags), int(aff), int(el),
                        bool(pending), int(running_on))

    for p, sp in zip(d.pes, s["pes"], strict=True):
        p.masked, p.online = bool(sp["masked"]), bool(sp["online"])
        for ev, prio, x, pc, pstate, sctlr, el in sp["frames"]:
            if int(ev) not in d.events or len(x) != 18:
                raise ValueError(f"bad frame for event {ev}")
            p.frames.append(Frame(int(ev), Priority(prio), tuple(int(r) for r in x),
                                  int(pc), int(pstate), int(sctlr), int(el)))
        if len(p.frames) > 2:
            raise ValueError("more than two nested handlers on a PE")
    for table, sp in zip(d.private, s["private"], strict=True):
        for ev, v in sp.items():
            if d.events.get(int(ev)) is None or d.events[int(ev)].type != EventType.PRIVATE:
                raise ValueError(f"private instance of unknown event {ev}")
            table[int(ev)] = inst(v)
    for ev, v in s["shared"].items():
        if d.events.get(int(ev)) is None or d.events[int(ev)].type != EventType.SHARED:
            raise ValueError(f"shared instance of unknown event {ev}")
        d.shared[int(ev)] = inst(v)
    for ev, intid in s["bound"].items():
        if int(ev) not in d.events or not d.events[int(ev)].dynamic:
            raise ValueError(f"binding of non-dynamic event {ev}")
        d.bound[int(ev)] = int(intid)
        d.by_intid[int(intid)] = int(ev)
    for intid, pe, lvl in s["levels"]:
        d.levels[(int(intid), int(pe))] = bool(lvl)
    for ev, owner in s["pending"]:
        d.pending.add((int(ev), int(owner)))
    validate(d)
    return d


def validate(d: Dispatcher) -> None:
    """Refuse (ValueError) a state that no run of the dispatcher reaches,
    so that a well-formed but inconsistent blob is turned away at load and
    never makes a later call fail.  Checked: handler frames against running
    instances, nesting and priorities, client ELs, bindings against the
    topology, line levels against bindings, and pending triggers against
    their instances."""
    from sdeid.model.abi import MAX_NESTING
    from sdeid.model.dispatcher import SHARED

    def where(ev: int, pe: int) -> Any:
        t = d.events[ev].type
        return d.shared.get(ev) if t == EventType.SHARED else d.private[pe].get(ev)

    running: dict[int, int] = {}    # id(instance) -> PE whose frame holds it
    for pe, p in enumerate(d.pes):
        if len(p.frames) > MAX_NESTING:
            raise ValueError(f"PE {pe} has {len(p.frames)} nested handlers")
        if p.frames and not p.online:
            raise ValueError(f"PE {pe} is off but runs a handler")
        for i, f in enumerate(p.frames):
            edef = d.events.get(f.event)
            if edef is None or edef.priority != f.priority:
                raise ValueError(f"PE {pe}'s frame for event {f.event} does not match the "
                                 "event's priority")
            if f.client_el not in (1, 2):
                raise ValueError(f"PE {pe}'s frame has client EL {f.client_el}")
            if i == 1 and not (p.frames[0].priority == Priority.NORMAL
                               and f.priority == Priority.CRITICAL):
                raise ValueError(f"PE {pe} nests a {f.priority.name.lower()} handler in a "
                                 f"{p.frames[0].priority.name.lower()} one")
            inst = where(f.event, pe)
            if inst is None or not inst.state.running or inst.running_on != pe:
                raise ValueError(f"PE {pe} holds a saved context for event {f.event}, "
                                 "which is not running there")
            if id(inst) in running:
                raise ValueError(f"event {f.event} runs twice")
            running[id(inst)] = pe
    instances = [(ev, pe, i) for pe, t in enumerate(d.private) for ev, i in t.items()]
    instances += [(ev, SHARED, i) for ev, i in d.shared.items()]
    for ev, _owner, inst in instances:
        if inst.state.running != (id(inst) in running):
            raise ValueError(f"event {ev} is {inst.state.value} without a matching frame")
        if not inst.state.running and inst.running_on != -1:
            raise ValueError(f"event {ev} names a PE running it but is not running")
        if inst.client_el not in (1, 2):
            raise ValueError(f"event {ev} has client EL {inst.client_el}")
        if d.events[ev].dynamic and inst.state.registered and ev not in d.bound:
            raise ValueError(f"event {ev} is registered but not bound to an interrupt")
        if inst.pending and not inst.state.registered:
            raise ValueError(f"event {ev} has a trigger pending but is not registered")
    seen: set[int] = set()
    for ev, intid in d.bound.items():
        e = d.events[ev]
        ok = (d.topology.is_ppi(intid) if e.type == EventType.PRIVATE
              else d.topology.is_spi(intid))
        if not ok or intid in seen:
            raise ValueError(f"event {ev} is bound to INTID {intid}, which it cannot be")
        seen.add(intid)
    want = {(intid, pe) for intid in d.bound.values() for pe in d._line_pes(intid)}
    if set(d.levels) != want:
        extra = sorted(set(d.levels) ^ want)[:3]
        raise ValueError(f"line levels do not match the bindings (e.g. {extra})")
    for ev, owner in d.pending:
        pdef = d.events.get(ev)
        if pdef is None or (owner == SHARED) != (pdef.type == EventType.SHARED) or not (
                owner == SHARED or 0 <= owner < len(d.pes)):
            raise ValueError(f"pending trigger ({ev}, {owner}) names no instance")
        if ev in d.bound:
            continue   # a bound line is pending while high, registered or not
        inst = where(ev, owner)
        if inst is None or not inst.pending:
            raise ValueError(f"pending trigger ({ev}, {owner}) has no triggered instance")
