"""Issue 11 on the real QEMU with the bare-metal guest (tests/guest/cases/
nmi.c): `inject-nmi` on QEMU's own QMP monitor (the one `sdeid run`
exposes, `VM.qemu_monitor()`) reaches the guest's handler of the
`--nmi-event`, and a critical event behind the PL031 RTC (INTID 34,
`intid=34`) runs nested inside event 0's handler, which resumes intact."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from sdeid.testing.conformance import read_results
from sdeid.testing.vm import VM, find_qemu
from tests.test_guest_conformance import RUN_TIMEOUT, guest_image

pytestmark = pytest.mark.integration
__all__ = ["guest_image"]     # the fixture

WAIT_NMI = re.compile(r"^SDEI-WAIT-NMI (\d+)$")
SDEID_ARGS = ["--event=300:shared:critical", "--nmi-event=300",
              "--event=200:shared:critical:intid=34"]


def test_inject_nmi_and_a_nested_interrupt_backed_critical_event(
        guest_image: Path, tmp_path: Path) -> None:
    qemu = find_qemu()
    results: dict[str, tuple[str, str]] = {}
    nmi_events: list[dict[str, object]] = []
    stats: dict[str, int] = {}
    monitor = tmp_path / "mon.sock"
    with VM(["-kernel", str(guest_image), "-append", "tests=nmi_inject,nmi_line_nested"],
            qemu=qemu, smp=2, memory="256M", sdeid_args=SDEID_ARGS, monitor=monitor,
            console_input=True,
            echo=sys.stderr if os.environ.get("SDEID_ECHO_GUEST") == "1" else None) as vm:
        assert vm.monitor_path == monitor and monitor.is_socket()
        vm.wait_connected(30)
        with vm.control() as ctl:
            info = ctl.execute("query-sdei")
        def host_step(line: str) -> bool:
            nonlocal stats, nmi_events
            if WAIT_NMI.match(line):
                with vm.qemu_monitor() as mon:
                    mon.execute("inject-nmi")
                return True
            if line == "SDEI-WAIT-HOST-NMI":     # read while the VM (and sdeid) runs
                # The guest unregistered event 300: this NMI is refused, and
                # the operator sees it (event and stats).
                with vm.qemu_monitor() as mon:
                    mon.execute("inject-nmi")
                with vm.control() as ctl:
                    deadline = time.monotonic() + 10
                    while (ctl.execute("query-stats")["nmi-received"] < 2
                           and time.monotonic() < deadline):
                        time.sleep(0.05)
                    stats = ctl.execute("query-stats")
                    nmi_events = [e["data"] for e in ctl.execute("query-events")
                                  if e["event"] == "SDEI_NMI"]
                vm.send_console(b"+\n")
                return True
            return False

        read_results(vm, host_step, RUN_TIMEOUT, results)
        console = list(vm.lines)
    print("\n".join(ln for ln in console if "nmi_" in ln))
    print("SDEI_NMI events:", nmi_events, "stats:",
          {k: v for k, v in stats.items() if k.startswith("nmi-")})
    assert results == {"nmi_inject": ("PASS", ""), "nmi_line_nested": ("PASS", "")}, \
        "\n".join(console[-40:])
    assert nmi_events[0] == {"cpu": 0, "event": 300, "status": 0, "delivered": True}
    refused = nmi_events[1]
    assert refused["delivered"] is False and refused["status"] == -3, refused   # DENIED
    assert refused["event"] == 300 and "not registered" in str(refused["reason"])
    assert (stats["nmi-received"], stats["nmi-delivered"], stats["nmi-refused"]) == (2, 1, 1)
    assert {"number": 200, "type": "shared", "priority": "critical", "dynamic": False,
            "intid": 34} in info["events"]
