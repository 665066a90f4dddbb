"""v2 codec: every frame round-trips, and every way to break one is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sdeid.proto import codec as c
from sdeid.proto import gen, spec

ROOT = Path(__file__).resolve().parents[1]


def test_generated_artifacts_are_current() -> None:
    assert gen.main(["--check", str(ROOT / "protocol" / "v2")]) == 0


def test_vectors_decode_to_their_fields() -> None:
    for v in json.loads((ROOT / "protocol" / "v2" / "vectors.json").read_text()):
        raw = bytes.fromhex(v["hex"])
        if v["channel"] == "vcpu":
            if v["message"] == "VCPU_REQUEST":
                got = c.decode_vcpu_request(raw)
            else:
                req = c.VcpuRequest(v["fields"]["op"], v["fields"]["seq"])
                got = c.decode_vcpu_reply(raw, req)
            assert {k: list(x) if isinstance(x, tuple) else x
                    for k, x in gen._asdict(got).items()} == v["fields"]
            continue
        m = spec.CONTROL_BY_NAME[v["message"]]
        other = "be->fe" if m.direction == "fe->be" else "fe->be"
        r = c.ControlReader(other if v["reply"] else m.direction)
        r.feed(raw, [9] * (0 if v["reply"] else m.fds))
        f = r.next_frame()
        assert f is not None and f.name == m.name and f.reply == v["reply"] and f.tag == 7
        assert {k: list(x) if isinstance(x, tuple) else x
                for k, x in f.fields.items()} == v["fields"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")
def test_c_header_compiles_and_its_sizes_match(tmp_path: Path) -> None:
    src = tmp_path / "t.c"
    structs = gen.c_structs()    # the header has no size checks of its own: all of them here
    checks = "\n".join(
        f'    printf("%s %zu\\n", "{name}", sizeof({name}));' for name, _ in structs)
    src.write_text(
        "#include <stdint.h>\n#include <stdio.h>\n"
        "#define QEMU_PACKED __attribute__((packed))\n"
        "#define QEMU_BUILD_BUG_ON(x) _Static_assert(!(x), #x)\n"
        f'#include "{ROOT}/protocol/v2/smccc-user-protocol.h"\n'
        f"int main(void)\n{{\n{checks}\n    return 0;\n}}\n")
    subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "t"), str(src)],
                   check=True)
    out = subprocess.run([str(tmp_path / "t")], check=True, capture_output=True, text=True)
    sizes = dict(line.split() for line in out.stdout.splitlines())
    assert sizes == {name: str(spec.layout_size(layout)) for name, layout in structs}
    assert {"SmcccUserHeader": "16", "SmcccUserHello": "160",
            "SmcccUserVcpuRequest": str(spec.VCPU_REQUEST_SIZE),
            "SmcccUserVcpuReply": str(spec.VCPU_REPLY_SIZE)}.items() <= sizes.items()
    assert len(structs) == 12   # one per distinct layout (LINE_CLAIM = LINE_RELEASE, Ack)


def _frame(name: str, reply: bool = False, **fields: object) -> bytes:
    return c.encode_control(name, dict(fields), tag=3, reply=reply)


def test_split_frames_are_reassembled_byte_by_byte() -> None:
    raw = _frame("LINE_LEVEL", intid=40, pe=0, level=1, edges=2) + _frame("RESET")
    r = c.ControlReader("fe->be")
    got = []
    for b in raw:
        r.feed(bytes([b]))
        while (f := r.next_frame()) is not None:
            got.append(f.name)
    assert got == ["LINE_LEVEL", "RESET"]
    r.eof()


@pytest.mark.parametrize("mutate,error", [
    (lambda b: b[:4] + (999).to_bytes(4, "little") + b[8:], c.BadSize),
    (lambda b: (77).to_bytes(2, "little") + b[2:], c.BadHeader),
    (lambda b: b[:2] + (0x80).to_bytes(2, "little") + b[4:], c.BadHeader),
    (lambda b: b[:12] + (1).to_bytes(4, "little") + b[16:], c.BadHeader),
    (lambda b: b[:2] + (1).to_bytes(2, "little") + b[4:], c.BadHeader),   # reply to one-way
])
def test_bad_headers_are_refused(mutate, error) -> None:  # type: ignore[no-untyped-def]
    r = c.ControlReader("fe->be")
    r.feed(mutate(_frame("LINE_LEVEL", intid=40, pe=0, level=1, edges=0)))
    with pytest.raises(error):
        r.next_frame()


def test_a_message_of_the_other_direction_is_refused() -> None:
    r = c.ControlReader("fe->be")
    r.feed(_frame("KICK", pe=0))
    with pytest.raises(c.BadHeader, match="not a request"):
        r.next_frame()


def test_descriptors_must_match_the_frames_that_need_them() -> None:
    r = c.ControlReader("fe->be")
    r.feed(_frame("VCPU_CHANNEL", pe=0, mpidr=0))
    with pytest.raises(c.MissingFd):
        r.next_frame()
    r = c.ControlReader("fe->be")
    r.feed(_frame("RESET"), [5])
    with pytest.raises(c.MissingFd, match="takes none"):   # refused before it acts
        r.next_frame()
    assert r.take_fds() == [5]


def test_a_descriptor_goes_to_the_frame_that_takes_it_in_one_chunk() -> None:
    r = c.ControlReader("fe->be")
    r.feed(_frame("RESET") + _frame("VCPU_CHANNEL", pe=0, mpidr=0), [5])
    assert r.next_frame().fds == ()  # type: ignore[union-attr]
    assert r.next_frame().fds == (5,)  # type: ignore[union-attr]
    r.check_drained()


def test_truncation_at_eof_is_an_error() -> None:
    r = c.ControlReader("fe->be")
    r.feed(_frame("RESET")[:10])
    assert r.next_frame() is None
    with pytest.raises(c.ProtocolError, match="inside a frame"):
        r.eof()


def test_vcpu_request_validation() -> None:
    ok = c.VcpuRequest(spec.OPS["CALL"], 1).encode()
    assert c.decode_vcpu_request(ok).seq == 1
    with pytest.raises(c.BadSize):
        c.decode_vcpu_request(ok[:-1])
    with pytest.raises(c.BadValue, match="op"):
        c.decode_vcpu_request(c.VcpuRequest(9, 1).encode())
    with pytest.raises(c.BadValue, match="flags"):
        c.decode_vcpu_request(c.VcpuRequest(1, 1, flags=2).encode())
    with pytest.raises(c.BadValue, match="power"):
        c.decode_vcpu_request(c.VcpuRequest(spec.OPS["POWER"], 1, power_state=7).encode())


@pytest.mark.parametrize("op,action,el,ok", [
    ("CALL", "RETURN", 0, True), ("CALL", "ENTER", 1, False), ("CALL", "RESTORE_IRQ", 1, True),
    ("CALL", "RESTORE_IRQ", 3, False), ("PULL", "ENTER", 1, True), ("PULL", "ENTER", 0, False),
    ("PULL", "RETURN", 0, False), ("POWER", "NONE", 0, True), ("POWER", "RESTORE", 0, False),
])
def test_reply_actions_are_checked_against_the_request(op: str, action: str, el: int,
                                                       ok: bool) -> None:
    req = c.VcpuRequest(spec.OPS[op], 5)
    raw = c.VcpuReply(spec.OPS[op], spec.ACTIONS[action], 5, 0, el).encode()
    if ok:
        assert c.decode_vcpu_reply(raw, req).action == spec.ACTIONS[action]
    else:
        with pytest.raises(c.BadValue):
            c.decode_vcpu_reply(raw, req)


def test_a_reply_for_another_request_is_refused() -> None:
    req = c.VcpuRequest(spec.OPS["CALL"], 5)
    raw = c.VcpuReply(spec.OPS["CALL"], spec.ACTIONS["RETURN"], 4).encode()
    with pytest.raises(c.BadValue, match="does not answer"):
        c.decode_vcpu_reply(raw, req)
