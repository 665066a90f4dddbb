"""LEGACY (protocol 1, see sdeid/v1/__init__.py): the v1 wire protocol as data.

(The generator, protocol/ v1 files and their drift tests were removed with
protocol 1; the QEMU 10.0 series in qemu-patches/ carries its own copy of the
header.  What follows describes how it was.)

Everything that both sides of the socket must agree on lives here and only
here: header layout, flag bits, feature bits, request codes, payload layouts,
size limits and the register-write masks that bound what a reply may change.
The Python codec builds its structs from these tables, and
``scripts/gen-protocol`` writes ``protocol/sdeid-protocol.h`` (for QEMU) and
``protocol/vectors.h`` from them.  A test regenerates both and fails when the
committed files drift.  ``protocol/PROTOCOL.rst`` is the prose for the same
facts; its tables are checked against this module by the tests too.

All integers are little-endian.  Field types are ``u8``/``u16``/``u32``/
``u64``/``i32``/``i64``; ``("u64", N)`` is an array of N; ``("u64", "field")``
is an array whose length is another field of the same payload; ``"bytes"`` is
the rest of the payload.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSION = 1

HEADER_FIELDS = (
    ("request", "u16"),
    ("flags", "u16"),
    ("size", "u32"),
    ("id", "u64"),
)
HEADER_SIZE = 16

# flags: bits 0-1 carry the header version; the rest are single bits.
FLAG_VERSION_MASK = 0x0003
FLAG_REPLY = 0x0004
FLAG_NEED_REPLY = 0x0008
FLAG_KNOWN = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY

# No payload may exceed this; the state blob is the only large one.
MAX_PAYLOAD = 4 * 1024 * 1024
MAX_PES = 512
# GIC SPI INTIDs run from 32; the GICv3 architecture stops below 1020.
MAX_SPIS = 988

# Feature bits negotiated in HELLO: the session uses the intersection.
FEATURES = {
    "STATE": 1 << 0,      # GET_STATE/SET_STATE: migration without a blocker
    "LINES": 1 << 1,      # LINE_CLAIM/LINE_RELEASE/LINE_LEVEL (bound interrupts)
    "PE_POWER": 1 << 2,   # PE_POWER reports of PSCI CPU_ON/CPU_OFF/wake-up
    "ERROR_RECORDS": 1 << 3,  # ERROR_RECORD: the front-end has firmware-first error sources
}
FEATURES_ALL = 0
for _bit in FEATURES.values():
    FEATURES_ALL |= _bit

# ERROR_RECORD kinds.
ERROR_KINDS = {"MEMORY": 1}   # a memory error at a guest physical address

# PE_POWER states.
PE_POWER_STATES = {"OFF": 0, "ON": 1, "WAKE": 2}

# Status values carried in ACK replies and HELLO/GET_STATE replies.  They are
# negative errno numbers so QEMU can hand them to error_setg_errno() as is.
STATUS = {
    "OK": 0,
    "EINVAL": -22,      # the request was well formed but its values are not acceptable
    "EBUSY": -16,       # refused in the current state (e.g. SET_STATE with a different topology)
    "EPROTO": -71,      # version or feature mismatch
    "ENOTSUP": -95,     # the back-end lacks the feature
}

# Register-update layout shared by CALL and DISPATCH replies.
# mask bits name the registers the front-end must write:
REG_X0 = 0                 # bits 0..17: x0..x17
REG_PC = 18
REG_PSTATE = 19
REG_ELR = 20               # ELR_ELn where n is the EL of the (new) PSTATE
REG_SPSR = 21              # SPSR_ELn, same n
REG_MASK_KNOWN = (1 << 22) - 1
REG_MASK_X0_X3 = 0xF
REG_MASK_X0_X17 = (1 << 18) - 1

# What a reply may write, by the kind of exchange.  The front-end enforces
# these: a reply outside its allowance is a protocol error.
#   CALL of an ordinary function: results in x0..x3 only (SMCCC).
#   CALL of a context-switching function (see CONTEXT_SWITCH_FIDS): the
#     whole set, because COMPLETE restores the interrupted context and
#     COMPLETE_AND_RESUME also performs an exception entry.
#   DISPATCH: handler entry writes x0..x3, PC and PSTATE; x4..x17, ELR and
#     SPSR keep the interrupted values.
ALLOW_CALL = REG_MASK_X0_X3
ALLOW_CALL_CONTEXT = REG_MASK_KNOWN
ALLOW_DISPATCH = REG_MASK_X0_X3 | (1 << REG_PC) | (1 << REG_PSTATE)

# SDEI_EVENT_COMPLETE and SDEI_EVENT_COMPLETE_AND_RESUME: the two calls that
# do not return to the caller.
CONTEXT_SWITCH_FIDS = (0xC4000025, 0xC4000026)

# Function IDs the front-end forwards.  Both the SMC64 range (SDEI proper)
# and its SMC32 twin go to the back-end, so the dispatcher, not QEMU, decides
# what an SMC32-encoded SDEI call gets (NOT_SUPPORTED).
FORWARD_RANGES = ((0xC4000020, 32), (0x84000020, 32))

# Reply flags.
REPLY_F_PULL = 1 << 0   # send DISPATCH for this PE before the vCPU runs on

RegUpdate = (
    ("mask", "u32"),
    ("flags", "u32"),
    ("x", ("u64", 18)),
    ("pc", "u64"),
    ("pstate", "u64"),
    ("elr", "u64"),
    ("spsr", "u64"),
)

Ack = (
    ("status", "i32"),
    ("reserved", "u32"),
)

FieldType = str | tuple[str, int] | tuple[str, str]
Layout = tuple[tuple[str, FieldType], ...]


@dataclass(frozen=True)
class Message:
    code: int
    name: str
    direction: str          # "fe->be" (front-end to back-end) or "be->fe"
    request: Layout
    reply: Layout | None    # None: one-way (an ACK is sent if NEED_REPLY is set)
    doc: str


MESSAGES: tuple[Message, ...] = (
    Message(
        1, "HELLO", "fe->be",
        (
            ("version", "u32"),
            ("nr_pes", "u32"),
            ("features", "u64"),
            ("nr_spis", "u32"),
            ("reserved", "u32"),
            ("mpidr", ("u64", "nr_pes")),
        ),
        (
            ("version", "u32"),
            ("status", "i32"),
            ("features", "u64"),
        ),
        "Handshake: protocol version, features offered, topology (MPIDR of "
        "each PE by index, number of SPIs of the interrupt controller).",
    ),
    Message(
        2, "CALL", "fe->be",
        (
            ("pe", "u32"),
            ("fid", "u32"),
            ("args", ("u64", 5)),
            ("pc", "u64"),
            ("pstate", "u64"),
        ),
        RegUpdate,
        "A forwarded SMCCC call: x0 (function ID) and x1..x5 of PE `pe`; "
        "pc is where the vCPU resumes (after the HVC/SMC), pstate the "
        "caller's PSTATE.",
    ),
    Message(
        3, "DISPATCH", "fe->be",
        (
            ("pe", "u32"),
            ("reserved", "u32"),
            ("x", ("u64", 18)),
            ("pc", "u64"),
            ("pstate", "u64"),
            ("sctlr_el1", "u64"),
            ("vbar_el1", "u64"),
            ("sctlr_el2", "u64"),
            ("vbar_el2", "u64"),
        ),
        RegUpdate,
        "Pulled by the vCPU after a KICK (or a reply with PULL): its current "
        "context (x0..x17, PC, PSTATE, SCTLR and VBAR of EL1 and EL2, the "
        "EL2 pair zero without EL2); the reply enters a handler "
        "(mask != 0) or does nothing.",
    ),
    Message(
        4, "LINE_LEVEL", "fe->be",
        (
            ("intid", "u32"),
            ("pe", "u32"),
            ("level", "u32"),
            ("reserved", "u32"),
        ),
        None,
        "The level of a claimed interrupt line changed (or is being reported "
        "right after LINE_CLAIM).  pe names the PE for a PPI, 0 for an SPI.",
    ),
    Message(
        5, "RESET", "fe->be",
        (),
        Ack,
        "System reset: the back-end drops every registration, binding and "
        "running handler and masks every PE.  The front-end has already "
        "handed every claimed line back to the interrupt controller.",
    ),
    Message(
        6, "PE_POWER", "fe->be",
        (
            ("pe", "u32"),
            ("state", "u32"),
        ),
        Ack,
        "A PE was powered off, powered on (PSCI CPU_ON), or woke from a "
        "power-down suspend.  Sent before that vCPU runs again.",
    ),
    Message(
        7, "GET_STATE", "fe->be",
        (),
        (
            ("status", "i32"),
            ("reserved", "u32"),
            ("blob", "bytes"),
        ),
        "Fetch the dispatcher state blob (migration pre_save).",
    ),
    Message(
        8, "SET_STATE", "fe->be",
        (
            ("blob", "bytes"),
        ),
        Ack,
        "Replace the dispatcher state with a blob (migration post_load).  "
        "The back-end re-asserts the lines the new state owns before it "
        "replies.",
    ),
    Message(
        32, "KICK", "be->fe",
        (
            ("pe", "u32"),
            ("reserved", "u32"),
        ),
        None,
        "Something may be dispatchable on PE `pe`: the front-end schedules "
        "a DISPATCH on that vCPU at its next safe point.",
    ),
    Message(
        33, "LINE_CLAIM", "be->fe",
        (
            ("intid", "u32"),
            ("pe", "u32"),
        ),
        None,
        "Divert an interrupt line from the interrupt controller to the "
        "back-end; the front-end answers with LINE_LEVEL carrying the "
        "current level.",
    ),
    Message(
        34, "LINE_RELEASE", "be->fe",
        (
            ("intid", "u32"),
            ("pe", "u32"),
        ),
        None,
        "Hand an interrupt line back to the interrupt controller with its "
        "current level.",
    ),
    Message(
        35, "ERROR_RECORD", "be->fe",
        (
            ("event", "u32"),
            ("kind", "u32"),
            ("address", "u64"),
        ),
        None,
        "Write an error record into the firmware-first error source (ACPI "
        "GHES) whose notification is SDEI event `event`: kind 1 is a memory "
        "error at guest physical address `address`.  Sent before the "
        "back-end triggers that event, so the guest's handler finds it.",
    ),
)

BY_CODE = {m.code: m for m in MESSAGES}
BY_NAME = {m.name: m for m in MESSAGES}

SCALAR_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "i32": 4, "i64": 8}


def fixed_size(layout: Layout) -> int | None:
    """Byte size of a layout, or None when it has a variable part."""
    total = 0
    for _name, ftype in layout:
        if isinstance(ftype, str):
            if ftype == "bytes":
                return None
            total += SCALAR_SIZES[ftype]
        else:
            elem, count = ftype
            if isinstance(count, str):
                return None
            total += SCALAR_SIZES[elem] * count
    return total


def min_size(layout: Layout) -> int:
    """Byte size of the fixed prefix of a layout."""
    total = 0
    for _name, ftype in layout:
        if isinstance(ftype, str):
            if ftype != "bytes":
                total += SCALAR_SIZES[ftype]
        elif isinstance(ftype[1], int):
            total += SCALAR_SIZES[ftype[0]] * ftype[1]
    return total
