"""The smccc-user protocol, version 2, as data: its single source of truth.

The v2 front-end is a generic QEMU device (``smccc-user``) that forwards a
range of SMCCC calls to a user-space back-end and offers the facilities a
firmware service needs (architectural exception entry and context restore,
interrupt-line interception, state in the migration stream, NMI).  sdeid is
one back-end of it; nothing in this protocol names SDEI.

Two kinds of channel (see protocol/v2/PROTOCOL.rst for the prose):

- the *control channel*: the chardev's stream socket.  16-byte header, then a
  payload whose size is fixed by (type, reply bit), so either side validates
  a frame with one size comparison.  It carries the handshake, the per-vCPU
  channel file descriptors (SCM_RIGHTS), line levels and claims, kicks,
  reset, state transfer over a stream socket, error records and NMIs.
- one *vCPU channel* per vCPU: a SOCK_SEQPACKET socketpair created by the
  front-end, one end passed to the back-end.  Exactly one fixed-size request
  and one fixed-size reply in flight, so a vCPU waits on its own socket and
  on nothing another vCPU or QEMU's main loop needs.  Each request carries a
  per-PE sequence number: the back-end answers a repeated number with the
  reply it stored, which makes re-sending after a reconnect exactly-once.

Everything is little-endian.  Field types: u16/u32/u64/i32, ("u64", N) an
array of N.  The Python codec (sdeid.proto.codec) compiles these tables into
struct.Struct; ``python -m sdeid.proto.gen`` writes the C header QEMU uses,
the prose tables and the test vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSION = 2

FieldType = str | tuple[str, int]
Layout = tuple[tuple[str, FieldType], ...]

SCALAR_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "i32": 4, "i64": 8}


def layout_size(layout: Layout) -> int:
    total = 0
    for _name, ftype in layout:
        if isinstance(ftype, str):
            total += SCALAR_SIZES[ftype]
        else:
            total += SCALAR_SIZES[ftype[0]] * ftype[1]
    return total


# ------------------------------------------------------------------ control

CONTROL_HEADER: Layout = (
    ("type", "u16"),
    ("flags", "u16"),
    ("size", "u32"),     # payload bytes after the header; fixed per (type, reply)
    ("tag", "u32"),      # chosen by the requester, echoed in the reply
    ("reserved", "u32"),  # zero
)
CONTROL_HEADER_SIZE = 16

FLAG_REPLY = 1 << 0
FLAG_KNOWN = FLAG_REPLY

# At most this many file descriptors ride one control frame.
MAX_FDS_PER_FRAME = 1

# Feature bits offered by the front-end in HELLO; the back-end answers with
# the subset it uses, and neither side sends a message of a feature that was
# not agreed (the receiver treats it as a protocol error).
FEATURES = {
    "LINES": 1 << 0,         # LINE_CLAIM / LINE_RELEASE / LINE_LEVEL
    "STATE": 1 << 1,         # SAVE_STATE / LOAD_STATE (migration)
    "PE_POWER": 1 << 2,      # POWER requests on the vCPU channels
    # 1 << 3 was ERROR_RECORDS: error records now reach a GHES source through
    # QEMU's own QMP command inject-ghes-v2-error.  Never reuse the bit.
    "NMI": 1 << 4,           # NMI (QEMU's NMI interface: inject-nmi, watchdogs)
}
FEATURES_ALL = 0
for _bit in FEATURES.values():
    FEATURES_ALL |= _bit

# Status values (negative errno numbers, so QEMU can report them as such).
STATUS = {
    "OK": 0,
    "ENOENT": -2,       # no such object
    "EBUSY": -16,       # refused in the current state
    "EINVAL": -22,      # well formed but not acceptable
    "EPROTO": -71,      # version or feature mismatch
    "ENOTSUP": -95,     # the front-end cannot do that (e.g. intercept this line)
}

Ack: Layout = (("status", "i32"), ("reserved", "u32"))

# INTIDs 0..1023, one bit each: the lines the front-end can intercept.
LINE_BITMAP_WORDS = 16


@dataclass(frozen=True)
class ControlMessage:
    code: int
    name: str
    direction: str           # "fe->be" or "be->fe"
    request: Layout
    reply: Layout | None     # None: one-way
    feature: str | None      # the feature that must be agreed, or None
    fds: int                 # file descriptors that ride the request
    doc: str


CONTROL: tuple[ControlMessage, ...] = (
    ControlMessage(
        1, "HELLO", "fe->be",
        (
            ("version", "u32"),
            ("nr_pes", "u32"),
            ("features", "u64"),
            ("instance", "u64"),
            ("nr_spis", "u32"),
            ("reserved", "u32"),
            ("lines", ("u64", LINE_BITMAP_WORDS)),
        ),
        (
            ("version", "u32"),
            ("status", "i32"),
            ("features", "u64"),
        ),
        None, 0,
        "First message of a connection.  `instance` names this front-end "
        "run (random at start, kept across reconnects, new after a migration); "
        "sequence numbers are only compared within one instance.  `lines` is "
        "a bitmap of the INTIDs the front-end can intercept.  The reply's "
        "status is 0 or a negative errno; `features` is what the back-end "
        "uses.  Then the front-end sends one VCPU_CHANNEL per PE.",
    ),
    ControlMessage(
        2, "VCPU_CHANNEL", "fe->be",
        (
            ("pe", "u32"),
            ("reserved", "u32"),
            ("mpidr", "u64"),
        ),
        None, None, 1,
        "One end of PE `pe`'s vCPU channel (a SOCK_SEQPACKET socket) and the "
        "PE's MPIDR.  The back-end serves vCPU requests once it holds a "
        "channel for every PE.",
    ),
    ControlMessage(
        3, "LINE_LEVEL", "fe->be",
        (
            ("intid", "u32"),
            ("pe", "u32"),
            ("level", "u32"),
            ("edges", "u32"),
        ),
        None, "LINES", 0,
        "A claimed line changed.  `level` is its level now; `edges` counts "
        "the rising edges since the last report (a pulse shorter than a "
        "report is an edge with level 0).  `pe` names the PE of a PPI, 0 for "
        "an SPI.",
    ),
    ControlMessage(
        4, "RESET", "fe->be", (), Ack, None, 0,
        "System reset.  The front-end has handed every claimed line back to "
        "the interrupt controller and sends no vCPU request until the reply.",
    ),
    ControlMessage(
        5, "SAVE_STATE", "fe->be", (), Ack, "STATE", 1,
        "Migration, source side: the back-end writes its state to the "
        "descriptor it received, closes it, then replies.",
    ),
    ControlMessage(
        6, "LOAD_STATE", "fe->be", (), Ack, "STATE", 1,
        "Migration, destination side: the back-end reads its state from the "
        "descriptor until end of file, validates and adopts it, re-claims the "
        "lines it owns, writes the reply's status (i32) on the descriptor if "
        "it is a socket and closes it, then replies.  A refused state leaves "
        "the old one in force.",
    ),
    ControlMessage(
        7, "NMI", "fe->be",
        (
            ("cpu", "u32"),
            ("reserved", "u32"),
        ),
        None, "NMI", 0,
        "QEMU's NMI interface fired (QMP inject-nmi, a watchdog action) for "
        "`cpu` (the monitor's current CPU index).",
    ),
    ControlMessage(
        32, "KICK", "be->fe",
        (
            ("pe", "u32"),
            ("reserved", "u32"),
        ),
        None, None, 0,
        "PE `pe` may have work: the front-end makes that vCPU send a PULL at "
        "its next safe point.  Only a hint; the PULL decides.",
    ),
    ControlMessage(
        33, "LINE_CLAIM", "be->fe",
        (
            ("intid", "u32"),
            ("pe", "u32"),
        ),
        (
            ("status", "i32"),
            ("level", "u32"),
        ),
        "LINES", 0,
        "Intercept a line: the interrupt controller's input is deasserted "
        "and the line's current level is in the reply.  status -ENOTSUP: the "
        "front-end cannot intercept it.",
    ),
    ControlMessage(
        34, "LINE_RELEASE", "be->fe",
        (
            ("intid", "u32"),
            ("pe", "u32"),
        ),
        Ack, "LINES", 0,
        "Hand a line back: the interrupt controller sees its current level.",
    ),
)

CONTROL_BY_CODE = {m.code: m for m in CONTROL}
CONTROL_BY_NAME = {m.name: m for m in CONTROL}

# ------------------------------------------------------------- vCPU channel

# VCPU_REQUEST.op
OPS = {
    "CALL": 1,     # a forwarded SMCCC call (x0 = function ID)
    "PULL": 2,     # after a KICK or a reply with FLAG_PULL: anything to run?
    "POWER": 3,    # a PE's power changed (feature PE_POWER)
}
# VCPU_REQUEST.flags
REQ_F_SMC = 1 << 0          # CALL came by SMC (else HVC)
REQ_FLAGS_KNOWN = REQ_F_SMC

# VCPU_REQUEST.power_state for POWER
POWER_STATES = {"OFF": 0, "ON": 1, "WAKE": 2}

VCPU_REQUEST: Layout = (
    ("op", "u32"),
    ("flags", "u32"),
    ("seq", "u64"),
    ("x", ("u64", 18)),   # x0..x17 as the vCPU has them
    ("pc", "u64"),        # CALL: the return address (after the HVC/SMC)
    ("pstate", "u64"),
    ("vbar_el1", "u64"),
    ("vbar_el2", "u64"),  # 0 without EL2
    ("target", "u32"),    # POWER: the PE whose power changed
    ("power_state", "u32"),
)

# VCPU_REPLY.action: what the front-end does to the vCPU.  The back-end
# names the architectural operation; the front-end computes every PSTATE
# bit from the CPU's real features.
ACTIONS = {
    "NONE": 0,         # nothing
    "RETURN": 1,       # SMCCC return: x0..x3 written
    "ENTER": 2,        # x0..x3 written; PC = addr; PSTATE = exception entry at EL `el`
                       # (SP_ELx, DAIF set, PAN/SSBS/... per the CPU); ELR/SPSR untouched
    "RESTORE": 3,      # x0..x17, PC and PSTATE = the saved context in the reply
    "RESTORE_IRQ": 4,  # RESTORE, then an IRQ exception to EL `el` at `addr`:
                       # ELR_ELx = restored PC, SPSR_ELx = restored PSTATE
}
# What a reply may do, by request op: anything else is a protocol error, and
# the front-end refuses it without touching the vCPU.
ALLOWED_ACTIONS = {
    "CALL": ("RETURN", "RESTORE", "RESTORE_IRQ"),
    "PULL": ("NONE", "ENTER"),
    "POWER": ("NONE",),
}
# VCPU_REPLY.flags
REP_F_PULL = 1 << 0   # send a PULL before the vCPU runs guest code again
REP_FLAGS_KNOWN = REP_F_PULL

VCPU_REPLY: Layout = (
    ("op", "u32"),        # the request's op
    ("action", "u32"),
    ("seq", "u64"),       # the request's seq
    ("flags", "u32"),
    ("el", "u32"),        # ENTER, RESTORE_IRQ: the target exception level (1 or 2)
    ("x", ("u64", 18)),   # RETURN, ENTER: x0..x3; RESTORE*: x0..x17
    ("pc", "u64"),        # RESTORE*: the restored PC
    ("pstate", "u64"),    # RESTORE*: the restored PSTATE
    ("addr", "u64"),      # ENTER: the handler; RESTORE_IRQ: the exception vector
)

VCPU_REQUEST_SIZE = layout_size(VCPU_REQUEST)
VCPU_REPLY_SIZE = layout_size(VCPU_REPLY)

# Bounds the back-end holds the front-end to.
MAX_PES = 512
MAX_SPIS = 988
