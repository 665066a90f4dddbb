"""Run sdeid with a trace of what the guest did, for tests/test_linux_guest.py.

    python3 tests/linux/sdeid_trace.py TRACE-FILE SDEID-ARGS...

Identical to `python3 -m sdeid SDEID-ARGS...`, except that every SDEI call
the dispatcher answers, every system reset and every PE power change is also
written to TRACE-FILE, one line each, in the order the dispatcher saw them:

    CALL pe=1 PRIVATE_RESET ret=0
    RESET
    PE_POWER pe=1 state=0

The daemon's own interfaces count calls (query-stats) but do not say which
functions a guest called; the Linux tests need the order of VERSION,
PRIVATE_RESET, SHARED_RESET, PE_MASK/PE_UNMASK around a reboot.  The wrapper
only observes: it calls the original methods and records their arguments.
"""

from __future__ import annotations

import sys
from typing import Any

from sdeid.cli import main
from sdeid.model.abi import Fid
from sdeid.model.dispatcher import Dispatcher

U64 = 2**64 - 1


def _install(path: str) -> None:
    trace = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the daemon
    call, reset, pe_power = Dispatcher.call, Dispatcher.reset, Dispatcher.pe_power

    def traced_call(self: Dispatcher, pe: int, fid: int, args: tuple[int, ...],
                    *rest: Any, **kw: Any) -> Any:
        out = call(self, pe, fid, args, *rest, **kw)
        try:
            name = Fid(fid & 0xFFFFFFFF).name
        except ValueError:
            name = f"0x{fid:x}"
        x0 = out.update.x[0] if out.update.mask & 1 else None
        if x0 is None:
            ret = "-"
        elif x0 >> 63:
            ret = str(x0 - (1 << 64))
        else:
            ret = hex(x0) if x0 > 0xFFFF else str(x0)
        trace.write(f"CALL pe={pe} {name} ret={ret}\n")
        return out

    def traced_reset(self: Dispatcher) -> None:
        trace.write("RESET\n")
        reset(self)

    def traced_pe_power(self: Dispatcher, pe: int, state: int) -> Any:
        trace.write(f"PE_POWER pe={pe} state={state}\n")
        return pe_power(self, pe, state)

    Dispatcher.call = traced_call  # type: ignore[method-assign]
    Dispatcher.reset = traced_reset  # type: ignore[method-assign]
    Dispatcher.pe_power = traced_pe_power  # type: ignore[method-assign]


if __name__ == "__main__":
    _install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
