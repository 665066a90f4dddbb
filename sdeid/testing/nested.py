"""scripts/nested-kvm: run a command inside an arm64 Linux with KVM, on this x86 machine.

    scripts/nested-kvm [--smp N] [--memory SIZE] [--timeout S] [-v] -- COMMAND...

L0 is this machine's patched qemu-system-aarch64 (the one scripts/build-qemu builds)
under TCG with EL2 (`-M virt,virtualization=on,gic-version=3 -cpu max`).  L1 is Debian's
stock arm64 kernel (the one scripts/fetch-guest-assets fetches; it has KVM built in)
booted with an initramfs as its only file system.  In L1:

- /dev/kvm, and the arm64 cross-built QEMU (`scripts/build-qemu --arch arm64`: KVM
  only) as /usr/local/bin/qemu-system-aarch64, which is also $SDEID_QEMU, so that
  `sdeid run` uses it by default;
- Debian's arm64 python3.11 (bookworm's packages, unpacked by scripts/arm64-root) with
  this checkout's `sdeid` package and its two dependencies, and an `sdeid` command;
- busybox for everything else;
- every argument of COMMAND that names an existing host file or directory, at the same
  path (copied in, not shared: what COMMAND writes there stays in L1), and the current
  directory, where COMMAND starts.

COMMAND's stdout is ours (L1's second UART, raw), its stderr is ours (L1's console,
where the kernel may also print), its exit status is ours.  When L1 cannot be built or
does not come up (no KVM in it, a panic), one line on stderr says what failed and the
status is 125 (126/127 keep the shell's meaning: COMMAND not runnable / not found).
124: --timeout.

The L1 root without the per-run files is cached under $SDEID_CACHE/nested (default
~/.cache/sdeid): a run with a warm cache costs the L1 boot (about 5 s) plus COMMAND.
Directories named on the command line are copied whole (minus __pycache__, .git and
.venv), so name what COMMAND needs, not a home directory.

Environment: SDEID_NESTED_L0_QEMU, else SDEID_QEMU, names L0's QEMU (default: what
scripts/build-qemu prints); SDEID_QEMU_ARM64 names L1's (default: what
scripts/build-qemu --arch arm64 prints).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from sdeid.launcher import LaunchError
from sdeid.testing.vm import REPO, find_qemu

PROG = "nested-kvm"
CACHE = Path(os.environ.get("SDEID_CACHE") or Path.home() / ".cache" / "sdeid") / "nested"
EXIT_SETUP = 125
EXIT_TIMEOUT = 124

# L1's userland: what the arm64 QEMU links against, Python for sdeid, busybox.
L1_PACKAGES = ("libglib2.0-0", "libpixman-1-0", "libfdt1", "zlib1g", "python3.11-minimal",
               "libpython3.11-stdlib", "busybox-static")
# Pure-Python packages sdeid needs (pyproject's dependencies), copied from the host's.
PY_DEPS = ("construct", "qemu")
L1_QEMU = "/usr/local/bin/qemu-system-aarch64"
SITE = "usr/lib/python3/dist-packages"
# What the console shows around COMMAND.  Each starts a line of its own.
MARK_START = "@@NESTED-KVM-START@@"
MARK_EXIT = "@@NESTED-KVM-EXIT"
MARK_FAIL = "@@NESTED-KVM-FAIL"

INIT = f"""#!/usr/bin/busybox sh
# L1's init (scripts/nested-kvm): mount, check KVM, run /nested/command, power off.
/usr/bin/busybox mkdir -p /usr/local/sbin
/usr/bin/busybox --install -s /usr/local/sbin
export PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin HOME=/root
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# /tmp and /run stay the initramfs' own (writable already): host files copied in
# under /tmp must not be hidden by a fresh tmpfs.
fail() {{ echo; echo "{MARK_FAIL} $*"; poweroff -f; }}
[ -c /dev/kvm ] || fail "L1 has no /dev/kvm (dmesg: $(dmesg | grep -i kvm | tail -n 1))"
[ -c /dev/ttyAMA1 ] || fail "L1 has no second UART for the command's stdout"
stty -F /dev/ttyAMA1 raw -echo
. /nested/env
cd "$NESTED_CWD" || fail "no directory $NESTED_CWD"
echo; echo "{MARK_START}"
sh /nested/command </dev/null >/dev/ttyAMA1 2>/dev/console
rc=$?
echo; echo "{MARK_EXIT} $rc@@"
poweroff -f
"""


class SetupError(Exception):
    """L1 could not be built or booted; the message is the one line we print."""


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _run_script(argv: Sequence[str], what: str) -> str:
    """A repository script whose last stdout line is its answer."""
    proc = subprocess.run(list(argv), cwd=REPO, stdout=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SetupError(f"{what} failed (status {proc.returncode})")
    return lines[-1]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _needed(elf: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(elf)], capture_output=True, text=True)
    return [ln.split("[", 1)[1].split("]", 1)[0]
            for ln in out.stdout.splitlines() if "(NEEDED)" in ln]


def check_closure(root: Path, binary: Path) -> None:
    """Every library the binary needs, recursively, is in the L1 root: a missing one
    would only show as a failed exec inside L1."""
    libdirs = [root / "usr/lib/aarch64-linux-gnu", root / "usr/lib"]
    seen: set[str] = set()
    todo = [binary]
    while todo:
        for name in _needed(todo.pop()):
            if name in seen:
                continue
            seen.add(name)
            found = next((d / name for d in libdirs if (d / name).exists()), None)
            if found is None:
                raise SetupError(f"{binary.name} needs {name}, which no package of the "
                                 f"L1 root provides (add it to L1_PACKAGES)")
            todo.append(found.resolve())


def _cpio_gz(tree: Path, out: Path) -> None:
    """tree as a newc cpio, gzip -1 (the kernel unpacks it; level made no measurable
    difference to boot time, but -9 costs seconds here)."""
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=tree, check=True,
                           capture_output=True).stdout
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as f:
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=f)
        assert cpio.stdin is not None and cpio.stdout is not None
        cpio.stdout.close()
        cpio.stdin.write(names)
        cpio.stdin.close()
        if cpio.wait() != 0 or gz.wait() != 0:
            raise SetupError(f"packing {out.name} failed")
    tmp.rename(out)


def guest_kernel() -> str:
    """Debian's stock arm64 kernel, as scripts/fetch-guest-assets caches it."""
    proc = subprocess.run([str(REPO / "scripts/fetch-guest-assets")], cwd=REPO,
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    found = dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)
    if proc.returncode != 0 or "KERNEL" not in found:
        raise SetupError(f"scripts/fetch-guest-assets failed (status {proc.returncode})")
    return found["KERNEL"]


def base_initrd(l1_qemu: Path) -> Path:
    """The cached part of L1's initramfs: the arm64 root, the QEMU binary, init."""
    root = Path(_run_script([str(REPO / "scripts/arm64-root"), "nested-l1", *L1_PACKAGES],
                            "scripts/arm64-root"))
    check_closure(root, l1_qemu)
    key = hashlib.sha256("\n".join([
        _sha(root / "packages"), _sha(l1_qemu), INIT, _sha(Path(__file__)),
    ]).encode()).hexdigest()[:16]
    out = CACHE / f"base-{key}.cpio.gz"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    log("packing the L1 root (once per QEMU build)")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        stage = Path(tmp) / "root"
        shutil.copytree(root, stage, symlinks=True)
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale",
                     "usr/share/lintian", "packages"):
            p = stage / junk
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        (stage / "usr/local/bin").mkdir(parents=True, exist_ok=True)
        qemu = stage / L1_QEMU.lstrip("/")
        subprocess.run(["aarch64-linux-gnu-strip", "-o", str(qemu), str(l1_qemu)],
                       check=True)
        py = stage / "usr/bin/python3"
        if not py.exists():
            py.symlink_to("python3.11")
        init = stage / "init"
        init.write_text(INIT)
        init.chmod(0o755)
        _cpio_gz(stage, out)
    for old in CACHE.glob("base-*.cpio.gz"):
        if old != out:
            old.unlink()
    return out


def _copy_in(src: Path, stage: Path) -> None:
    dst = stage / str(src.resolve()).lstrip("/")
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", ".git", ".venv"))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def host_paths(command: Sequence[str]) -> list[Path]:
    """The arguments of COMMAND that name an existing host file or directory, and the
    files named after a `--opt=` (as in `--kernel=/path`)."""
    found = []
    for arg in command:
        cand = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if not cand or cand in ("/", ".") or "\0" in cand:
            continue
        p = Path(cand)
        try:
            if p.exists() and (p.is_file() or p.is_dir()):
                found.append(p)
        except OSError:
            continue
    return found


def run_initrd(command: Sequence[str], cwd: Path, workdir: Path) -> Path:
    """The per-run part: sdeid and its dependencies as this checkout has them, the
    command, and the host files it names."""
    import construct
    import qemu.qmp

    stage = workdir / "run"
    site = stage / SITE
    site.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "sdeid", site / "sdeid", ignore=ignore)
    shutil.copytree(Path(construct.__file__).parent, site / "construct", ignore=ignore)
    shutil.copytree(Path(qemu.qmp.__file__).parent.parent, site / "qemu", ignore=ignore)
    bin_dir = stage / "usr/local/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "sdeid").write_text(
        "#!/usr/bin/python3\nimport sys\nfrom sdeid.cli import main\nsys.exit(main())\n")
    (bin_dir / "sdeid").chmod(0o755)
    for p in host_paths(command):
        _copy_in(p, stage)
    (stage / str(cwd).lstrip("/")).mkdir(parents=True, exist_ok=True)
    nested = stage / "nested"
    nested.mkdir()
    (nested / "command").write_text("exec " + shlex.join(command) + "\n")
    (nested / "env").write_text(
        f"export SDEID_QEMU={L1_QEMU} NESTED_CWD={shlex.quote(str(cwd))} "
        "PYTHONDONTWRITEBYTECODE=1 SDEID_IN_NESTED_KVM=1\n")
    out = workdir / "run.cpio.gz"
    _cpio_gz(stage, out)
    return out


def _pump(fifo: str, sink: IO[bytes]) -> None:
    """Copy the FIFO to sink until its last writer (QEMU) is gone.  Opened here, not
    before QEMU starts: a FIFO nobody has opened for writing reads as EOF at once,
    while this open waits for QEMU's."""
    with open(fifo, "rb", buffering=0) as stream:
        for block in iter(lambda: stream.read(65536), b""):
            sink.write(block)
            sink.flush()


class Console:
    """L1's console: boot noise kept for a failure message (shown with -v), COMMAND's
    stderr passed on, the exit marker parsed."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.boot: list[str] = []
        self.started = False
        self.status: int | None = None
        self.failure: str | None = None
        self.t_start: float | None = None

    def feed(self, line: str) -> None:
        text = line.rstrip("\r\n")
        if text.startswith(MARK_START):
            self.started = True
            self.t_start = time.monotonic()
            return
        if text.startswith(MARK_EXIT):
            self.status = int(text[len(MARK_EXIT):].strip(" @"))
            return
        if text.startswith(MARK_FAIL):
            self.failure = text[len(MARK_FAIL):].strip()
            return
        if self.status is not None:
            return                  # the kernel's "reboot: Power down"
        if self.started:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        else:
            self.boot.append(text)
            if self.verbose:
                sys.stderr.write(f"[L1] {text}\n")
                sys.stderr.flush()


def run(command: Sequence[str], *, smp: int = 1, memory: str = "2G",
        timeout: float | None = None, verbose: bool = False,
        l0_qemu: str | None = None, l1_qemu: str | None = None,
        stdout: IO[bytes] | None = None) -> int:
    t0 = time.monotonic()
    try:
        l0 = l0_qemu or find_qemu(os.environ.get("SDEID_NESTED_L0_QEMU"))
    except LaunchError as e:
        raise SetupError(f"no L0 QEMU: {e.reason}") from e
    l1 = Path(l1_qemu or os.environ.get("SDEID_QEMU_ARM64") or _run_script(
        [str(REPO / "scripts/build-qemu"), "--arch", "arm64"],
        "scripts/build-qemu --arch arm64"))
    if not (l1.is_file() and os.access(l1, os.X_OK)):
        raise SetupError(f"the arm64 QEMU {l1} is not an executable file")
    kernel = guest_kernel()
    if not kernel:
        raise SetupError("scripts/fetch-guest-assets named no KERNEL")
    base = base_initrd(l1)
    with tempfile.TemporaryDirectory(prefix="nested-kvm-") as tmp:
        work = Path(tmp)
        initrd = work / "initrd.gz"
        with initrd.open("wb") as f:
            for part in (base, run_initrd(command, Path.cwd(), work)):
                with part.open("rb") as p:
                    shutil.copyfileobj(p, f)
        # pipe:PATH uses PATH.in and PATH.out when both exist; a single PATH would be
        # opened read-write, and QEMU would read its own output back as UART input.
        fifo = work / "stdout"
        for end in ("in", "out"):
            os.mkfifo(f"{fifo}.{end}")
        argv = [
            l0, "-M", "virt,virtualization=on,gic-version=3", "-cpu", "max",
            "-smp", str(smp), "-m", memory, "-nodefaults", "-display", "none",
            "-no-reboot", "-serial", "stdio", "-serial", f"pipe:{fifo}",
            "-kernel", kernel, "-initrd", str(initrd),
            "-append", "console=ttyAMA0 quiet loglevel=3 panic=-1",
        ]
        if verbose:
            log(f"setup took {time.monotonic() - t0:.1f} s; L0: {shlex.join(argv)}")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        out = stdout or sys.stdout.buffer
        pump = threading.Thread(target=_pump, args=(f"{fifo}.out", out), daemon=True)
        pump.start()
        console = Console(verbose)
        assert proc.stdout is not None and proc.stderr is not None
        err_lines: list[str] = []
        err_t = threading.Thread(target=lambda: err_lines.extend(
            ln.decode(errors="replace").rstrip() for ln in proc.stderr  # type: ignore
        ), daemon=True)
        err_t.start()
        timer = None
        timed_out = threading.Event()
        if timeout is not None:
            def expire() -> None:
                timed_out.set()
                proc.kill()
            timer = threading.Timer(timeout, expire)
            timer.start()
        try:
            for raw in proc.stdout:
                console.feed(raw.decode(errors="replace"))
            proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
        # QEMU is gone, so is the FIFO's last writer: the pump sees EOF.  Had
        # QEMU died before opening it, the pump still waits in open(): be the
        # writer it waits for.
        try:
            os.close(os.open(f"{fifo}.out", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass                # ENXIO: no reader waiting, it is reading or done
        pump.join(timeout=10)
        err_t.join(timeout=10)
    if timed_out.is_set():
        log(f"timed out after {timeout:g} s")
        return EXIT_TIMEOUT
    if console.failure:
        raise SetupError(console.failure)
    if console.status is None:
        tail = "; ".join([*console.boot[-3:], *err_lines[-2:]])
        what = "L1 stopped while COMMAND ran" if console.started else "L1 did not boot"
        raise SetupError(f"{what} (L0 QEMU status {proc.returncode}): {tail}")
    if verbose and console.t_start is not None:
        log(f"L1 up in {console.t_start - t0:.1f} s; COMMAND exited "
            f"{console.status} after {time.monotonic() - console.t_start:.1f} s")
    return console.status


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="Run COMMAND inside an arm64 Linux with KVM (L1), booted "
        "under this machine's QEMU with EL2.  sdeid and the arm64 patched QEMU are on "
        "L1's PATH and are `sdeid run`'s defaults there.",
        epilog="Exit status: COMMAND's; 125 when L1 cannot be built or booted (one line "
        "says why); 124 on --timeout.")
    ap.add_argument("--smp", type=int, default=1, metavar="N",
                    help="L1's CPUs (default 1: faster than 2 on a 2-core machine)")
    ap.add_argument("--memory", default="2G", metavar="SIZE", help="L1's RAM (default 2G)")
    ap.add_argument("--timeout", type=float, metavar="SECONDS", help="kill L1 after SECONDS")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show L1's boot console and timings on stderr")
    ap.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    return ap


def main(argv: Iterable[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        ap.error("no COMMAND (scripts/nested-kvm -- COMMAND...)")
    if args.smp < 1:
        ap.error("--smp must be at least 1")
    try:
        return run(command, smp=args.smp, memory=args.memory, timeout=args.timeout,
                   verbose=args.verbose)
    except SetupError as e:
        log(f"error: {e}")
        return EXIT_SETUP
    except (OSError, subprocess.CalledProcessError) as e:
        log(f"error: setting up L1 failed: {e}")
        return EXIT_SETUP
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
