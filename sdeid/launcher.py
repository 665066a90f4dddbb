"""`sdeid run`: start sdeid and QEMU wired together, and tear both down.

    sdeid run [--smp N] [--memory SIZE] [--conduit hvc|smc] [--accel kvm|tcg]
              [--firmware dt|uefi] [--uefi-firmware CODE VARS]
              [--qemu PATH] [--sdeid-arg ARG]... [--sdei-device-props PROPS]
              [--agdi-event N] [--monitor PATH] [--keep-dir DIR]
              [--timeout SECONDS] -- QEMU-ARGS...

The daemon starts first and proves it listens (READY on a pipe, never a
sleep); then QEMU starts with an `smccc-user` device on the daemon's socket
(protocol 2, qemu-patches/v2) and a QMP monitor reserved for the daemon's
lifecycle hooks.  The guest's serial console is this program's stdout.
SIGINT/SIGTERM are forwarded to QEMU; whatever happens, both processes are
gone when this returns.

Exit status: 0 when QEMU exits 0 (the guest powered off), QEMU's status when
it fails, 1 when the daemon fails, 3 when nothing could be started, 126/127
when QEMU cannot be executed, 124 on --timeout, 128+N after signal N; every
non-zero status comes with a one-line reason on stderr.

This module is the product: command line, supervision, the CLI.  It finds
QEMU and the UEFI firmware where an installation puts them and never builds
anything; the test harness (console capture, fault injection, QMP clients,
building QEMU from the repository) is sdeid.testing.vm.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from sdeid.errors import SdeidError

PROG = "sdeid run"
# Where the daemon's package lives: the daemon subprocess imports the same
# copy of sdeid as this process, however it was loaded.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
AAVMF_DIR = Path("/usr/share/AAVMF")      # Debian's qemu-efi-aarch64
QEMU_NAME = "qemu-system-aarch64"
SUN_PATH_MAX = 107          # sockaddr_un.sun_path, less the NUL

# Exit statuses of `sdeid run`, by whose failure it is (QEMU's own status
# when QEMU ran and failed).
EXIT_DAEMON = 1         # sdeid failed: before it was ready, or under a running VM
EXIT_SETUP = 3          # nothing started: no QEMU to run, firmware, paths
EXIT_TIMEOUT = 124
EXIT_QEMU_CANNOT_RUN = 126   # QEMU could not be executed (127: no such file), as a shell says


class LaunchError(SdeidError):
    """The VM or the daemon could not be started or failed while running.

    Carries what an operator needs to see why: whose failure it is (`who`:
    "sdeid", "qemu" or "setup"), the command lines, exit statuses and the
    tail of each process's log."""

    def __init__(self, reason: str, *, exit_code: int | None = None,
                 command: Sequence[str] | None = None, output: str = "",
                 who: str = "sdeid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.who = who
        self.exit_code = exit_code
        self.command = list(command) if command is not None else None
        self.output = output

    def __str__(self) -> str:
        text = self.reason
        if self.command is not None:
            text += "\n  command: " + " ".join(self.command)
        if self.output:
            text += "\n  output:\n" + "\n".join("    " + ln for ln in self.output.splitlines())
        return text


# ------------------------------------------------------------------ helpers

# The variables that name the patched QEMU, first set wins (SDEID_QEMU_V2
# from when there were two protocols).
QEMU_VARIABLES = ("SDEID_QEMU", "SDEID_QEMU_V2")
# The device protocol: 2 is the only one.  `protocol=` is still accepted so
# callers written when there were two keep working.
DEFAULT_PROTOCOL = 2
# Protocol 2's device forwards the SMCCC ranges it is told: SDEI's SMC64
# range and its SMC32 twin (the daemon answers the latter NOT_SUPPORTED).
SDEI_FIDS = "0xc4000020-0xc400003f,0x84000020-0x8400003f"


def env_bin() -> Path:
    """The bin directory of the Python environment this sdeid runs in."""
    return Path(sysconfig.get_path("scripts"))


def has_smccc_user(qemu: str) -> bool:
    """Whether `qemu` has the series' device.  QEMU answers `-device X,help`
    with status 0 whether or not X exists, so the listing is the answer."""
    try:
        proc = subprocess.run([qemu, "-device", "smccc-user,help"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "smccc-user options" in proc.stdout


def named_qemu(explicit: str | None = None, protocol: int = DEFAULT_PROTOCOL) -> str | None:
    """The QEMU the caller named: `explicit`, else $SDEID_QEMU (or the older
    $SDEID_QEMU_V2); None when neither names one."""
    if protocol != DEFAULT_PROTOCOL:
        raise ValueError(f"protocol must be {DEFAULT_PROTOCOL}, not {protocol!r}")
    if explicit:
        return explicit
    return next((os.environ[v] for v in QEMU_VARIABLES if os.environ.get(v)), None)


def find_qemu(explicit: str | None = None, protocol: int = DEFAULT_PROTOCOL) -> str:
    """The patched QEMU: named_qemu(), else a qemu-system-aarch64 with the
    smccc-user device next to this Python (the environment sdeid is
    installed in; the repository's scripts/build-qemu links its build into
    .venv/bin), else on PATH.  Nothing is built here."""
    named = named_qemu(explicit, protocol)
    if named:
        return named
    candidates: list[str] = []
    beside = env_bin() / QEMU_NAME
    if beside.is_file():
        candidates.append(str(beside))
    on_path = shutil.which(QEMU_NAME)
    if on_path and on_path not in candidates:
        candidates.append(on_path)
    for qemu in candidates:
        if has_smccc_user(qemu):
            return qemu
    found = (f" ({', '.join(candidates)} has no smccc-user device)" if candidates else "")
    raise LaunchError(f"no patched QEMU found{found}: pass --qemu PATH or set SDEID_QEMU "
                      "(the sdeid repository's scripts/build-qemu builds one with "
                      "qemu-patches/v2)", who="setup")


ACCELS = ("kvm", "tcg")


def default_accel() -> str:
    """kvm on an arm64 host that offers /dev/kvm, else tcg (an x86 host cannot run an
    arm64 guest on KVM; scripts/nested-kvm is the way to try KVM there)."""
    if os.uname().machine == "aarch64" and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm"
    return "tcg"


def find_aavmf() -> tuple[Path, Path]:
    """The UEFI firmware pair where Debian's qemu-efi-aarch64 installs it."""
    code, vars_ = AAVMF_DIR / "AAVMF_CODE.fd", AAVMF_DIR / "AAVMF_VARS.fd"
    for f in (code, vars_):
        if not f.is_file():
            raise LaunchError(f"UEFI firmware {f} not found (apt-get install qemu-efi-aarch64, "
                              "or --uefi-firmware CODE VARS)", who="setup")
    return code, vars_


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM if we die without
    tearing it down (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def setup() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    return setup


def _pidfd(proc: subprocess.Popen[Any]) -> int | None:
    try:
        return os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------- Launch

class Launch:
    """sdeid plus QEMU, wired together; a context manager that always tears
    both down (QEMU first: SIGTERM, then SIGKILL after `kill_grace`; then the
    daemon, which normally exits with the VM by itself).

    Both processes inherit this one's stdin, stdout and stderr: the guest's
    serial console is our stdout.  sdeid.testing.vm.VM captures them
    instead, through the `_qemu_stdio`/`_daemon_stderr`/`_qemu_started`
    hooks."""

    def __init__(self, qemu_args: Sequence[str] = (), *, qemu: str | None = None,
                 smp: int = 2, memory: str = "1G", conduit: str = "hvc",
                 firmware: str = "dt", sdeid_args: Sequence[str] = (),
                 device_props: str = "", protocol: int = DEFAULT_PROTOCOL,
                 keep_dir: str | Path | None = None,
                 ready_timeout: float = 30.0,
                 kill_grace: float = 5.0, daemon_grace: float = 2.0,
                 monitor: str | Path | None = None, accel: str | None = None,
                 reboot: bool = False,
                 aavmf: tuple[str | Path, str | Path] | None = None,
                 agdi_event: int | None = None) -> None:
        if conduit not in ("hvc", "smc"):
            raise ValueError(f"conduit must be 'hvc' or 'smc', not {conduit!r}")
        accel = accel or default_accel()
        if accel not in ACCELS:
            raise ValueError(f"accel must be one of {ACCELS}, not {accel!r}")
        if accel == "kvm" and conduit == "smc":
            # QEMU describes SMC only when it emulates EL2, which KVM guests do not
            # have; KVM still takes SMCCC calls on both conduits, so a guest may use SMC
            # on its own account.
            raise ValueError("under KVM the firmware conduit is HVC (there is no EL2 to "
                             "emulate); a guest may still call with SMC on its own")
        self.accel = accel
        # reboot=True: a guest reboot resets the VM (QEMU's default) instead of
        # ending it (-no-reboot, what tests and `sdeid run` want otherwise).
        self.reboot = reboot
        # firmware="uefi": (code, vars) instead of find_aavmf()'s pair
        self.aavmf = (Path(aavmf[0]), Path(aavmf[1])) if aavmf else None
        if firmware not in ("dt", "uefi"):
            raise ValueError(f"firmware must be 'dt' or 'uefi', not {firmware!r}")
        if smp < 1:
            raise ValueError("smp must be at least 1")
        if agdi_event is not None and (firmware != "uefi" or not 0 < agdi_event < 1 << 32):
            raise ValueError("agdi_event needs firmware='uefi' and an SDEI event number")
        # firmware="uefi": an ACPI AGDI table naming this SDEI event, on which a
        # kernel with CONFIG_ACPI_AGDI panics (nmi_panic)
        self.agdi_event = agdi_event
        if protocol != DEFAULT_PROTOCOL:
            raise ValueError(f"protocol must be {DEFAULT_PROTOCOL}, not {protocol!r}")
        self.protocol = protocol
        self.qemu_args = list(qemu_args)
        self.qemu = qemu
        self.smp = smp
        self.memory = memory
        self.conduit = conduit
        self.firmware = firmware
        self.sdeid_args = list(sdeid_args)
        # extra properties of the smccc-user device, e.g. "ghes-event=100" (a
        # HEST error source notified by that SDEI event; needs firmware="uefi")
        self.device_props = device_props.strip(",")
        self.keep_dir = Path(keep_dir) if keep_dir is not None else None
        self.ready_timeout = ready_timeout
        self.kill_grace = kill_grace
        self.daemon_grace = daemon_grace
        # QEMU's own QMP monitor for the operator (inject-nmi, ...): at
        # `monitor`, else monitor.sock in the working directory.
        self.monitor = Path(monitor) if monitor is not None else None

        self.workdir: Path | None = None
        self.daemon_proc: subprocess.Popen[bytes] | None = None
        self.qemu_proc: subprocess.Popen[bytes] | None = None
        self.daemon_command: list[str] = []
        self.qemu_command: list[str] = []
        self._daemon_exit_seen: float | None = None
        self._qmp_listener: socket.socket | None = None
        self._mon_listener: socket.socket | None = None

    # ----------------------------------------------------------- paths

    def _path(self, name: str) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / name

    @property
    def socket_path(self) -> Path:
        return self._path("sdei.sock")

    @property
    def control_path(self) -> Path:
        return self._path("control.sock")

    @property
    def qmp_path(self) -> Path:
        return self._path("qmp.sock")

    @property
    def monitor_path(self) -> Path:
        """QEMU's QMP monitor for the operator (not the daemon's hooks)."""
        return self.monitor if self.monitor is not None else self._path("monitor.sock")

    # ----------------------------------------- what a harness may change

    def _find_qemu(self) -> str:
        return find_qemu(self.qemu, self.protocol)

    def _find_aavmf(self) -> tuple[Path, Path]:
        return self.aavmf or find_aavmf()

    def _daemon_stderr(self) -> Any:
        """Where the daemon's stdout and stderr go (None: ours)."""
        return None

    def _qemu_stdio(self) -> tuple[Any, Any, Any]:
        """QEMU's stdin, stdout and stderr (None: ours)."""
        return None, None, None

    def _qemu_started(self) -> None:
        """Called once QEMU runs."""

    def _daemon_tail(self) -> str:
        """The end of the daemon's log, for LaunchError (ours is the terminal)."""
        return ""

    def _closed(self) -> None:
        """Called at the end of shutdown(), both processes gone."""

    # --------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def start(self) -> None:
        """Start the daemon, wait for READY, start QEMU.  On any failure both
        are torn down and LaunchError says why."""
        try:
            self._start()
        except BaseException:
            self.shutdown()
            raise

    def _start(self) -> None:
        if self.keep_dir is not None:
            self.keep_dir.mkdir(parents=True, exist_ok=True)
            self.workdir = self.keep_dir.resolve()
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="sdeid-run-"))
        if len(str(self.control_path)) > SUN_PATH_MAX:
            raise LaunchError(f"working directory {self.workdir} is too long for "
                              "Unix socket paths", who="setup")
        qemu = self._find_qemu()
        # The monitor reserved for the daemon listens before either process
        # starts and QEMU inherits it: the daemon's QMP connect cannot race
        # QEMU's start (it is queued until QEMU accepts).
        if self.qmp_path.is_socket():
            self.qmp_path.unlink()          # left by an earlier run in keep_dir
        self._qmp_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._qmp_listener.bind(str(self.qmp_path))
        self._qmp_listener.listen(1)
        # The operator's monitor listens before QEMU starts too, so the
        # path printed is usable at once (connections queue until QEMU).
        mon = self.monitor_path
        if len(str(mon)) > SUN_PATH_MAX:
            raise LaunchError(f"monitor path {mon} is too long for a Unix socket", who="setup")
        if mon.exists() or mon.is_symlink():
            if not mon.is_socket():
                raise LaunchError(f"monitor path {mon} exists and is not a socket", who="setup")
            mon.unlink()
        self._mon_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._mon_listener.bind(str(mon))
        except OSError as e:
            raise LaunchError(f"cannot listen on {mon}: {e.strerror}", who="setup") from e
        finally:
            os.umask(old_umask)
        self._mon_listener.listen(1)
        self._start_daemon()
        self.qemu_command = [qemu, *self._qemu_argv()]
        self._start_qemu()

    def _start_daemon(self) -> None:
        rfd, wfd = os.pipe()
        self.daemon_command = [
            sys.executable, "-m", "sdeid",
            "--socket-path", str(self.socket_path),
            "--control-socket", str(self.control_path),
            "--qmp", str(self.qmp_path),
            "--exit-with-vm", "--ready-fd", str(wfd),
            *self.sdeid_args]
        out = self._daemon_stderr()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            self.daemon_proc = subprocess.Popen(
                self.daemon_command, stdin=subprocess.DEVNULL, stdout=out,
                stderr=out, pass_fds=(wfd,), env=env,
                # Its own session: a terminal's ^C goes to QEMU (which we
                # wait for), not to the daemon, which exits with the VM.
                start_new_session=True, preexec_fn=_pdeathsig())
        finally:
            os.close(wfd)
        try:
            self._wait_ready(rfd)
        finally:
            os.close(rfd)

    def _wait_ready(self, rfd: int) -> None:
        """READY on the pipe is the proof; EOF without it means the daemon
        died (or closed the fd) first."""
        assert self.daemon_proc is not None
        deadline = time.monotonic() + self.ready_timeout
        data = b""
        with selectors.DefaultSelector() as sel:
            sel.register(rfd, selectors.EVENT_READ)
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise LaunchError(f"sdeid not ready after {self.ready_timeout:g} s",
                                      command=self.daemon_command, output=self._daemon_tail())
                chunk = os.read(rfd, 64)
                if not chunk:
                    break
                data += chunk
        if data.strip() != b"READY":
            try:
                code = self.daemon_proc.wait(timeout=self.kill_grace)
            except subprocess.TimeoutExpired:
                code = None
            raise LaunchError(
                f"sdeid exited with status {code} before it was ready" if code is not None
                else f"sdeid closed its ready pipe without READY ({data!r})",
                exit_code=code, command=self.daemon_command, output=self._daemon_tail())

    def _device(self) -> str:
        # ',,' is a literal comma inside a -device option value.
        return f"smccc-user,chardev=sdei0,fids={SDEI_FIDS.replace(',', ',,')}"

    def _qemu_argv(self) -> list[str]:
        assert self._qmp_listener is not None
        machine = "virt,gic-version=3"
        cpu = ["-cpu", "max"]
        if self.accel == "kvm":
            # The in-kernel GICv3 (KVM's default for gic-version=3) and the host's CPU.
            cpu = ["-accel", "kvm", "-cpu", "host"]
        if self.conduit == "smc":
            machine += ",virtualization=on"   # QEMU's PSCI (and so SDEI) conduit is SMC then
        if self.firmware == "uefi":
            machine += ",ras=on"
        argv = [
            "-M", machine, *cpu, "-smp", str(self.smp), "-m", self.memory,
            "-nodefaults", "-display", "none", "-serial", "stdio",
            "-chardev", f"socket,id=sdei0,path={self.socket_path},reconnect-ms=1000",
            "-device", self._device()
            + (f",{self.device_props}" if self.device_props else ""),
            "-chardev", f"socket,id=qmp0,fd={self._qmp_listener.fileno()},server=on,wait=off",
            "-mon", "chardev=qmp0,mode=control",
        ]
        if self._mon_listener is not None:
            argv += ["-chardev",
                     f"socket,id=mon1,fd={self._mon_listener.fileno()},server=on,wait=off",
                     "-mon", "chardev=mon1,mode=control"]
        if not self.reboot:
            argv.append("-no-reboot")     # a guest reboot ends the VM
        if self.firmware == "uefi":
            code, vars_ = self._find_aavmf()
            if not code.is_file():
                raise LaunchError(f"UEFI firmware {code} not found", who="setup")
            vars_copy = self._path("AAVMF_VARS.fd")
            try:
                shutil.copyfile(vars_, vars_copy)
            except OSError as e:
                raise LaunchError(f"cannot copy the UEFI variables {vars_}: {e.strerror}",
                                  who="setup") from e
            argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={code}",
                     "-drive", f"if=pflash,format=raw,file={vars_copy}"]
            argv += acpi_tables(self._path("agdi.bin"), self.agdi_event)
        return argv + self.qemu_args

    def _start_qemu(self) -> None:
        stdin, stdout, stderr = self._qemu_stdio()
        assert self._qmp_listener is not None
        try:
            self.qemu_proc = subprocess.Popen(
                self.qemu_command, stdin=stdin, stdout=stdout, stderr=stderr,
                pass_fds=(self._qmp_listener.fileno(),
                          *(() if self._mon_listener is None
                            else (self._mon_listener.fileno(),))),
                preexec_fn=_pdeathsig())
        except OSError as e:
            raise LaunchError(f"cannot start QEMU: {e.strerror}", command=self.qemu_command,
                              exit_code=127 if e.errno == errno.ENOENT else 126,
                              who="qemu") from e
        finally:
            self._qmp_listener.close()      # QEMU has its own copy now
            if self._mon_listener is not None:
                self._mon_listener.close()
        self._qemu_started()

    # -------------------------------------------------------------- wait

    def wait(self, timeout: float | None = None) -> int:
        """Wait for QEMU to exit and return its status.  Raises TimeoutError
        after `timeout`, and LaunchError when the daemon exits with a failure
        while QEMU runs (or exits cleanly and QEMU does not follow within
        `kill_grace`).  Tears nothing down: the context manager does."""
        q, d = self.qemu_proc, self.daemon_proc
        if q is None or d is None:
            raise RuntimeError("not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        qfd, dfd = _pidfd(q), _pidfd(d)
        try:
            with selectors.DefaultSelector() as sel:
                for fd in (qfd, dfd):
                    if fd is not None:
                        sel.register(fd, selectors.EVENT_READ)
                while True:
                    code = q.poll()
                    if code is not None:
                        return code
                    limit = deadline
                    dcode = d.poll()
                    if dcode is not None:
                        if dcode != 0:
                            raise LaunchError(
                                f"sdeid exited with status {dcode} while the VM was running",
                                exit_code=dcode, command=self.daemon_command,
                                output=self._daemon_tail())
                        # --exit-with-vm: it leaves on SHUTDOWN, just before QEMU.
                        now = time.monotonic()
                        if self._daemon_exit_seen is None:
                            self._daemon_exit_seen = now
                        if dfd is not None:
                            sel.unregister(dfd)
                            os.close(dfd)
                            dfd = None
                        grace_end = self._daemon_exit_seen + self.kill_grace
                        if now >= grace_end:
                            raise LaunchError("sdeid exited while the VM was still running",
                                              exit_code=dcode, command=self.daemon_command,
                                              output=self._daemon_tail())
                        limit = grace_end if limit is None else min(limit, grace_end)
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(f"the VM still runs after {timeout:g} s")
                    step = None if limit is None else max(0.0, limit - time.monotonic())
                    if qfd is None or (dfd is None and dcode is None):
                        step = 0.05 if step is None else min(step, 0.05)   # no pidfd: poll
                    sel.select(step)
        finally:
            for fd in (qfd, dfd):
                if fd is not None:
                    os.close(fd)

    # ---------------------------------------------------------- teardown

    def send_signal(self, signum: int) -> None:
        """Forward a signal to QEMU (if it runs)."""
        if self.qemu_proc is not None and self.qemu_proc.poll() is None:
            self.qemu_proc.send_signal(signum)

    @staticmethod
    def _stop(proc: subprocess.Popen[Any] | None, grace: float, own_grace: float = 0.0) -> None:
        """Let `proc` exit on its own for `own_grace`, then SIGTERM, then
        SIGKILL after `grace`; always reaped."""
        if proc is None:
            return
        if proc.poll() is None and own_grace > 0:
            try:
                proc.wait(timeout=own_grace)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        proc.wait()

    def shutdown(self) -> None:
        """Tear down QEMU, then the daemon; remove the working directory
        unless it was given with keep_dir.  Idempotent."""
        if self._qmp_listener is not None:
            self._qmp_listener.close()
        if self._mon_listener is not None:
            self._mon_listener.close()
        try:
            self._stop(self.qemu_proc, self.kill_grace)
        finally:
            try:
                self._stop(self.daemon_proc, self.kill_grace, own_grace=self.daemon_grace)
            finally:
                self._closed()
                if self.monitor is not None and self._mon_listener is not None:
                    try:
                        if self.monitor.is_socket():
                            self.monitor.unlink()
                    except OSError:
                        pass
                if self.workdir is not None and self.keep_dir is None:
                    shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, description="Start sdeid and QEMU wired together; the guest console "
        "is stdout.  Everything after `--` is passed to QEMU.",
        epilog="Daemon options take the `=` form: --sdeid-arg=--event=100:shared:critical. "
        "Exit status: 0 when the guest powers off, QEMU's status when it fails, 1 when "
        "sdeid fails, 3 when nothing could be started (no QEMU, firmware, paths), 126 "
        "(127: not found) when QEMU cannot be executed, 124 on --timeout, 128+N after "
        "signal N.")
    ap.add_argument("--smp", type=int, default=2, metavar="N", help="CPUs (default 2)")
    ap.add_argument("--memory", default="1G", metavar="SIZE", help="RAM (default 1G)")
    ap.add_argument("--conduit", choices=["hvc", "smc"], default="hvc",
                    help="SDEI/PSCI conduit; smc emulates EL2 (virtualization=on)")
    ap.add_argument("--accel", choices=list(ACCELS),
                    help="kvm (-accel kvm -cpu host, the in-kernel GICv3) or tcg; default: "
                    "kvm on an arm64 host with /dev/kvm, else tcg")
    ap.add_argument("--firmware", choices=["dt", "uefi"], default="dt",
                    help="dt: direct kernel boot with a device tree; uefi: AAVMF + ACPI "
                    "(ras=on)")
    ap.add_argument("--uefi-firmware", nargs=2, type=Path, metavar=("CODE", "VARS"),
                    help="with --firmware uefi: the firmware and its pristine variable store "
                    "(copied before use); default: Debian's /usr/share/AAVMF pair")
    ap.add_argument("--protocol", type=int, choices=[2], default=2,
                    help="the device protocol: 2, the only one (the smccc-user device of "
                    "qemu-patches/v2); accepted for scripts written when there were two")
    ap.add_argument("--qemu", metavar="PATH",
                    help="the patched qemu-system-aarch64 (default: $SDEID_QEMU, else one "
                    "with the smccc-user device next to this Python or on PATH; the "
                    "repository's scripts/build-qemu builds one and links it into .venv/bin)")
    ap.add_argument("--sdeid-arg", action="append", default=[], metavar="ARG",
                    help="pass ARG to the daemon (repeatable)")
    ap.add_argument("--sdei-device-props", default="", metavar="PROPS",
                    help="extra properties of the smccc-user device, e.g. ghes-event=100 "
                    "(with --firmware uefi: a HEST error source notified by that event)")
    ap.add_argument("--agdi-event", type=int, metavar="N",
                    help="with --firmware uefi: an ACPI AGDI table naming SDEI event N, "
                    "which a kernel with CONFIG_ACPI_AGDI registers and panics on (an NMI "
                    "for such kernels: --sdeid-arg=--nmi-event=N)")
    ap.add_argument("--monitor", type=Path, metavar="PATH",
                    help="QEMU's own QMP monitor for the operator at PATH (inject-nmi and "
                    "other QEMU commands); default: monitor.sock in the working directory")
    ap.add_argument("--keep-dir", type=Path, metavar="DIR",
                    help="put the sockets (and firmware variables) in DIR and keep it")
    ap.add_argument("--timeout", type=float, metavar="SECONDS",
                    help="stop the VM and fail after SECONDS")
    return ap


def acpi_tables(agdi_path: Path, agdi_event: int | None) -> list[str]:
    """QEMU options for the ACPI tables an SDEI dispatcher's firmware would
    provide and the virt machine does not build (qemu-patches/v2 0013): the
    SDEI table, a header only; with `agdi_event`, Arm's AGDI table (ACPI for
    Arm Components 1.x: flags, 0 = signalled by SDEI; 3 reserved bytes; the
    SDEI event; the GSIV, unused), written to `agdi_path`."""
    out = ["-acpitable", "sig=SDEI,rev=1,data=/dev/null"]
    if agdi_event is not None:
        agdi_path.write_bytes(struct.pack("<B3xII", 0, agdi_event, 0))
        out += ["-acpitable", f"sig=AGDI,rev=1,data={agdi_path}"]
    return out


class _Interrupted(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" in argv:
        cut = argv.index("--")
        ours, qemu_args = argv[:cut], argv[cut + 1:]
    else:
        ours, qemu_args = argv, []
    args = build_parser().parse_args(ours)
    if args.smp < 1:
        build_parser().error("--smp must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        build_parser().error("--timeout must be positive")
    if args.uefi_firmware and args.firmware != "uefi":
        build_parser().error("--uefi-firmware needs --firmware uefi")

    try:
        launch = Launch(qemu_args, qemu=args.qemu, smp=args.smp, memory=args.memory,
                        conduit=args.conduit, firmware=args.firmware,
                        sdeid_args=args.sdeid_arg, device_props=args.sdei_device_props,
                        protocol=args.protocol, keep_dir=args.keep_dir,
                        monitor=args.monitor, accel=args.accel,
                        agdi_event=args.agdi_event,
                        aavmf=tuple(args.uefi_firmware) if args.uefi_firmware else None)
    except ValueError as e:
        build_parser().error(str(e))
    got: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        got.append(signum)
        if launch.qemu_proc is None:
            raise _Interrupted()
        launch.send_signal(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            launch.start()
            print(f"{PROG}: control socket {launch.control_path} "
                  f"(e.g. qmp-shell {launch.control_path})", file=sys.stderr, flush=True)
            print(f"{PROG}: QEMU monitor {launch.monitor_path} "
                  f"(QMP: e.g. inject-nmi)", file=sys.stderr, flush=True)
            code = launch.wait(args.timeout)
        except _Interrupted:
            code = -1
        except LaunchError as e:
            print(f"{PROG}: {e.reason}", file=sys.stderr)
            if e.who == "qemu":
                return e.exit_code or EXIT_QEMU_CANNOT_RUN
            return EXIT_SETUP if e.who == "setup" else EXIT_DAEMON
        except TimeoutError:
            print(f"{PROG}: timed out after {args.timeout:g} s", file=sys.stderr)
            return EXIT_TIMEOUT
        finally:
            launch.shutdown()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    d = launch.daemon_proc
    if d is not None and d.returncode not in (0, None):
        print(f"{PROG}: warning: sdeid exited with status {d.returncode} after the VM",
              file=sys.stderr)
    if got:
        name = signal.Signals(got[0]).name
        print(f"{PROG}: stopped by {name}", file=sys.stderr)
        return 128 + got[0]
    if code != 0:
        reason = (f"QEMU killed by signal {-code}" if code < 0
                  else f"QEMU exited with status {code}")
        print(f"{PROG}: {reason}", file=sys.stderr)
        return code if code > 0 else 1
    return 0
