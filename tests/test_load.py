"""Load through QEMU's smccc-user device on `sdeid --protocol 2`
(scripts/load-test, CI-sized: 10 s of a toggling line, 10^4 random calls).

The line is paced (the guest waits up to 2 ms for each rise's dispatch
before lowering it), so every report is consumed and QEMU never has to drop
sdeid for not reading (NOTES.md 3.4); the flat-out variant is the script's
(`--pace 0`), where QEMU drops the back-end dozens of times a second.

Counts: every dispatch needs a rise since the previous one (the handler
lowers the line, so a level still high at COMPLETE cannot re-dispatch), so
dispatches <= rises; sdeid's dispatches and completions equal the guest's
handler entries exactly; the rises not dispatched are pulses the guest ended
after waiting for them (a level-sensitive line deasserted before it is taken
is not pending any more, as at a GIC).  Every random call is answered with a
value SDEI defines, and sdeid counts exactly the guest's calls (and one
COMPLETE per handler entry).

Memory: RSS_HALF_BOUND_KIB bounds sdeid's VmRSS growth over the second half
of each phase, after warm-up; see its comment.

Integration tests: they run in CI and fail, never skip, when something is
missing, unless a developer sets SDEID_SKIP_INTEGRATION=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdeid.testing.vm import find_qemu
from tests.scripts import load_script

pytestmark = pytest.mark.integration

if os.environ.get("SDEID_SKIP_INTEGRATION") == "1":
    pytest.skip("SDEID_SKIP_INTEGRATION=1", allow_module_level=True)

SECONDS, CALLS, PACE_US = 10, 10_000, 2000
# sdeid's state here is fixed in size (2 PEs, one bound line, one stored
# reply per PE, bounded queues), so after warm-up (imports, first use of each
# code path, allocator arenas: the first half of a phase) RSS should stay
# flat.  A phase's second half carries about 5,000 dispatches or calls: a
# leak of 200 bytes per dispatch or call would add 1 MiB.  Seen on a shared
# 2-core machine: +0 to +52 KiB.
RSS_HALF_BOUND_KIB = 1024
# Whole run, warm-up included (seen: +1.3 MiB from a 25 MiB start).
RSS_TOTAL_BOUND_KIB = 8 * 1024


def test_a_toggling_line_and_random_calls_leave_sdeid_bounded(tmp_path: Path) -> None:
    lt = load_script("load-test")
    rep = lt.run(SECONDS, CALLS, seed=7, qemu=find_qemu(None, 2), keep=tmp_path,
                 pace=PACE_US, grace=120)
    text = lt.describe(rep)
    print(text)
    tail = "\n".join(rep.console[-20:])
    assert not rep.stuck, text
    assert rep.summary == "SDEI-TEST-SUMMARY passed=2 failed=0", f"{text}\n{tail}"
    assert rep.qemu_rc == 0 and rep.sdeid_alive, text
    assert rep.qemu_disconnects == 0 and rep.sdeid_connections == 1, text

    tog = rep.phases["bench_load_toggle"]
    g = {k: int(float(v)) for k, v in tog.guest.items()}
    assert g["rises"] > 0 and 0 < g["handled"] <= g["rises"], g
    assert g["during"] + g["after"] == g["handled"], g
    assert tog.delta("dispatches") == g["handled"], (tog.stats0, tog.stats1, g)
    assert tog.delta("completions") == g["handled"], (tog.stats0, tog.stats1, g)

    calls = rep.phases["bench_load_calls"]
    gc = {k: int(float(v)) for k, v in calls.guest.items()}
    assert gc["calls"] == CALLS and gc["bad"] == 0, gc
    # sdeid counts the guest's calls and each handler's COMPLETE.
    assert calls.delta("calls") == CALLS + calls.delta("completions"), \
        (calls.stats0, calls.stats1)
    assert calls.delta("dispatches") == calls.delta("completions") == gc["handled"]

    for p in (tog, calls):
        assert rep.second_half_growth(p) <= RSS_HALF_BOUND_KIB, text
    assert len(rep.samples) >= SECONDS * 2, len(rep.samples)
    assert rep.rss_end - rep.rss_start <= RSS_TOTAL_BOUND_KIB, text
