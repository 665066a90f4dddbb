"""End-to-end checks of the smccc-user v2 series with a real back-end.

    python3 e2e.py --qemu BUILD/qemu-system-aarch64 [--sdeid-python PY] [--repo DIR]

Runs tests/e2e-guest (build it first: make -C e2e-guest) and prints one
"E2E <check> PASS|FAIL <numbers>" line per check:

  version-hvc / version-smc  SDEI_VERSION through the device and sdeid v2
                             (EL1: HVC conduit; virtualization=on: SMC)
  parallel                   two vCPUs call at once; with fake_backend.py
                             delaying every reply by 0.3 s, each vCPU's 5
                             calls must take ~1.5 s, not ~3 s
  sigstop                    sdeid stopped while a vCPU waits in a call:
                             QMP query-status still answers (latencies
                             printed); SIGCONT completes the call
  kill9                      sdeid killed (-9) while a vCPU waits, restarted
                             with the same --state-file: the vCPU re-sends
                             and the call completes
  migrate                    (--migrate, needs the STATE patch) live migration
                             to a second QEMU with its own sdeid: the state
                             blob crosses, the destination's calls work
"""
import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUEST = HERE / "e2e-guest" / "e2e-guest.elf"
FIDS = "0xc4000020-0xc400003f"
results = []


def report(name, ok, detail=""):
    results.append(ok)
    print(f"E2E {name} {'PASS' if ok else 'FAIL'} {detail}", flush=True)


class Lines:
    def __init__(self, stream):
        self.q = queue.Queue()
        self.all = []
        threading.Thread(target=self._run, args=(stream,), daemon=True).start()

    def _run(self, stream):
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.all.append(line)
            self.q.put(line)
        self.q.put(None)

    def expect(self, prefix, timeout):
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > end:
                raise TimeoutError(f"no line starting with {prefix!r}; got {self.all[-5:]}")
            if line.startswith(prefix):
                return line


class QMP:
    def __init__(self, path):
        for _ in range(100):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        self.f = self.s.makefile("rwb")
        self._read()
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            msg = json.loads(self.f.readline())
            if "event" not in msg:
                return msg

    def cmd(self, name):
        self.f.write(json.dumps({"execute": name}).encode() + b"\n")
        self.f.flush()
        return self._read()


class Run:
    def __init__(self, args, tmp, machine, backend, smp=2, extra=()):
        self.args, self.tmp = args, tmp
        self.sock = str(tmp / "be.sock")
        self.state = str(tmp / "state")
        self.be = None
        self.start_backend(backend)
        qmp = str(tmp / "qmp.sock")
        self.qemu = subprocess.Popen(
            [args.qemu, "-M", machine, "-cpu", "max", "-smp", str(smp), "-m", "128M",
             "-nodefaults", "-display", "none", "-serial", "stdio", "-kernel", str(GUEST),
             "-qmp", f"unix:{qmp},server=on,wait=off",
             "-chardev", f"socket,id=be,path={self.sock},reconnect-ms=200",
             "-device", f"smccc-user,chardev=be,fids={FIDS}", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp / "qemu.err", "ab"))
        self.out = Lines(self.qemu.stdout)
        self.qmp = QMP(qmp)

    def start_backend(self, kind):
        self.kind = kind
        log = open(self.tmp / f"{kind}.log", "ab")
        if kind == "sdeid":
            r, w = os.pipe()
            self.be = subprocess.Popen(
                [self.args.sdeid_python, "-m", "sdeid.proto.serve", "--socket-path", self.sock,
                 "--state-file", self.state, "--ready-fd", str(w), "--log-level",
                 os.environ.get("SDEID_LOG", "info")],
                cwd=self.args.repo, pass_fds=(w,), stdout=log, stderr=log)
            os.close(w)
            with os.fdopen(r) as rf:
                assert rf.readline().strip() == "READY", "sdeid did not start"
        else:
            self.be = subprocess.Popen([sys.executable, "-u", str(HERE / "fake_backend.py"),
                                        self.sock, "--delay", "0.3"],
                                       stdout=subprocess.PIPE, stderr=log)
            assert b"listening" in self.be.stdout.readline()

    def send(self, c):
        self.qemu.stdin.write(c.encode())
        self.qemu.stdin.flush()

    def close(self):
        for p in (self.qemu, self.be):
            if p and p.poll() is None:
                if p is self.be:
                    p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()


def version_check(args, tmp, machine, name):
    r = Run(args, tmp, machine, "sdeid")
    try:
        start = r.out.expect("E2E-START", 20)
        v = int(r.out.expect("E2E-VERSION", 20).split()[1], 16)
        ok = v >> 63 == 0 and (v >> 48) & 0x7fff == 1
        report(name, ok, f"{start.split(' ', 1)[1]} x0={v:#x}")
        ser = r.out.expect("E2E-SERIAL", 20)
        par = r.out.expect("E2E-PARALLEL", 20)
        print(f"  (sdeid, 5 calls) {ser} / {par}", flush=True)
        return r
    except Exception:
        r.close()
        raise


def parallel_check(args, tmp):
    r = Run(args, tmp, "virt,gic-version=3", "fake")
    try:
        r.out.expect("E2E-VERSION", 20)
        ser = int(r.out.expect("E2E-SERIAL", 30).split("ms=")[1])
        par = r.out.expect("E2E-PARALLEL", 30)
        c0 = int(par.split("cpu0 ms=")[1].split()[0])
        c1 = int(par.split("cpu1 ms=")[1])
        ok = ser >= 1400 and c0 < 2200 and c1 < 2200 and c0 >= 1400 and c1 >= 1400
        report("parallel", ok, f"one vCPU alone: {ser} ms; together: cpu0 {c0} ms, "
               f"cpu1 {c1} ms (serialized would be ~3000)")
    finally:
        r.close()


def outage_checks(args, tmp, r):
    be = r.be
    r.out.expect("E2E-WAIT 0", 20)
    be.send_signal(signal.SIGSTOP)
    r.send("g")
    r.out.expect("E2E-CALL 0", 10)
    lat = []
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        st = r.qmp.cmd("query-status")
        lat.append((time.monotonic() - t0) * 1000)
        time.sleep(0.1)
    waiting = all(not line.startswith("E2E-RET 0") for line in r.out.all)
    be.send_signal(signal.SIGCONT)
    ret = r.out.expect("E2E-RET 0", 20)
    v = int(ret.split("x0=")[1].split()[0], 16)
    report("sigstop", waiting and st.get("return", {}).get("status") == "running"
           and max(lat) < 500 and (v >> 48) & 0x7fff == 1,
           f"{len(lat)} query-status answered while the call waited, max {max(lat):.1f} ms, "
           f"status {st['return']['status']}; after SIGCONT: {ret}")

    r.out.expect("E2E-WAIT 1", 20)
    be.send_signal(signal.SIGSTOP)
    r.send("g")
    r.out.expect("E2E-CALL 1", 10)
    time.sleep(0.5)
    be.send_signal(signal.SIGKILL)
    be.wait()
    time.sleep(0.5)
    st = r.qmp.cmd("query-status")
    r.start_backend("sdeid")
    ret = r.out.expect("E2E-RET 1", 20)
    v = int(ret.split("x0=")[1].split()[0], 16)
    report("kill9", (v >> 48) & 0x7fff == 1,
           f"QMP while no back-end: {st['return']['status']}; after restart: {ret}")
    r.out.expect("E2E-WAIT 2", 20)
    r.send("q")
    r.out.expect("E2E-DONE", 20)


def migrate_check(args, tmp):
    (tmp / "src").mkdir()
    (tmp / "dst").mkdir()
    a = Run(args, tmp / "src", "virt,gic-version=3", "sdeid")
    b = None
    try:
        a.out.expect("E2E-WAIT 0", 20)
        mig = str(tmp / "mig.sock")
        b = Run(args, tmp / "dst", "virt,gic-version=3", "sdeid",
                extra=("-incoming", f"unix:{mig}"))
        a.qmp.f.write(json.dumps({"execute": "migrate", "arguments": {"uri": f"unix:{mig}"}})
                      .encode() + b"\n")
        a.qmp.f.flush()
        r = a.qmp._read()
        ok = "return" in r
        st = {}
        for _ in range(200):
            st = a.qmp.cmd("query-migrate").get("return", {})
            if st.get("status") in ("completed", "failed"):
                break
            time.sleep(0.05)
        for _ in range(100):
            if b.qmp.cmd("query-status")["return"]["status"] == "running":
                break
            time.sleep(0.05)
        b.send("g")
        ret = b.out.expect("E2E-RET 0", 20)
        v = int(ret.split("x0=")[1].split()[0], 16)
        dlog = (tmp / "dst" / "sdeid.log").read_text()
        loaded = b'["state"' in (tmp / "dst" / "state").read_bytes()
        if os.environ.get("SDEID_LOG"):
            print(dlog[-3000:])
        report("migrate", ok and st.get("status") == "completed" and (v >> 48) & 0x7fff == 1
               and loaded,
               f"{r if not ok else ''}status {st.get('status')} "
               f"in {st.get('total-time')} ms; destination journal has the loaded state: {loaded}; "
               f"{st.get('error-desc', '')}; destination: {ret}; "
               f"destination sdeid errors: {dlog.count('ERROR')}")
    finally:
        a.close()
        if b:
            b.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--repo", default=str(HERE.parents[2]))
    ap.add_argument("--sdeid-python", default=None)
    ap.add_argument("--migrate", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated: version,parallel,migrate")
    args = ap.parse_args()
    args.sdeid_python = args.sdeid_python or str(Path(args.repo) / ".venv/bin/python")
    with tempfile.TemporaryDirectory(prefix="smccc-e2e-") as d:
        tmp = Path(d)
        only = set(args.only.split(",")) if args.only else {"version", "parallel", "migrate"}
        for machine, name in (("virt,gic-version=3,virtualization=on", "version-smc"),
                              ("virt,gic-version=3", "version-hvc")):
            if "version" not in only:
                break
            sub = tmp / name
            sub.mkdir()
            r = version_check(args, sub, machine, name)
            if name == "version-hvc":
                try:
                    outage_checks(args, sub, r)
                finally:
                    r.close()
            else:
                r.send("q")
                r.close()
        if "parallel" in only:
            sub = tmp / "parallel"
            sub.mkdir()
            parallel_check(args, sub)
        if args.migrate and "migrate" in only:
            sub = tmp / "migrate"
            sub.mkdir()
            migrate_check(args, sub)
        print(f"E2E-SUMMARY passed={sum(results)} failed={len(results) - sum(results)}")
        if not all(results):
            for f in sorted(tmp.rglob("*.log")) + sorted(tmp.rglob("*.err")):
                print(f"--- {f}\n{f.read_text()[-3000:]}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
