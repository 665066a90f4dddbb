"""A hostile back-end against QEMU's smccc-user device (scripts/fuzz-qemu,
CI-sized): every case once, between connections relayed to a real
`sdeid --protocol 2`, with the bare-metal guest case outage_hostile checking
its own registers and EL after every call.

Asserted: QEMU never crashes (alive throughout, exit status 0, nothing like
an abort on stderr); every case that breaks the protocol is dropped, with a
reason logged, and no case that breaks none is dropped; QMP query-status
answers within QMP_BOUND throughout; the guest sees no register, EL, SP,
DAIF or NZCV change and never the fuzzer's marker, and finishes PASS once
sdeid itself serves the chardev; QEMU's descriptors do not grow.

Integration tests: they run in CI and fail, never skip, when something is
missing, unless a developer sets SDEID_SKIP_INTEGRATION=1."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

from sdeid.testing.vm import find_qemu
from tests.scripts import load_script

pytestmark = pytest.mark.integration

if os.environ.get("SDEID_SKIP_INTEGRATION") == "1":
    pytest.skip("SDEID_SKIP_INTEGRATION=1", allow_module_level=True)

# The monitor is answered in a few ms on an idle machine (NOTES.md 3.2
# measured 1.7 ms); CI's machine is shared with TCG guests and a QEMU
# build, so the bound leaves room for scheduling, not for a blocked loop
# (a main loop waiting on a stalled back-end would miss it by the hold's
# whole second or the drop timeout's ten).
QMP_BOUND = 0.75


@pytest.fixture(scope="module")
def fq() -> ModuleType:
    return load_script("fuzz-qemu")


@pytest.fixture(scope="module")
def qemu() -> str:
    return find_qemu(None, 2)


def test_every_hostile_case_is_survived_and_refused(fq: ModuleType, qemu: str,
                                                    tmp_path: Path) -> None:
    names = fq.default_cases(False)
    rep = fq.fuzz(names, 1, 20261201, qemu=qemu, qmp_bound=QMP_BOUND, log=print,
                  keep=tmp_path)
    print(fq.summary(rep))
    tail = "\n".join(rep.console[-20:])
    assert {r.name for r in rep.results} == set(names), tail
    # A hostile reply needs a request to answer; only the hijacking cases
    # may pass one up (a PULL or the trampoline's COMPLETE, from which the
    # guest could not recover).
    skips = [(r.name, r.why) for r in rep.results if r.outcome == "skip"]
    assert all(n.startswith("restore_pc_") and why.startswith("not a checked call in flight")
               for n, why in skips), skips
    assert rep.failures == [], f"{rep.failures}\n{tail}\n{rep.qemu_stderr[-3000:]}"
    # Each protocol error was dropped and logged by QEMU; the relayed
    # connections in between were not.
    drops = [r for r in rep.results if fq.CASES[r.name][0] == "drop"]
    assert drops and all(r.dropped for r in drops)
    assert rep.protocol_errors >= len(drops) - 1      # close_vcpu_channel: an EOF
    assert rep.qemu_rc == 0 and not rep.crash_lines
    assert len(rep.qmp) >= 100 and max(rep.qmp) <= QMP_BOUND
    g = rep.guest_counts
    assert rep.guest_result == "PASS" and g["violations"] == 0, tail
    # The guest made progress through sdeid between hostile connections and
    # handled every event it signalled.
    assert g["cycles"] > len(names) and g["handled"] == g["cycles"], g
    # Two cases are permitted hijacks (RESTORE to a misaligned or
    # non-canonical PC): each either refused or taken as the fault the
    # architecture prescribes, then retried.
    assert g["pc_faults"] <= 2 and g["retries"] == g["pc_faults"], g
    # A cycle whose call was hijacked checks registers but not SDEI results:
    # the real back-end may have applied the call before the hostile one got
    # the re-send (hostile.c).  Only hijacks taint a cycle.
    assert g["tainted"] <= g["pc_faults"], g


def test_an_irq_to_a_lower_el_than_the_restored_one_is_refused(
        fq: ModuleType, qemu: str, tmp_path: Path) -> None:
    """With EL2 implemented (virtualization=on), RESTORE_IRQ restoring EL2h
    and taking the IRQ to EL1 must be refused: the architecture never takes
    an exception to a lower EL.  (Found by this fuzzer: until patch 0002
    checked irq_el >= the restored EL, QEMU applied it.)"""
    rep = fq.fuzz(["restore_el2_irq_el1"], 1, 1, el2=True, qemu=qemu, qmp_bound=2.0,
                  drop_timeout=3, log=print, keep=tmp_path)
    print(fq.summary(rep))
    assert rep.qemu_rc == 0 and not rep.crash_lines
    assert rep.failures == [], rep.failures
