"""CPER error records for a GHESv2 error source, as QEMU's QMP command
``inject-ghes-v2-error`` takes them (base64 of the raw bytes).

One record is what a GHESv2 source's error status address points at (ACPI
6.5, 18.3.2.7.1 and UEFI 2.10 appendix N): a Generic Error Status Block, one
Generic Error Data Entry (revision 0x300) and its section, here a platform
memory error section.  The bytes are the ones QEMU's own
``acpi_ghes_memory_errors()`` writes, with the severity as a parameter: a
*recoverable* record makes Linux's GHES driver log the error and queue a
memory_failure() for the page; a *fatal* one makes it panic from the
notification's handler (``__ghes_panic``), even with every CPU's interrupts
masked when the notification is SDEI.  Pure: no I/O.
"""

from __future__ import annotations

import base64
import struct
import uuid

# UEFI 2.10 N.2.5: Platform Memory Error Section.
MEMORY_SECTION = uuid.UUID("a5bc1114-6f64-4ede-b863-3e83ed7c83b1")

# UEFI 2.10 N.2.1.1 error severities (Generic Error Data Entry, status block).
SEV_RECOVERABLE = 0
SEV_FATAL = 1
SEV_CORRECTED = 2

GEBS_UNCORRECTABLE = 1 << 0       # Block Status: uncorrectable error valid
ENTRY_REVISION = 0x300
MEM_VALID_PHYSICAL_ADDRESS = 1 << 1
MEM_VALID_TYPE = 1 << 14

_STATUS_BLOCK = struct.Struct("<IIIII")           # 20 bytes
_DATA_ENTRY = struct.Struct("<16sIHBBI16s20sQ")   # 72 bytes
_MEMORY = struct.Struct("<QQQ48xB7x")             # 80 bytes

MEMORY_RECORD_SIZE = _STATUS_BLOCK.size + _DATA_ENTRY.size + _MEMORY.size


class RecordBusy(Exception):
    """The error source still holds a record the guest has not acknowledged
    (GHESv2 read-ack): nothing was written, try again later."""


def memory_error(address: int, severity: int = SEV_RECOVERABLE) -> bytes:
    """A memory error at guest physical `address` (error type unknown)."""
    if not 0 <= address < 1 << 64:
        raise ValueError(f"address {address:#x} is not a 64-bit physical address")
    if severity not in (SEV_RECOVERABLE, SEV_FATAL, SEV_CORRECTED):
        raise ValueError(f"unknown CPER severity {severity}")
    section = _MEMORY.pack(MEM_VALID_TYPE | MEM_VALID_PHYSICAL_ADDRESS, 0, address, 0)
    entry = _DATA_ENTRY.pack(MEMORY_SECTION.bytes_le, severity, ENTRY_REVISION, 0, 0,
                             len(section), b"", b"", 0)
    status = _STATUS_BLOCK.pack(GEBS_UNCORRECTABLE, 0, 0, len(entry) + len(section),
                                severity)
    return status + entry + section


def qmp_argument(record: bytes) -> dict[str, str]:
    """The arguments of ``inject-ghes-v2-error`` for `record`."""
    return {"cper": base64.b64encode(record).decode("ascii")}
