"""The state blob: round trips, compatibility rule, and hostile blobs."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdeid.errors import StateError
from sdeid.model.abi import Fid
from sdeid.model.dispatcher import Dispatcher
from sdeid.model.snapshot import FORMAT_MAJOR, FORMAT_MINOR, MAGIC, to_data
from tests.sim import PRIV_CRIT, PRIV_EV, SHARED_EV, Sim

HEAD = struct.Struct("<8sHHII")


def busy_sim() -> Sim:
    """A dispatcher with something in every part of its state."""
    s = Sim()
    spi = s.ret(0, Fid.INTERRUPT_BIND, 34)
    s.setup(PRIV_EV, [0, 1])
    s.setup(PRIV_CRIT, [0])
    s.setup(SHARED_EV, [2], flags=1, aff=2)
    s.setup(spi, [3])
    s.trigger(PRIV_EV, 0)
    s.dispatch(0)
    s.trigger(PRIV_CRIT, 0)
    s.dispatch(0)                    # two nested frames on PE 0
    s.trigger(PRIV_EV, 1)            # pending, not yet pulled
    s.line(34, 0, 1)
    s.ret(1, Fid.EVENT_UNREGISTER, PRIV_EV)
    return s


def test_round_trip_of_a_busy_dispatcher() -> None:
    d = busy_sim().d
    blob = d.snapshot()
    e = Dispatcher.restore(blob)
    assert e == d
    assert e.snapshot() == blob
    assert len(e.pes[0].frames) == 2


def test_restored_dispatcher_behaves_the_same() -> None:
    s = busy_sim()
    t = Sim(d=Dispatcher.restore(s.d.snapshot()))
    t.vcpus = s.vcpus
    for sim in (s, t):
        sim.call(0, Fid.EVENT_COMPLETE, 0)
        sim.call(0, Fid.EVENT_COMPLETE, 0)
    assert s.d == t.d


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(list(Fid)),
                          st.lists(st.integers(0, 3000), max_size=5)), max_size=30))
def test_round_trip_after_random_calls(calls: list) -> None:
    s = Sim()
    for pe, fid, args in calls:
        s.call(pe, fid, *args)
        if s.kicked:
            s.pump()
    assert Dispatcher.restore(s.d.snapshot()) == s.d


def _blob(state: dict, major: int = FORMAT_MAJOR, minor: int = FORMAT_MINOR) -> bytes:
    body = zlib.compress(json.dumps(state).encode())
    return HEAD.pack(MAGIC, major, minor, len(body), zlib.crc32(body)) + body


def test_compatibility_rule() -> None:
    state = to_data(Sim().d.state)
    assert Dispatcher.restore(_blob(state)) == Sim().d
    with pytest.raises(StateError, match="not readable"):
        Dispatcher.restore(_blob(state, major=FORMAT_MAJOR + 1))
    with pytest.raises(StateError, match="not readable"):
        Dispatcher.restore(_blob(state, minor=FORMAT_MINOR + 1))


@pytest.mark.parametrize("mangle", [
    lambda b: b[:10],
    lambda b: b"X" + b[1:],
    lambda b: b[:-1],
    lambda b: b[:20] + bytes([b[20] ^ 0xFF]) + b[21:],
    lambda b: b + b"\0",
])
def test_corrupt_blobs_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StateError):
        Dispatcher.restore(mangle(busy_sim().d.snapshot()))


@pytest.mark.parametrize("edit", [
    lambda s: s["pes"].pop(),
    lambda s: s["pes"][0]["frames"].append(s["pes"][0]["frames"][0]),
    lambda s: s["shared"].update({"999": s["private"][0][str(PRIV_EV)]}),
    lambda s: s["bound"].update({"100": 40}),
    lambda s: s["topology"].update({"mpidrs": [0, 0]}),
    lambda s: s.pop("config"),
])
def test_well_formed_but_inconsistent_state_is_refused(edit) -> None:  # type: ignore[no-untyped-def]
    state = to_data(busy_sim().d.state)
    edit(state)
    with pytest.raises(StateError):
        Dispatcher.restore(_blob(state))


def test_decompression_bomb_is_refused() -> None:
    body = zlib.compress(b"[" * (80 * 1024 * 1024), 9)
    blob = HEAD.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, len(body), zlib.crc32(body)) + body
    with pytest.raises(StateError):
        Dispatcher.restore(blob)


# ------------------------------------------- well formed but inconsistent
# Each of these blobs was accepted before load-time validation, and a later
# call then failed inside the dispatcher (AssertionError in COMPLETE,
# KeyError in line_level, ...).  Now each is refused with a reason.

def _busy_state() -> dict:  # type: ignore[type-arg]
    return json.loads(json.dumps(to_data(busy_sim().d.state)))


def _edit_frame_without_instance(st: dict) -> None:  # type: ignore[type-arg]
    st["pes"][1]["frames"] = [list(st["pes"][0]["frames"][0])]


def _edit_level_of_unbound_line(st: dict) -> None:  # type: ignore[type-arg]
    st["levels"].append([40, 0, True])


def _edit_pending_unknown(st: dict) -> None:  # type: ignore[type-arg]
    st["pending"].append([12345, -1])


def _edit_client_el(st: dict) -> None:  # type: ignore[type-arg]
    st["pes"][0]["frames"][0][6] = 3


def _edit_frame_priority(st: dict) -> None:  # type: ignore[type-arg]
    st["pes"][0]["frames"][1][1] = 0       # the critical frame claims normal


def _edit_running_without_frame(st: dict) -> None:  # type: ignore[type-arg]
    st["pes"][0]["frames"] = []


def _edit_bound_to_sgi(st: dict) -> None:  # type: ignore[type-arg]
    ev = next(iter(st["bound"]))
    st["bound"][ev] = 5
    st["levels"] = [[5, 0, False]]


def _edit_frames_on_offline_pe(st: dict) -> None:  # type: ignore[type-arg]
    st["pes"][0]["online"] = False


@pytest.mark.parametrize("edit,reason", [
    (_edit_frame_without_instance, "saved context"),
    (_edit_level_of_unbound_line, "line levels"),
    (_edit_pending_unknown, "names no instance"),
    (_edit_client_el, "client EL"),
    (_edit_frame_priority, "priority"),
    (_edit_running_without_frame, "without a matching frame"),
    (_edit_bound_to_sgi, "cannot be"),
    (_edit_frames_on_offline_pe, "is off"),
])
def test_inconsistent_state_is_refused_with_a_reason(edit, reason) -> None:  # type: ignore[no-untyped-def]
    st = _busy_state()
    assert Dispatcher.restore(_blob(st)) == busy_sim().d      # the unedited one loads
    edit(st)
    with pytest.raises(StateError, match=reason):
        Dispatcher.restore(_blob(st))


def test_a_refused_state_blob_leaves_the_v2_back_end_serving() -> None:
    from sdeid.model.abi import Fid as F
    from sdeid.testing.pair2 import Pair
    p = Pair(4)
    p.connect()
    st = _busy_state()
    _edit_frame_without_instance(st)
    p.carry(p.session.blob_read(3, _blob(st), 63))
    assert p.ret(0, F.VERSION) >> 48 == 1          # still serving, old state kept
