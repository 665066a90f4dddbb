"""The `sdeid.trace` log: one line per guest-visible event, at DEBUG
(`--log-level debug`), the same for both device protocols:

    CALL pe=1 PRIVATE_RESET ret=0 | DISPATCH pe=0 event=100 | RESET | PE_POWER pe=1 state=0

Tests and operators read it to see, in order, what the guest asked and got.
"""

from __future__ import annotations

import logging

from sdeid.model.abi import Fid
from sdeid.model.types import RegisterUpdate

trace = logging.getLogger("sdeid.trace")
_FID_NAMES = {int(f): f.name for f in Fid}


def ret_text(update: RegisterUpdate) -> str:
    """x0 of a reply as the trace shows it: '-' when x0 is not written,
    negative SDEI errors in decimal, large values in hex."""
    if not update.mask & 1:
        return "-"
    x0 = update.x[0]
    if x0 >> 63:
        return str(x0 - (1 << 64))
    return hex(x0) if x0 > 0xFFFF else str(x0)


def call(pe: int, fid: int, update: RegisterUpdate) -> None:
    if trace.isEnabledFor(logging.DEBUG):
        trace.debug("CALL pe=%d %s ret=%s", pe, _FID_NAMES.get(fid, f"0x{fid:x}"),
                    ret_text(update))
