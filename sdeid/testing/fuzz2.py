"""Structure-aware malformed input for the v2 back-end, generated from the spec.

`malformed(rng)` returns one hostile input, a `Case`: a short script of
steps (control bytes with descriptors, a vCPU datagram, end of file) that
the protocol does not allow at some step.  Every case breaks exactly one
rule, named in `rule`, so a failure says which rule the back-end missed.
`run_case` plays a case against a fresh Session on a shared Backend and
reports what happened; tests/test_proto_fuzz.py and scripts/fuzz-daemon
check that each case ends in a protocol error (or a refused handshake)
with the Backend unchanged.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any

from sdeid.proto import codec as c
from sdeid.proto import session as s
from sdeid.proto import spec
from sdeid.testing.frontend2 import FrontendCore

FD = 900


@dataclass
class Case:
    rule: str
    steps: list[tuple[str, Any]] = field(default_factory=list)   # ("ctl", (bytes, fds)) ...


def _hello(fe: FrontendCore) -> tuple[str, Any]:
    return ("ctl", (fe.hello(), ()))


def _channels(fe: FrontendCore) -> list[tuple[str, Any]]:
    return [("ctl", (fe.channel(pe), (FD + pe,))) for pe in range(len(fe.mpidrs))]


def _random_fields(rng: random.Random, layout: spec.Layout) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, t in layout:
        if isinstance(t, tuple):
            out[name] = tuple(rng.getrandbits(64) for _ in range(t[1]))
        else:
            bits = spec.SCALAR_SIZES[t] * 8
            v = rng.getrandbits(bits)
            out[name] = v - (1 << bits) if t.startswith("i") and v >> (bits - 1) else v
    out.pop("reserved", None)
    return out


def _header(code: int, flags: int, size: int, tag: int = 1, reserved: int = 0) -> bytes:
    return c.HEADER.pack(code, flags, size, tag, reserved)


def malformed(rng: random.Random, fe: FrontendCore) -> Case:
    """One input that breaks one rule of the protocol."""
    kind = rng.randrange(16)
    ready = [_hello(fe), *_channels(fe)]
    fe_msgs = [m for m in spec.CONTROL if m.direction == "fe->be"]
    be_msgs = [m for m in spec.CONTROL if m.direction == "be->fe"]
    if kind == 0:       # a payload size other than the type's
        m = rng.choice(fe_msgs)
        want = c.expected_size(m.code, False) or 0
        size = rng.choice([x for x in (0, 1, want - 1, want + 1, want * 2, 1 << 31)
                           if x != want and x >= 0])
        return Case("size", ready + [("ctl", (_header(m.code, 0, size) + bytes(
            min(size, 64)), ()))])
    if kind == 1:       # a type nobody defined
        code = rng.choice([t for t in range(0, 0x10000) if t not in spec.CONTROL_BY_CODE][
            :2000])
        return Case("unknown type", ready + [("ctl", (_header(code, 0, 8) + bytes(8), ()))])
    if kind == 2:       # unknown flag bits
        m = rng.choice(fe_msgs)
        flags = rng.randrange(2, 0x10000) & ~spec.FLAG_REPLY or 2
        return Case("flags", ready + [("ctl", (_header(m.code, flags, c.REQUEST_CODECS[
            m.code].size) + bytes(c.REQUEST_CODECS[m.code].size), ()))])
    if kind == 3:       # reserved header field
        m = rng.choice(fe_msgs)
        n = c.REQUEST_CODECS[m.code].size
        return Case("reserved", ready + [("ctl", (_header(m.code, 0, n,
                                                          reserved=rng.randrange(1, 1 << 32))
                                                  + bytes(n), ()))])
    if kind == 4:       # a message of the other direction
        m = rng.choice(be_msgs)
        return Case("direction", ready + [("ctl", (c.encode_control(
            m.name, _random_fields(rng, m.request)), ()))])
    if kind == 5:       # a reply nobody asked for
        m = rng.choice([m for m in be_msgs if m.reply is not None])
        assert m.reply is not None
        return Case("unsolicited reply", ready + [("ctl", (c.encode_control(
            m.name, _random_fields(rng, m.reply), tag=rng.randrange(1 << 32), reply=True),
            ()))])
    if kind == 6:       # anything before HELLO
        m = rng.choice([m for m in fe_msgs if m.name != "HELLO"])
        fds = tuple(FD + 50 + i for i in range(m.fds))
        return Case("before hello", [("ctl", (c.encode_control(
            m.name, _random_fields(rng, m.request)), fds))])
    if kind == 7:       # a second HELLO
        return Case("second hello", ready + [_hello(fe)])
    if kind == 8:       # a descriptor missing, or one too many
        if rng.random() < 0.5:
            return Case("missing fd", [_hello(fe), ("ctl", (fe.channel(0), ()))])
        return Case("extra fd", ready + [("ctl", (c.encode_control("RESET"), (FD + 77,)))])
    if kind == 9:       # truncated frame, then end of file
        raw = rng.choice([fe.hello(), fe.channel(0), c.encode_control("RESET")])
        return Case("truncation", [("ctl", (raw[:rng.randrange(1, len(raw))], ())),
                                   ("eof", None)])
    if kind == 10:      # a channel for a PE that does not exist, or twice
        pe = rng.choice([len(fe.mpidrs), len(fe.mpidrs) + rng.randrange(1, 1 << 31), 0])
        chan = c.encode_control("VCPU_CHANNEL", {"pe": pe, "mpidr": 0})
        steps = [_hello(fe), *_channels(fe)[:1], ("ctl", (chan, (FD + 60,)))]
        return Case("channel pe", steps)
    if kind == 11:      # a LINE_LEVEL out of range
        bad = rng.choice(["level", "pe"])
        f = {"intid": rng.randrange(1024), "pe": 0, "level": 1, "edges": 0}
        if bad == "level":
            f["level"] = rng.randrange(2, 1 << 32)
        else:
            f["pe"] = rng.randrange(len(fe.mpidrs), 1 << 32)
        return Case(f"line {bad}", ready + [("ctl", (c.encode_control("LINE_LEVEL", f), ()))])
    # vCPU datagrams
    pe = 0
    if kind == 12:      # wrong datagram size
        n = rng.choice([0, 1, spec.VCPU_REQUEST_SIZE - 1, spec.VCPU_REQUEST_SIZE + 1, 1024])
        return Case("vcpu size", ready + [("vcpu", (pe, bytes(rng.getrandbits(8)
                                                              for _ in range(n))))])
    if kind == 13:      # unknown op
        op = rng.choice([0, 4, 5, rng.randrange(6, 1 << 32)])
        return Case("vcpu op", ready + [("vcpu", (pe, c.VcpuRequest(op, 1).encode()))])
    if kind == 14:      # unknown request flags
        fl = rng.randrange(2, 1 << 32) & ~spec.REQ_F_SMC or 2
        return Case("vcpu flags", ready + [("vcpu", (pe, c.VcpuRequest(
            spec.OPS["CALL"], 1, flags=fl).encode()))])
    # kind 15: POWER with a bad state or target
    if rng.random() < 0.5:
        req = c.VcpuRequest(spec.OPS["POWER"], 1, power_state=rng.randrange(3, 1 << 32))
    else:
        req = c.VcpuRequest(spec.OPS["POWER"], 1, target=rng.randrange(len(fe.mpidrs),
                                                                         1 << 32))
    return Case("vcpu power", ready + [("vcpu", (pe, req.encode()))])


@dataclass
class Outcome:
    protocol_error: bool = False
    refused_hello: bool = False
    other: BaseException | None = None
    leaked_fds: list[int] = field(default_factory=list)


def run_case(backend: s.Backend, fe: FrontendCore, case: Case) -> Outcome:
    """Play `case` on a fresh session; closes what the session hands back."""
    sess = s.Session(backend, name="fuzz")
    given: set[int] = set()
    handed: set[int] = set()
    res = Outcome()

    def take(outs: list[s.Output]) -> None:
        for o in outs:
            if isinstance(o, s.CloseFd):
                handed.add(o.fd)
            elif isinstance(o, (s.AdoptChannel, s.WriteBlob, s.ReadBlob)):
                handed.add(o.fd)

    try:
        for kind, arg in case.steps:
            if kind == "ctl":
                data, fds = arg
                given.update(fds)
                take(sess.receive_control(data, fds))
            elif kind == "vcpu":
                take(sess.receive_vcpu(*arg))
            else:
                take(sess.eof())
            if sess.closed:
                res.refused_hello = True
                break
    except c.ProtocolError:
        res.protocol_error = True
    except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
        res.other = e
    if not sess.closed:
        take(sess.abort())
    res.leaked_fds = sorted(given - handed)
    return res


def reference_backend(nr_pes: int = 2) -> tuple[s.Backend, FrontendCore, bytes]:
    """A Backend in an interesting state (registrations, a binding, a
    running handler), its front-end, and its snapshot to compare against."""
    from sdeid.model.abi import Fid
    from sdeid.testing.pair2 import Pair
    p = Pair(nr_pes)
    p.connect()
    p.ret(0, Fid.EVENT_REGISTER, 0, 0x40100000, 1, 0, 0)
    p.ret(0, Fid.EVENT_ENABLE, 0)
    p.ret(0, Fid.PE_UNMASK)
    ev = p.ret(1, Fid.INTERRUPT_BIND, 40)
    p.ret(1, Fid.EVENT_REGISTER, ev, 0x40100000, 2, 0, 0)
    p.ret(0, Fid.EVENT_SIGNAL, 0, 0)
    p.pull(0)
    p.carry(p.session.eof())
    assert p.backend.dispatcher is not None
    return p.backend, p.fe, p.backend.dispatcher.snapshot()


def replies_digest(backend: s.Backend) -> bytes:
    return b"".join(struct.pack("<IQQ", pe, r.instance, r.seq) + r.data
                    for pe, r in sorted(backend.replies.items()))
