"""The dispatcher state as one versioned blob.

Migration (QEMU's vmstate carries it), the crash-recovery state file and the
operator's `query-state` all use this one format:

    offset size
    0      8    magic  b"SDEISTAT"
    8      2    format major (u16 le)
    10     2    format minor (u16 le)
    12     4    length of the compressed body (u32 le)
    16     4    CRC-32 of the compressed body (u32 le)
    20     n    zlib-compressed UTF-8 JSON of `to_data()`

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
from typing import Any

from sdeid.errors import StateError
from sdeid.model.abi import EventType, Priority
from sdeid.model.state import PE, DispatcherState, Frame, Instance
from sdeid.model.states import State
from sdeid.model.types import EventDef, PlatformConfig, Topology

MAGIC = b"SDEISTAT"
FORMAT_MAJOR = 1
FORMAT_MINOR = 1       # 1.1: static events may carry an INTID
_HEAD = struct.Struct("<8sHHII")
# A blob is bounded like any other wire payload; decompression is bounded too
# so a hostile blob cannot balloon.
MAX_BLOB = 4 * 1024 * 1024
MAX_JSON = 64 * 1024 * 1024


def to_data(d: DispatcherState) -> dict[str, Any]:
    """The state as plain JSON-able data (canonical: sorted, no kicks)."""

    def inst(i: Any) -> list[Any]:
        return [i.state.name, i.ep, i.arg, i.flags, i.affinity, i.client_el,
                i.pending, i.running_on]

    return {
        "topology": {"mpidrs": list(d.topology.mpidrs), "nr_spis": d.topology.nr_spis},
        "config": {
            "version_minor": d.config.version_minor,
            "private_slots": d.config.private_slots,
            "shared_slots": d.config.shared_slots,
            # [number, type, priority] and, since format 1.1, the INTID
            # of an interrupt-backed event as a fourth element.
            "static_events": [[e.number, int(e.type), int(e.priority)]
                              + ([] if e.intid is None else [e.intid])
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


def dump(d: DispatcherState) -> bytes:
    body = zlib.compress(json.dumps(to_data(d), sort_keys=True,
                                    separators=(",", ":")).encode())
    if len(body) + _HEAD.size > MAX_BLOB:
        raise StateError(f"state blob would be {len(body)} bytes, over {MAX_BLOB}")
    return _HEAD.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, len(body), zlib.crc32(body)) + body


def load(blob: bytes) -> DispatcherState:
    """A validated state from a blob; StateError says why one is refused."""
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
        state = from_data(json.loads(raw))
        state.validate()
        return state
    except StateError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, zlib.error) as e:
        raise StateError(f"state blob content is invalid: {e}") from e


def from_data(s: dict[str, Any]) -> DispatcherState:
    """The state `to_data` wrote (not validated: load() does that)."""
    topo = Topology(tuple(int(m) for m in s["topology"]["mpidrs"]),
                    int(s["topology"]["nr_spis"]))
    c = s["config"]
    config = PlatformConfig(
        version_minor=int(c["version_minor"]),
        private_slots=int(c["private_slots"]),
        shared_slots=int(c["shared_slots"]),
        static_events=tuple(_static_event(e) for e in c["static_events"]),
    )
    if len(s["pes"]) != topo.nr_pes or len(s["private"]) != topo.nr_pes:
        raise ValueError("per-PE lists do not match the topology")

    def inst(v: list[Any]) -> Instance:
        state, ep, arg, flags, aff, el, pending, running_on = v
        return Instance(State[state], int(ep), int(arg), int(flags), int(aff), int(el),
                        bool(pending), int(running_on))

    def frame(v: list[Any]) -> Frame:
        ev, prio, x, pc, pstate, sctlr, el = v
        if len(x) != 18:
            raise ValueError(f"a frame for event {ev} with {len(x)} registers")
        return Frame(int(ev), Priority(prio), tuple(int(r) for r in x), int(pc),
                     int(pstate), int(sctlr), int(el))

    pes = [PE(mpidr, bool(sp["masked"]), bool(sp["online"]),
              frames=[frame(f) for f in sp["frames"]])
           for mpidr, sp in zip(topo.mpidrs, s["pes"], strict=True)]
    return DispatcherState(
        topo, config, pes,
        [{int(ev): inst(v) for ev, v in sp.items()} for sp in s["private"]],
        {int(ev): inst(v) for ev, v in s["shared"].items()},
        {int(ev): int(intid) for ev, intid in s["bound"].items()},
        {(int(intid), int(pe)): bool(lvl) for intid, pe, lvl in s["levels"]},
        {(int(ev), int(owner)) for ev, owner in s["pending"]})


def _static_event(v: list[Any]) -> EventDef:
    """[number, type, priority] (format 1.0) or [..., intid] (1.1)."""
    if len(v) not in (3, 4):
        raise ValueError(f"a static event with {len(v)} fields")
    intid = int(v[3]) if len(v) == 4 else None
    return EventDef(int(v[0]), EventType(v[1]), Priority(v[2]), intid=intid)
