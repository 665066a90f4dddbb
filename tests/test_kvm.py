"""KVM for real: the patched QEMU cross-built for arm64 (scripts/build-qemu --arch
arm64, KVM only) runs its guests on KVM inside scripts/nested-kvm's L1, an arm64
Linux booted under this machine's TCG with EL2.

- scripts/nested-kvm itself: COMMAND's stdout, stderr and exit status are its own,
  the host files it names are there at the same paths, /dev/kvm exists, and a
  failure to set L1 up is one line and status 125;
- the bare-metal conformance guest as a KVM guest with 4 PEs on HVC and on SMC: every
  case passes; the timer-PPI case checks that INTERRUPT_BIND refuses KVM's in-kernel
  timers with INVALID_PARAMETERS, and the cases that only need some bound interrupt
  use the PL031's SPI instead (tests/guest/cases/conformance.c);
- Debian's stock kernel as a KVM guest with the device tree and with UEFI/ACPI
  (sdeid.testing.linux_scenario): SDEI probe, CPU hotplug seen as PE power changes
  (qemu-patches/v2 0005 takes CPU_ON/CPU_OFF from KVM's PSCI for that), sdeid killed
  and restarted under the running guest, a GHES memory error logged by the guest
  (UEFI), live migration to a second QEMU and sdeid with the dispatcher state
  (DT), reboot, power-off;
- an EVENT_SIGNAL wakes a KVM vCPU idle in WFI (bench_delivery_remote).

Each L1 boot costs about 5-10 s on this 2-core machine; the timings are printed
(`pytest -s`), not asserted.  Integration tests: they run in CI and fail, never
skip, when something is missing, unless a developer sets SDEID_SKIP_INTEGRATION=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_guest_conformance import guest_image, registered_cases  # noqa: F401
from tests.test_linux_guest import assets  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
NESTED = ROOT / "scripts" / "nested-kvm"
RUN_TIMEOUT = 1200

pytestmark = pytest.mark.integration

if os.environ.get("SDEID_SKIP_INTEGRATION") == "1":
    pytest.skip("SDEID_SKIP_INTEGRATION=1", allow_module_level=True)


def nested(*command: str, timeout: float = RUN_TIMEOUT,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    out = subprocess.run([str(NESTED), "--", *command], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=timeout, cwd=cwd)
    print(f"\nnested-kvm -- {' '.join(command)[:100]}: status {out.returncode} "
          f"in {time.monotonic() - t0:.1f} s")
    return out


def marked(out: subprocess.CompletedProcess[str], marker: str) -> dict[str, Any]:
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(marker)]
    assert lines, f"no {marker.strip()} line\n--- stdout\n{out.stdout[-4000:]}" \
                  f"\n--- stderr\n{out.stderr[-6000:]}"
    result: dict[str, Any] = json.loads(lines[-1][len(marker):])
    return result


def test_nested_kvm_runs_a_command_with_its_files(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("from the host\n")
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("x")
    script = ('cat "$1"; ls "$2/sub"; pwd; test -c /dev/kvm && echo kvm; uname -m; '
              'command -v sdeid; command -v qemu-system-aarch64; echo "to stderr" >&2; exit 7')
    out = nested("sh", "-c", script, "sh", str(data), str(folder), cwd=tmp_path)
    assert out.returncode == 7, out.stderr[-3000:]
    assert out.stdout.splitlines() == [
        "from the host", "f", str(tmp_path), "kvm", "aarch64",
        "/usr/local/bin/sdeid", "/usr/local/bin/qemu-system-aarch64"], out.stdout
    assert "to stderr" in out.stderr


def test_nested_kvm_says_in_one_line_what_it_lacks(tmp_path: Path) -> None:
    env = {**os.environ, "SDEID_QEMU_ARM64": str(tmp_path / "none")}
    out = subprocess.run([str(NESTED), "--", "true"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=600, env=env)
    assert out.returncode == 125, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("nested-kvm: error:")]
    assert errors == [f"nested-kvm: error: the arm64 QEMU {tmp_path / 'none'} is not an "
                      "executable file"], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_nested_kvm_status_of_a_missing_command() -> None:
    out = nested("/no/such/command")
    assert out.returncode == 127, (out.returncode, out.stderr[-2000:])


@pytest.mark.parametrize("conduit", ["hvc", "smc"])
def test_conformance_guest_under_kvm(guest_image: Path, conduit: str) -> None:  # noqa: F811
    out = nested("python3", "-m", "sdeid.testing.conformance", "--accel", "kvm",
                 "--conduit", conduit, "--smp", "4", str(guest_image))
    got = marked(out, "CONFORMANCE ")
    results = got["results"]
    failed = {k: v for k, v in results.items() if v[0] != "PASS"}
    assert not failed, f"{failed}\n{out.stderr[-4000:]}"
    cases = registered_cases()
    assert list(results) == cases, (list(results), cases)
    assert got["summary"] == [len(cases), 0] and not got["errors"], got
    assert out.returncode == 0
    console = out.stderr      # the runner echoes the guest's console on stderr
    assert f"conduit {conduit} (bootargs conduit=)" in console, console[-3000:]
    print(f"conformance under KVM ({conduit}): {len(cases)} cases in {got['wall']} s "
          f"inside L1")


@pytest.mark.parametrize("firmware", ["dt", "uefi"])
def test_stock_linux_under_kvm(assets: dict[str, str], firmware: str) -> None:  # noqa: F811
    args = ["--kernel", assets["KERNEL"], "--initrd", assets["INITRD"],
            "--firmware", firmware]
    if firmware == "uefi":
        args += [f"--aavmf-code={assets['AAVMF_CODE']}",
                 f"--aavmf-vars={assets['AAVMF_VARS']}"]
    else:
        args += ["--migrate"]       # the DT run also migrates to a second QEMU and sdeid
    out = nested("python3", "-m", "sdeid.testing.linux_scenario", *args)
    got = marked(out, "SCENARIO ")
    steps = {s["step"]: s for s in got["steps"]}
    want = ["probe", "hotplug", "restart",
            *(["ghes"] if firmware == "uefi" else ["migrate", "hotplug-after-migration"]),
            "reboot", "poweroff"]
    assert list(steps) == want and got["ok"], f"{got}\n{out.stderr[-4000:]}"
    assert out.returncode == 0
    off = steps["hotplug"]["offline"]
    assert off["masked"] and not off["online"], off
    print(f"stock Linux under KVM ({firmware}): " + ", ".join(
        f"{s['step']} at {s['t']} s" for s in got["steps"]))


def test_delivery_wakes_a_kvm_vcpu_idle_in_wfi(guest_image: Path) -> None:  # noqa: F811
    """bench_delivery_remote: EVENT_SIGNAL to another PE that spins and to one that
    sleeps in WFI inside KVM_RUN, 300 times each; the case fails if any handler is not
    entered within a second.  Its figures are printed (docs/benchmarks.md says what
    they mean at this depth)."""
    out = nested("python3", "-m", "sdeid.testing.conformance", "--accel", "kvm",
                 "--smp", "2", "--tests", "bench_delivery_remote", str(guest_image))
    got = marked(out, "CONFORMANCE ")
    assert got["results"] == {"bench_delivery_remote": ["PASS", ""]}, \
        f"{got}\n{out.stderr[-4000:]}"
    bench = [ln for ln in out.stderr.splitlines() if ln.startswith("SDEI-BENCH ")]
    assert any("deliver_signal_remote_wfi" in ln for ln in bench), bench
    print("\n".join(bench))
