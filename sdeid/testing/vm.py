"""The test harness around `sdeid run`'s machinery (sdeid.launcher.Launch).

`VM` is a Launch that captures what tests look at: the guest's console
lines (`lines`, `readline`, `expect`; `send_console` types on it), QEMU's
and the daemon's stderr in qemu.log and sdeid.log (quoted in LaunchError),
QMP connections to the daemon's control socket and QEMU's operator monitor
(sdeid.testing.qmp, on qemu.qmp), and one fault to inject, `restart_daemon`
(a crashed daemon restarted under a running QEMU):

    with VM(["-kernel", "guest.bin"], smp=4) as vm:
        vm.expect(r"^SDEI-WAIT-TRIGGER", timeout=30)
        vm.trigger(101)
        assert vm.wait(timeout=60) == 0

Unlike the product, the harness gets its parts from this repository:
`find_qemu` builds the patched QEMU with scripts/build-qemu (or answers from
its cache at once) and `find_aavmf` asks scripts/fetch-guest-assets.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sdeid.launcher import DEFAULT_PROTOCOL, QEMU_VARIABLES, Launch, LaunchError, named_qemu
from sdeid.testing.qmp import ControlError, QmpConnection

REPO = Path(__file__).resolve().parents[2]
BUILD_QEMU = REPO / "scripts" / "build-qemu"
FETCH_ASSETS = REPO / "scripts" / "fetch-guest-assets"


def find_qemu(explicit: str | None = None, protocol: int = DEFAULT_PROTOCOL) -> str:
    """launcher.named_qemu(), else what scripts/build-qemu prints last for
    its default series (it builds, or answers from its cache at once)."""
    named = named_qemu(explicit, protocol)
    if named:
        return named
    if not BUILD_QEMU.is_file():
        raise LaunchError(f"no QEMU: pass qemu= or set {QEMU_VARIABLES[0]} "
                          f"({BUILD_QEMU} is not there to build one)", who="setup")
    cmd = [str(BUILD_QEMU)]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise LaunchError(f"scripts/build-qemu failed with status {proc.returncode}",
                          exit_code=proc.returncode, command=cmd, who="setup")
    return lines[-1]


def find_aavmf() -> tuple[Path, Path]:
    """The UEFI firmware pair scripts/fetch-guest-assets answers with."""
    proc = subprocess.run([str(FETCH_ASSETS)], cwd=REPO, stdout=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        raise LaunchError(f"scripts/fetch-guest-assets failed with status {proc.returncode}",
                          command=[str(FETCH_ASSETS)], who="setup")
    found = dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)
    if "AAVMF_CODE" not in found or "AAVMF_VARS" not in found:
        raise LaunchError("scripts/fetch-guest-assets named no AAVMF pair",
                          command=[str(FETCH_ASSETS)], who="setup")
    return Path(found["AAVMF_CODE"]), Path(found["AAVMF_VARS"])


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class VM(Launch):
    """sdeid plus QEMU with their output captured (see the module's text).

    echo: a stream every console line is also written to (e.g. sys.stderr);
    console_input=True: `send_console` may type on the guest's console.
    Everything else is Launch's."""

    def __init__(self, qemu_args: Any = (), *, echo: IO[str] | None = None,
                 console_input: bool = False, **kwargs: Any) -> None:
        super().__init__(qemu_args, **kwargs)
        self.echo = echo
        self.console_input = console_input
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def daemon_log(self) -> Path:
        return self._path("sdeid.log")

    @property
    def qemu_log(self) -> Path:
        return self._path("qemu.log")

    # ----------------------------------------------------- Launch's hooks

    def _find_qemu(self) -> str:
        return find_qemu(self.qemu, self.protocol)

    def _find_aavmf(self) -> tuple[Path, Path]:
        return self.aavmf or find_aavmf()

    def _open_log(self, path: Path) -> IO[bytes]:
        f = open(path, "ab")
        self._logs.append(f)
        return f

    def _daemon_stderr(self) -> Any:
        return self._open_log(self.daemon_log)

    def _qemu_stdio(self) -> tuple[Any, Any, Any]:
        stdin = subprocess.PIPE if self.console_input else subprocess.DEVNULL
        return stdin, subprocess.PIPE, self._open_log(self.qemu_log)

    def _qemu_started(self) -> None:
        assert self.qemu_proc is not None and self.qemu_proc.stdout is not None
        self._reader = threading.Thread(target=self._read_console,
                                        args=(self.qemu_proc.stdout,),
                                        name="sdeid-vm-console", daemon=True)
        self._reader.start()

    def _daemon_tail(self) -> str:
        return tail(self.daemon_log) if self.workdir else ""

    def _closed(self) -> None:
        q = self.qemu_proc
        if q is not None and q.stdout is not None:
            if self._reader is not None:
                self._reader.join(timeout=self.kill_grace)
            q.stdout.close()
        if q is not None and q.stdin is not None:
            try:
                q.stdin.close()
            except OSError:
                pass
        for f in self._logs:
            f.close()
        self._logs.clear()

    # ----------------------------------------------------------- console

    def _read_console(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                self.lines.append(line)
                self._queue.put(line)
                if self.echo is not None:
                    try:
                        self.echo.write(line + "\n")
                        self.echo.flush()
                    except (OSError, ValueError):
                        pass
        finally:
            self._queue.put(None)

    def readline(self, timeout: float | None = None) -> str | None:
        """The next console line; None at EOF.  Raises TimeoutError when
        nothing arrives within `timeout`."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no console output within {timeout} s") from None
        if line is None:
            self._queue.put(None)   # EOF stays EOF
        return line

    def iter_lines(self, timeout: float | None = None) -> Iterator[str]:
        """Console lines until EOF; `timeout` bounds the whole iteration."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            line = self.readline(left)
            if line is None:
                return
            yield line

    def expect(self, pattern: str, timeout: float | None = None) -> re.Match[str]:
        """Read console lines until one matches `pattern` (re.search)."""
        rx = re.compile(pattern)
        for line in self.iter_lines(timeout):
            m = rx.search(line)
            if m:
                return m
        raise LaunchError(f"console ended without a line matching {pattern!r}",
                          output="\n".join(self.lines[-30:]))

    def send_console(self, data: bytes) -> None:
        """Type `data` on the guest's serial console (console_input only)."""
        if self.qemu_proc is None or self.qemu_proc.stdin is None:
            raise RuntimeError("send_console needs console_input=True")
        self.qemu_proc.stdin.write(data)
        self.qemu_proc.stdin.flush()

    # ---------------------------------------------------------------- QMP

    def control(self, timeout: float = 10.0) -> QmpConnection:
        """A new connection to the daemon's control socket (close it)."""
        return QmpConnection(self.control_path, timeout)

    def qemu_monitor(self, timeout: float = 10.0) -> QmpConnection:
        """A new connection to QEMU's operator monitor (close it), e.g.
        `vm.qemu_monitor().execute("inject-nmi")`."""
        return QmpConnection(self.monitor_path, timeout)

    def trigger(self, event: int, pe: int | None = None) -> None:
        """`sdei-trigger` through the control socket."""
        args: dict[str, Any] = {"event": event}
        if pe is not None:
            args["pe"] = pe
        with self.control() as c:
            c.execute("sdei-trigger", args)

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Until the daemon reports QEMU connected (query-status), e.g. after
        restart_daemon().  Raises TimeoutError.  Right after a stalled daemon
        resumes this may still see the old connection."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.control(timeout=5) as ctl:
                    if ctl.execute("query-status")["connected"]:
                        return
            except (ControlError, OSError, EOFError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"QEMU not connected to sdeid after {timeout:g} s")
            time.sleep(0.2)

    # -------------------------------------------------------------- faults

    def restart_daemon(self) -> None:
        """Kill sdeid (SIGKILL, as a crash would) and start it again with
        the same command line while QEMU keeps running: what a supervisor
        does.  With --state-file among sdeid_args the new daemon restores
        the dispatcher; QEMU reconnects on its own (reconnect-ms)."""
        d = self.daemon_proc
        if d is None or self.qemu_proc is None:
            raise RuntimeError("not started")
        if d.poll() is None:
            d.kill()
        d.wait()
        self._daemon_exit_seen = None
        self._start_daemon()


__all__ = ["VM", "ControlError", "LaunchError", "QmpConnection", "REPO", "find_aavmf",
           "find_qemu"]
