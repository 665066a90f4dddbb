"""Names and numbers of the SDEI ABI (Arm DEN 0054), as the spec spells them."""

from __future__ import annotations

import enum

SDEI_FID_BASE = 0xC4000020
SDEI_FID_COUNT = 32
# The SMC32 encoding of the same range.  SDEI defines only SMC64 calls; the
# 32-bit twins are answered NOT_SUPPORTED, as TF-A does.
SDEI_FID32_BASE = 0x84000020


class Fid(enum.IntEnum):
    VERSION = 0xC4000020
    EVENT_REGISTER = 0xC4000021
    EVENT_ENABLE = 0xC4000022
    EVENT_DISABLE = 0xC4000023
    EVENT_CONTEXT = 0xC4000024
    EVENT_COMPLETE = 0xC4000025
    EVENT_COMPLETE_AND_RESUME = 0xC4000026
    EVENT_UNREGISTER = 0xC4000027
    EVENT_STATUS = 0xC4000028
    EVENT_GET_INFO = 0xC4000029
    EVENT_ROUTING_SET = 0xC400002A
    PE_MASK = 0xC400002B
    PE_UNMASK = 0xC400002C
    INTERRUPT_BIND = 0xC400002D
    INTERRUPT_RELEASE = 0xC400002E
    EVENT_SIGNAL = 0xC400002F
    FEATURES = 0xC4000030
    PRIVATE_RESET = 0xC4000031
    SHARED_RESET = 0xC4000032


class Ret(enum.IntEnum):
    """Return codes; as 64-bit register values they are sign-extended."""

    SUCCESS = 0
    NOT_SUPPORTED = -1
    INVALID_PARAMETERS = -2
    DENIED = -3
    PENDING = -5
    OUT_OF_RESOURCE = -10


class EventType(enum.IntEnum):
    PRIVATE = 0
    SHARED = 1


class Priority(enum.IntEnum):
    NORMAL = 0
    CRITICAL = 1


class Info(enum.IntEnum):
    """EVENT_GET_INFO selectors, numbered as Linux's uapi numbers them."""

    EV_TYPE = 0
    EV_SIGNALED = 1
    EV_PRIORITY = 2
    EV_ROUTING_MODE = 3
    EV_ROUTING_AFF = 4


class Feature(enum.IntEnum):
    BIND_SLOTS = 0
    RELATIVE_MODE = 1  # SDEI v1.1


# EVENT_REGISTER / ROUTING_SET flags.
RM_ANY = 0
RM_PE = 1
FLAG_ROUTING_PE = 1 << 0
FLAG_RELATIVE = 1 << 1  # v1.1: ep_address is an offset from VBAR_ELx

# EVENT_STATUS bits.
STATUS_REGISTERED = 1 << 0
STATUS_ENABLED = 1 << 1
STATUS_RUNNING = 1 << 2

# The only standard event: private, normal, the one EVENT_SIGNAL targets.
SIGNAL_EVENT = 0

VENDOR_ID = 0x53444549  # "SDEI": sdeid's vendor-defined implementation id

# EVENT_CONTEXT indexes x0..x17 of the interrupted context.
SAVED_GPREGS = 18
MAX_NESTING = 2

# GIC interrupt ID ranges that INTERRUPT_BIND accepts.
PPI_FIRST, PPI_LAST = 16, 31
SPI_FIRST = 32

# MPIDR_EL1 affinity fields (Aff3 at [39:32], Aff2..Aff0 at [23:0]) and the
# non-affinity bits a client may leave set (RES1 bit 31, U bit 30, MT bit 24).
MPIDR_AFF_MASK = 0xFF_00FF_FFFF
MPIDR_TOLERATED = (1 << 31) | (1 << 30) | (1 << 24)

U64 = (1 << 64) - 1


def ret_u64(code: int) -> int:
    """A return code as the 64-bit value x0 holds."""
    return code & U64


def encode_version(major: int, minor: int, vendor: int = VENDOR_ID) -> int:
    return ((major & 0x7FFF) << 48) | ((minor & 0xFFFF) << 32) | (vendor & 0xFFFFFFFF)
