"""`scripts/demo --simulated`: start a real `sdeid`, attach a simulated
4-vCPU front-end that speaks protocol v2 as the patched QEMU's smccc-user
device does (sdeid.testing.frontend2), act out what a guest kernel does with SDEI,
let an operator fire an event through the QMP control socket (with qemu.qmp,
as one scripts QEMU), and show the daemon's view of what happened.

Run it with `scripts/demo` (which prepares the environment), or as
`python -m sdeid.testing.demo` with sdeid installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from sdeid.model.abi import Fid
from sdeid.proto import spec
from sdeid.testing.frontend2 import FrontendCore, SocketFrontend

GHES_EVENT = 100  # a static platform event, as a GHES error source would use
ENTRY = 0xFFFF800080010000


def say(who: str, text: str) -> None:
    print(f"[{who:>8}] {text}", flush=True)


async def operator(control: Path, fe: SocketFrontend) -> None:
    qmp = QMPClient("operator")
    await qmp.connect(str(control))
    say("operator", f"QMP connected to {control}")
    status = await qmp.execute("query-status")
    say("operator", f"query-status -> {json.dumps(status)}")
    say("operator", f"sdei-trigger event {GHES_EVENT} (an error source fires)")
    await qmp.execute("sdei-trigger", {"event": GHES_EVENT})
    for pe, ev in await asyncio.to_thread(pump, fe):
        v = fe.core.vcpus[pe]
        say(f"vcpu{pe}", f"entered handler for event {ev}: pc=0x{v.pc:x} x1(arg)=0x{v.x[1]:x} "
                         f"interrupted pc=0x{v.x[2]:x}")
        await asyncio.to_thread(fe.call, pe, Fid.EVENT_COMPLETE, 0)
        say(f"vcpu{pe}", f"EVENT_COMPLETE -> resumed at pc=0x{v.pc:x}")
    info: Any = await qmp.execute("query-sdei")
    say("operator", "query-sdei (registered instances):")
    for r in info["registered"]:
        where = f"pe {r['pe']}" if "pe" in r else "shared"
        print(f"           event {r['event']:5d} {where:8s} {r['state']}")
    stats = await qmp.execute("query-stats")
    say("operator", f"query-stats -> {json.dumps(stats)}")
    events: Any = await qmp.execute("query-events")
    say("operator", "recent daemon events: "
        + ", ".join(e["event"] for e in events[-8:]))
    await qmp.disconnect()


def pump(fe: SocketFrontend, wait: float = 2.0) -> list[tuple[int, int]]:
    """Pull on every kicked PE, as the vCPUs do at their next safe point,
    until a pull enters a handler or nothing is kicked for `wait` s."""
    entered = []
    with fe.lock:
        fe.kick.wait_for(lambda: bool(fe.core.kicked), wait)
        kicked = sorted(fe.core.kicked)
    for pe in kicked:
        rep = fe.pull(pe)
        if rep.action == spec.ACTIONS["ENTER"]:
            entered.append((pe, int(rep.x[0])))
    return entered


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sdeid-demo-") as d:
        tmp = Path(d)
        sock, control = tmp / "sdei.sock", tmp / "control.sock"
        r, w = os.pipe()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "sdeid", "--socket-path", str(sock),
             "--control-socket", str(control), "--event", f"{GHES_EVENT}:shared:normal",
             "--ready-fd", str(w)], pass_fds=(w,))
        os.close(w)
        with os.fdopen(r, "rb") as ready:
            if ready.readline() != b"READY\n":
                say("demo", "sdeid failed to start")
                return 1
        say("daemon", f"sdeid pid {daemon.pid} listening on {sock}")
        try:
            fe = SocketFrontend(str(sock), FrontendCore((0, 1, 2, 3)))
            try:
                say("vmm", "front-end connected: 4 vCPUs (MPIDR 0..3), 64 SPIs, one "
                    "channel each")
                v = fe.call(0, Fid.VERSION).x[0]
                say("vcpu0", f"SDEI_VERSION -> 0x{v:x} (v{v >> 48}.{(v >> 32) & 0xffff})")
                for pe in range(4):
                    fe.call(pe, Fid.PRIVATE_RESET)
                fe.call(0, Fid.SHARED_RESET)
                say("guest", "probe: PRIVATE_RESET on every PE, SHARED_RESET")
                for pe in range(4):
                    fe.call(pe, Fid.EVENT_REGISTER, 0, ENTRY, 0x1000 + pe, 0, 0)
                    fe.call(pe, Fid.EVENT_ENABLE, 0)
                    fe.call(pe, Fid.PE_UNMASK)
                say("guest", "event 0 registered and enabled on PEs 0-3; PEs unmasked")
                fe.call(0, Fid.EVENT_REGISTER, GHES_EVENT, ENTRY + 0x800, 0xE44, 0, 0)
                fe.call(0, Fid.EVENT_ENABLE, GHES_EVENT)
                say("guest", f"shared event {GHES_EVENT} registered (RM_ANY) and enabled")
                fe.call(1, Fid.EVENT_SIGNAL, 0, 3)
                say("vcpu1", "EVENT_SIGNAL(0, MPIDR 3)")
                for pe, ev in pump(fe):
                    vc = fe.core.vcpus[pe]
                    say(f"vcpu{pe}", f"entered handler for event {ev}, x1=0x{vc.x[1]:x}")
                    ctx = fe.call(pe, Fid.EVENT_CONTEXT, 2).x[0]
                    say(f"vcpu{pe}", f"EVENT_CONTEXT(2) -> 0x{ctx:x}")
                    fe.call(pe, Fid.EVENT_COMPLETE_AND_RESUME, 0xFFFF800080000280)
                    say(f"vcpu{pe}", f"COMPLETE_AND_RESUME -> pc=0x{vc.pc:x} "
                                     f"ELR_EL1=0x{vc.elr[1]:x}")
                asyncio.run(operator(control, fe))
            finally:
                fe.close()
        finally:
            daemon.terminate()
            rc = daemon.wait(10)
            say("daemon", f"stopped (exit {rc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
