"""Guest-visible benchmark pieces shared by scripts/bench-guest (TCG, on this
machine) and scripts/bench-kvm (KVM, inside scripts/nested-kvm's L1), and the
L1 side of the latter:

    python3 -m sdeid.testing.bench IMAGE --scripts DIR [--conduits hvc,smc]

The floor is scripts/bench-channel's: two processes exchanging a request and a
reply of the vCPU channel's sizes over a blocking SOCK_SEQPACKET socketpair,
measured in the same run, on the same machine (inside L1 for bench-kvm).  The
guest's figures come from tests/guest's bench_* cases (counter ticks around
the HVC/SMC; trigger-to-handler times).  Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import socket
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

from sdeid.launcher import default_accel
from sdeid.testing.vm import VM

BENCH = re.compile(r"^SDEI-BENCH (\S+) n=(\d+) p50_ns=(\d+) p99_ns=(\d+) min_ns=(\d+)")
RATE = re.compile(r"^SDEI-BENCH-RATE (\S+) calls_per_s=(\d+)")
QUANTILES = re.compile(r"^SDEI-BENCH-Q (\S+)((?: \d+){101})$")
CASES = "bench_call_cost,bench_two_pe_calls,bench_delivery,bench_delivery_remote"


def load_bench_channel(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_loader("bench_channel", SourceFileLoader(
        "bench_channel", str(path)))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def floor(n: int, bench_channel: Path,
          samples: list[float] | None = None) -> tuple[float, float]:
    """(p50, p99) in µs of the two-process socketpair round trip; every
    sample (µs) is appended to `samples` if given."""
    bc = load_bench_channel(bench_channel)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = bc.spawn([sys.executable, "-c", bc.FLOOR_SERVER, str(b.fileno()), str(bc.REP)],
                 pass_fds=(b.fileno(),), ready=False)
    b.close()
    try:
        lat = bc.timed(a, [b"\0" * bc.REQ] * n)
    finally:
        a.close()
        p.wait(10)
    if samples is not None:
        samples.extend(lat)
    return bc.pct(lat, 0.5), bc.pct(lat, 0.99)


def guest_bench(image: Path, qemu: str | None, conduit: str, cases: str,
                sdeid_args: list[str], accel: str | None = None,
                quantiles: dict[str, list[int]] | None = None
                ) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """Run bench_* cases; {name: (p50_ns, p99_ns)} and {name: calls_per_s}, and
    into `quantiles` (if given) {name: the sample at each percentile 0..100,
    ns}.  Under KVM the conduit is the guest's choice (conduit=) and the timer
    PPI is not bindable (ppi-bind=refused: the timer figures are left out)."""
    out: dict[str, tuple[int, int]] = {}
    rates: dict[str, int] = {}
    kvm = (accel or default_accel()) == "kvm"
    append = f"tests={cases}" + (f" conduit={conduit} ppi-bind=refused" if kvm else "")
    with VM(["-kernel", str(image), "-append", append], qemu=qemu, smp=2,
            memory="256M", conduit="hvc" if kvm else conduit, accel=accel,
            sdeid_args=sdeid_args) as vm:
        for line in vm.iter_lines(timeout=600):
            m = BENCH.match(line)
            if m:
                out[m.group(1)] = (int(m.group(3)), int(m.group(4)))
            m = RATE.match(line)
            if m:
                rates[m.group(1)] = int(m.group(2))
            m = QUANTILES.match(line)
            if m and quantiles is not None:
                quantiles[m.group(1)] = [int(v) for v in m.group(2).split()]
            if line.startswith("SDEI-TEST ") and " FAIL" in line:
                raise SystemExit(f"guest bench failed: {line}")
        vm.wait(timeout=30)
    return out, rates


def us(ns: int) -> str:
    return f"{ns / 1000:8.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m sdeid.testing.bench")
    ap.add_argument("image", type=Path)
    ap.add_argument("--scripts", type=Path, required=True,
                    help="the repository's scripts/ (bench-channel's floor measurement)")
    ap.add_argument("--conduits", default="hvc,smc")
    ap.add_argument("--accel", choices=["kvm", "tcg"])
    args = ap.parse_args(argv)
    accel = args.accel or default_accel()
    for conduit in args.conduits.split(","):
        f50, f99 = floor(5000, args.scripts / "bench-channel")
        r, rates = guest_bench(args.image, None, conduit, CASES, [], accel)
        g50, g99 = floor(5000, args.scripts / "bench-channel")
        f50, f99 = min(f50, g50), min(f99, g99)
        print(f"\n{accel}, {conduit} conduit; floor (two processes, blocking socketpair): "
              f"p50 {f50:.1f} us, p99 {f99:.1f} us")
        print(f"  {'guest-visible call (us)':34s} {'p50':>8s} {'p99':>8s}  p50/floor")
        psci = "PSCI_VERSION (the kernel's KVM)" if accel == "kvm" else "PSCI_VERSION (QEMU)"
        for label, key in ((psci, "psci_version"), ("SDEI_VERSION", "sdei_version"),
                           ("PE_MASK/UNMASK", "sdei_pe_mask_unmask")):
            p50, p99 = r[key]
            print(f"  {label:34s} {us(p50)} {us(p99)}  {p50 / 1000 / f50:8.2f}")
        print(f"  two vCPUs at once: PE0 {rates.get('sdei_version_pe0')} + PE1 "
              f"{rates.get('sdei_version_pe1')} calls/s")
        print(f"  {'delivery, trigger -> handler (us)':34s} {'p50':>8s} {'p99':>8s}")
        for label, key in (("EVENT_SIGNAL, own PE (busy)", "deliver_signal"),
                           ("EVENT_SIGNAL, other PE busy", "deliver_signal_remote_busy"),
                           ("EVENT_SIGNAL, other PE in WFI", "deliver_signal_remote_wfi"),
                           ("bound timer PPI, PE busy", "deliver_timer_ppi"),
                           ("bound timer PPI, PE in WFI", "deliver_timer_ppi_wfi")):
            if key in r:
                p50, p99 = r[key]
                print(f"  {label:34s} {us(p50)} {us(p99)}")
            else:
                print(f"  {label:34s} (not bindable under KVM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
