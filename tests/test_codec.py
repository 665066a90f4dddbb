"""The wire codec against protocol/vectors.json, the spec tables and
arbitrary bytes; and the generated C header and vectors against the spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdeid.wire import codec as w
from sdeid.wire import gen, spec

PROTOCOL = Path(__file__).resolve().parents[1] / "protocol"
VECTORS = json.loads((PROTOCOL / "vectors.json").read_text())


def test_generated_files_are_current() -> None:
    """protocol/*.h and vectors.json are what the spec generates today."""
    assert gen.main(["--check", str(PROTOCOL)]) == 0


@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vector_decodes_to_its_meaning_and_back(vec: dict) -> None:
    frame = bytes.fromhex(vec["hex"])
    decoded = w.decode(frame)
    h = vec["header"]
    assert (decoded.header.request, decoded.header.flags, decoded.header.size,
            decoded.header.id) == (h["request"], h["flags"], h["size"], h["id"])
    msg = decoded.message
    want = dict(vec["message"])
    assert type(msg).__name__ == want.pop("type")
    for name, value in want.items():
        got = getattr(msg, name)
        if isinstance(got, bytes):
            got = got.hex()
        elif isinstance(got, tuple):
            got = list(got)
        assert got == value, name
    again = w.encode(msg, id=decoded.header.id, request=decoded.header.request,
                     reply=decoded.header.is_reply, need_reply=decoded.header.need_reply)
    assert again == frame


@pytest.mark.parametrize("vec", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_is_rejected_with_its_error(vec: dict) -> None:
    frame = bytes.fromhex(vec["hex"])
    reader = w.FrameReader()
    reader.feed(frame)
    with pytest.raises(getattr(w, vec["error"])):
        reader.next_frame()
        reader.eof()  # a header-only oversized frame is truncated at EOF


def test_vectors_cover_every_message_both_ways() -> None:
    seen = {(v["header"]["request"], v["reply"]) for v in VECTORS["valid"]}
    for m in spec.MESSAGES:
        assert (m.code, False) in seen, m.name
        if m.direction == "fe->be" and m.reply is not None:
            assert (m.code, True) in seen, m.name


def test_flat_and_construct_paths_agree() -> None:
    """Fixed layouts run on struct; construct must read them identically."""
    for vec in VECTORS["valid"]:
        frame = bytes.fromhex(vec["hex"])
        header = w.decode_header(frame[:16])
        codecs = w._REP_CODECS if header.is_reply else w._REQ_CODECS
        codec = codecs[header.request]
        payload = frame[16:]
        assert codec.decode_construct(payload) == codec.decode(payload)
        assert codec.encode_construct(codec.decode(payload)) == payload


def test_reader_accepts_split_and_coalesced_frames() -> None:
    frames = [bytes.fromhex(v["hex"]) for v in VECTORS["valid"]]
    stream = b"".join(frames)
    for chunk in (1, 7, 16, 100, len(stream)):
        r = w.FrameReader()
        out = []
        for i in range(0, len(stream), chunk):
            r.feed(stream[i:i + chunk])
            while (f := r.next_frame()) is not None:
                out.append(f)
        r.eof()
        assert len(out) == len(frames)


def test_direction_filter() -> None:
    kick = w.encode(w.Kick(0), id=1)
    r = w.FrameReader(w.BACKEND_ACCEPTS)
    r.feed(kick)
    with pytest.raises(w.UnknownRequest):
        r.next_frame()
    with pytest.raises(w.ProtocolError):
        r.next_frame()  # a failed reader stays failed


def test_truncated_at_eof() -> None:
    r = w.FrameReader()
    r.feed(w.encode(w.Reset(), id=1)[:10])
    assert r.next_frame() is None
    with pytest.raises(w.TruncatedFrame):
        r.eof()


def test_encoder_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        w.encode(w.Kick(-1), id=1)
    with pytest.raises(ValueError):
        w.encode(w.Call(0, 1 << 32, (0,) * 5, 0, 0), id=1)
    with pytest.raises(ValueError):
        w.encode(w.Ack(0), id=1)  # Ack needs the request it answers


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_frames_or_protocol_errors(data: bytes) -> None:
    r = w.FrameReader()
    r.feed(data)
    try:
        while r.next_frame() is not None:
            pass
    except w.ProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(VECTORS["valid"]), st.integers(0, 400), st.integers(0, 255))
def test_mutated_vectors_never_escape_as_other_errors(vec: dict, pos: int, byte: int) -> None:
    frame = bytearray(bytes.fromhex(vec["hex"]))
    frame[pos % len(frame)] = byte
    r = w.FrameReader()
    r.feed(bytes(frame))
    try:
        r.next_frame()
    except w.ProtocolError:
        pass
