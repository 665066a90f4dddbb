"""The launcher (`sdeid run`, sdeid.launcher) and the test harness around it
(sdeid.testing.vm.VM, sdeid.testing.qmp) without QEMU.

A fake `qemu-system-aarch64` stands in: it records its command line, proves
the daemon was already serving when it started (it connects to the control
socket and reports the daemon's pid from SO_PEERCRED), then exits, sleeps,
or waits for a signal, as FAKE_QEMU_MODE says.  Every test also checks that
the real daemon is gone afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdeid import launcher
from sdeid.errors import SdeidError
from sdeid.launcher import LaunchError
from sdeid.testing import vm as harness
from sdeid.testing.qmp import ControlError, QmpConnection
from sdeid.testing.vm import REPO, VM

V2_DEVICE = "smccc-user,chardev=sdei0,fids=0xc4000020-0xc400003f,,0x84000020-0x8400003f"

FAKE_QEMU = textwrap.dedent("""\
    #!PYTHON
    import json, os, signal, socket, struct, sys, time

    argv = sys.argv[1:]
    print("FAKE-ARGV " + json.dumps(argv), flush=True)
    ctl = os.path.join(os.path.dirname(
        argv[argv.index("-chardev") + 1].split("path=")[1].split(",")[0]), "control.sock")
    s = socket.socket(socket.AF_UNIX)
    s.connect(ctl)
    pid, uid, gid = struct.unpack("3i", s.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    s.close()
    print("FAKE-DAEMON-PID %d" % pid, flush=True)
    mode = os.environ.get("FAKE_QEMU_MODE", "exit:0")
    if mode.startswith("exit:"):
        print("guest says bye\\r", flush=True)
        sys.exit(int(mode[5:]))
    if mode == "signal":
        def on(sig, frame):
            print("FAKE-GOT-SIGNAL %d" % sig, flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on)
        signal.signal(signal.SIGINT, on)
        print("FAKE-WAITING", flush=True)
        while True:
            time.sleep(1)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("FAKE-WAITING", flush=True)
        while True:
            time.sleep(1)
    sys.exit(99)
""").replace("PYTHON", sys.executable)


@pytest.fixture
def fake_qemu(tmp_path: Path) -> str:
    path = tmp_path / "fake-qemu"
    path.write_text(FAKE_QEMU)
    path.chmod(0o755)
    return str(path)


def pid_gone(pid: int) -> bool:
    """True once `pid` no longer exists (or is a zombie of someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pid_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run_cli(args: list[str], mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, FAKE_QEMU_MODE=mode)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "sdeid", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)


def daemon_pid(out: str) -> int:
    for line in out.splitlines():
        if line.startswith("FAKE-DAEMON-PID "):
            return int(line.split()[1])
    raise AssertionError(f"fake QEMU did not report the daemon: {out!r}")


def fake_argv(out: str) -> list[str]:
    for line in out.splitlines():
        if line.startswith("FAKE-ARGV "):
            return list(json.loads(line[len("FAKE-ARGV "):]))
    raise AssertionError(f"fake QEMU did not start: {out!r}")


# ------------------------------------------------------------------ the CLI

def test_cli_success_passes_console_and_exit_0(fake_qemu: str, tmp_path: Path) -> None:
    p = run_cli(["--qemu", fake_qemu, "--smp", "4", "--memory", "256M",
                 "--", "-kernel", "guest.bin", "-append", "a b"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "guest says bye" in out
    assert "control socket" in err and "control.sock" in err
    argv = fake_argv(out)
    assert argv[argv.index("-M") + 1] == "virt,gic-version=3"
    assert argv[argv.index("-smp") + 1] == "4"
    assert argv[argv.index("-m") + 1] == "256M"
    assert argv[-4:] == ["-kernel", "guest.bin", "-append", "a b"]
    for opt in ("-nodefaults", "-no-reboot"):
        assert opt in argv
    assert argv[argv.index("-serial") + 1] == "stdio"
    assert argv[argv.index("-device") + 1] == V2_DEVICE
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    assert chardevs[0].startswith("socket,id=sdei0,path=")
    assert chardevs[0].endswith("sdei.sock,reconnect-ms=1000")
    assert re.fullmatch(r"socket,id=qmp0,fd=\d+,server=on,wait=off", chardevs[1])
    assert argv[argv.index("-mon") + 1] == "chardev=qmp0,mode=control"
    workdir = Path(chardevs[0].split("path=")[1].split(",")[0]).parent
    assert wait_gone(daemon_pid(out))
    assert not workdir.exists()     # a temporary directory is removed


def test_cli_smc_conduit_and_keep_dir(fake_qemu: str, tmp_path: Path) -> None:
    keep = tmp_path / "run"
    p = run_cli(["--qemu", fake_qemu, "--conduit", "smc", "--keep-dir", str(keep), "--"],
                "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    argv = fake_argv(out)
    assert argv[argv.index("-M") + 1] == "virt,gic-version=3,virtualization=on"
    assert f"path={keep.resolve()}/sdei.sock," in " ".join(argv)
    assert keep.is_dir()            # kept
    assert wait_gone(daemon_pid(out))
    assert not (keep / "control.sock").exists()     # the daemon cleaned up after itself


def firmware_pair(where: Path) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    code, vars_ = where / "AAVMF_CODE.fd", where / "AAVMF_VARS.fd"
    code.write_bytes(b"c" * 16)
    vars_.write_bytes(b"v" * 16)
    return code, vars_


def test_cli_uefi_firmware_copies_vars(fake_qemu: str, tmp_path: Path) -> None:
    code, vars_ = firmware_pair(tmp_path / "fw")
    keep = tmp_path / "run"
    p = run_cli(["--qemu", fake_qemu, "--firmware", "uefi", "--keep-dir", str(keep),
                 "--uefi-firmware", str(code), str(vars_), "--", "-kernel", "k"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    argv = fake_argv(out)
    assert argv[argv.index("-M") + 1] == "virt,gic-version=3,ras=on"
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives == [f"if=pflash,format=raw,readonly=on,file={code}",
                      f"if=pflash,format=raw,file={keep.resolve()}/AAVMF_VARS.fd"]
    assert (keep / "AAVMF_VARS.fd").read_bytes() == vars_.read_bytes()
    assert argv[argv.index("-acpitable") + 1] == "sig=SDEI,rev=1,data=/dev/null"
    assert wait_gone(daemon_pid(out))


def test_uefi_firmware_default_and_its_absence(fake_qemu: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --uefi-firmware, Debian's qemu-efi-aarch64 location; without
    that package, nothing starts (3) and the line says what to install."""
    monkeypatch.setattr(launcher, "AAVMF_DIR", tmp_path / "none")
    with pytest.raises(LaunchError, match="apt-get install qemu-efi-aarch64") as e:
        launcher.find_aavmf()
    assert e.value.who == "setup"
    code, vars_ = firmware_pair(tmp_path / "AAVMF")
    monkeypatch.setattr(launcher, "AAVMF_DIR", tmp_path / "AAVMF")
    assert launcher.find_aavmf() == (code, vars_)
    with pytest.raises(SystemExit):
        launcher.main(["--uefi-firmware", str(code), str(vars_), "--"])   # needs uefi
    p = run_cli(["--qemu", fake_qemu, "--firmware", "uefi", "--uefi-firmware",
                 str(tmp_path / "no-code"), str(vars_), "--"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3 and "no-code" in err and "FAKE-ARGV" not in out, err


def test_sdei_device_props(fake_qemu: str, tmp_path: Path) -> None:
    # CLI: --sdei-device-props lands on the smccc-user device
    p = run_cli(["--qemu", fake_qemu, "--sdei-device-props", "ghes-event=100", "--"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    argv = fake_argv(out)
    assert argv[argv.index("-device") + 1] == V2_DEVICE + ",ghes-event=100"
    assert wait_gone(daemon_pid(out))
    # API: device_props; without it the device line is unchanged
    for props, want in (("ghes-event=7", V2_DEVICE + ",ghes-event=7"), ("", V2_DEVICE)):
        with VM([], qemu=fake_qemu, protocol=2, device_props=props) as vm:
            assert vm.wait(timeout=60) == 0
            argv = fake_argv("\n".join(vm.lines))
        assert argv[argv.index("-device") + 1] == want


def test_cli_qemu_failure_is_reported(fake_qemu: str) -> None:
    p = run_cli(["--qemu", fake_qemu, "--"], "exit:3")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3
    assert "QEMU exited with status 3" in err
    assert wait_gone(daemon_pid(out))


def test_cli_daemon_failure_before_ready(fake_qemu: str) -> None:
    p = run_cli(["--qemu", fake_qemu, "--sdeid-arg=--event=bogus", "--"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "FAKE-ARGV" not in out   # QEMU never started
    assert "before it was ready" in err.splitlines()[-1]


def test_cli_sdeid_args_reach_the_daemon(fake_qemu: str, tmp_path: Path) -> None:
    """A static event given with --sdeid-arg is known to the daemon: its
    config accepted it (a bad one fails, see above) and it answers."""
    p = run_cli(["--qemu", fake_qemu, "--sdeid-arg=--event=101:shared:critical",
                 "--sdeid-arg=--log-level=debug", "--"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "DEBUG" in err           # the daemon's stderr is ours in CLI mode


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_forwards_signals_and_tears_down(fake_qemu: str, sig: signal.Signals) -> None:
    p = run_cli(["--qemu", fake_qemu, "--"], "signal")
    assert p.stdout is not None
    seen: list[str] = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("FAKE-WAITING"):
            break
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    out = "".join(seen) + out
    assert p.returncode == 128 + sig, err
    assert f"FAKE-GOT-SIGNAL {int(sig)}" in out
    assert f"stopped by {sig.name}" in err
    assert wait_gone(daemon_pid(out))


def test_cli_timeout_kills_a_stuck_vm(fake_qemu: str) -> None:
    t0 = time.monotonic()
    p = run_cli(["--qemu", fake_qemu, "--timeout", "1", "--"], "ignore-term")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 124
    assert "timed out after 1 s" in err
    assert time.monotonic() - t0 < 30
    assert wait_gone(daemon_pid(out))


def test_cli_usage_errors() -> None:
    with pytest.raises(SystemExit) as e:
        launcher.main(["--conduit", "pigeon", "--"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        launcher.main(["--smp", "0", "--"])


def test_cli_missing_qemu_binary(tmp_path: Path) -> None:
    """Not sdeid's failure: a shell's 127 (and 126 for a file that cannot be
    executed), not sdeid's 1."""
    p = run_cli(["--qemu", str(tmp_path / "no-such-qemu"), "--"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 127
    assert "cannot start QEMU" in err
    notexec = tmp_path / "not-executable"
    notexec.write_text("")
    p = run_cli(["--qemu", str(notexec), "--"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 126 and "cannot start QEMU" in err


def test_cli_setup_failure_is_neither_sdeids_nor_qemus(fake_qemu: str, tmp_path: Path) -> None:
    p = run_cli(["--qemu", fake_qemu, "--monitor", str(tmp_path / ("m" * 120)), "--"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3, err
    assert "too long for a Unix socket" in err and "FAKE-ARGV" not in out


# ------------------------------------------------------------------ the API

def test_api_capture_control_and_teardown(fake_qemu: str, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "signal")
    with VM(qemu=fake_qemu, protocol=2, smp=4, kill_grace=5) as vm:
        assert vm.qemu_proc is not None and vm.daemon_proc is not None
        vm.expect(r"^FAKE-WAITING", timeout=30)
        pid = daemon_pid("\n".join(vm.lines))
        assert pid == vm.daemon_proc.pid
        with vm.control() as c:
            status = c.execute("query-status")
            assert status["connected"] is False
        with pytest.raises(TimeoutError):
            vm.wait(timeout=0.2)
        workdir = vm.workdir
        assert workdir is not None and (workdir / "sdeid.log").exists()
    assert vm.qemu_proc.returncode == 0        # SIGTERM, caught by the fake
    assert vm.daemon_proc.returncode is not None
    assert wait_gone(pid)
    assert not workdir.exists()
    assert any(ln.startswith("FAKE-GOT-SIGNAL 15") for ln in vm.lines)


def test_product_api_inherits_the_console(fake_qemu: str, capfd: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    """The product's Launch captures nothing: the console is our stdout, as
    for `sdeid run`; its working directory goes with it."""
    with launcher.Launch(["-append", "x"], qemu=fake_qemu, smp=1) as vm:
        assert vm.wait(timeout=60) == 0
        workdir = vm.workdir
    out = capfd.readouterr().out
    assert "guest says bye" in out and fake_argv(out)[-2:] == ["-append", "x"]
    assert wait_gone(daemon_pid(out))
    assert workdir is not None and not workdir.exists()


def test_api_sigkill_after_grace(fake_qemu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "ignore-term")
    t0 = time.monotonic()
    with VM(qemu=fake_qemu, protocol=2, kill_grace=0.5) as vm:
        vm.expect(r"^FAKE-WAITING", timeout=30)
    assert vm.qemu_proc is not None and vm.qemu_proc.returncode == -signal.SIGKILL
    assert vm.daemon_proc is not None and vm.daemon_proc.returncode is not None
    assert time.monotonic() - t0 < 30


def test_api_daemon_death_is_a_failure(fake_qemu: str, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "signal")
    with VM(qemu=fake_qemu, protocol=2, kill_grace=2) as vm:
        vm.expect(r"^FAKE-WAITING", timeout=30)
        assert vm.daemon_proc is not None
        vm.daemon_proc.kill()
        with pytest.raises(LaunchError, match="sdeid exited with status -9"):
            vm.wait(timeout=30)
    assert vm.qemu_proc is not None and vm.qemu_proc.returncode is not None


def test_api_restart_daemon(fake_qemu: str, monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> None:
    """restart_daemon: the old daemon is killed and reaped, a new one serves
    the same control socket, QEMU is untouched, teardown still works."""
    monkeypatch.setenv("FAKE_QEMU_MODE", "signal")
    state = tmp_path / "sdeid.state"
    with VM(qemu=fake_qemu, protocol=2, kill_grace=5,
            sdeid_args=["--state-file", str(state)]) as vm:
        vm.expect(r"^FAKE-WAITING", timeout=30)
        old, qemu_pid = vm.daemon_proc, vm.qemu_proc
        assert old is not None and qemu_pid is not None
        vm.restart_daemon()
        assert old.returncode == -signal.SIGKILL
        assert vm.daemon_proc is not None and vm.daemon_proc is not old
        assert vm.daemon_proc.poll() is None and vm.qemu_proc is qemu_pid
        assert vm.daemon_command[-2:] == ["--state-file", str(state)]
        with vm.control() as c:
            assert c.execute("query-status")["connected"] is False
        with pytest.raises(TimeoutError, match="not connected"):
            vm.wait_connected(0.5)         # the fake QEMU never connects
        with pytest.raises(TimeoutError):
            vm.wait(timeout=0.2)           # the new daemon counts as healthy
        new = vm.daemon_proc
    assert new.returncode is not None and wait_gone(new.pid)


def test_api_daemon_quit_while_vm_runs(fake_qemu: str, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    """A daemon that leaves cleanly must be followed by QEMU within the grace."""
    monkeypatch.setenv("FAKE_QEMU_MODE", "signal")
    with VM(qemu=fake_qemu, protocol=2, kill_grace=0.5) as vm:
        vm.expect(r"^FAKE-WAITING", timeout=30)
        with vm.control() as c:
            c.execute("quit")
        with pytest.raises(LaunchError, match="still running"):
            vm.wait(timeout=30)


def test_api_start_failure_leaves_nothing(fake_qemu: str, tmp_path: Path) -> None:
    vm = VM(qemu=fake_qemu, protocol=2, sdeid_args=["--event=bogus"], keep_dir=tmp_path / "run")
    with pytest.raises(LaunchError) as e:
        vm.start()
    assert "before it was ready" in e.value.reason
    assert e.value.exit_code == 1
    assert "bogus" in e.value.output            # the daemon's own one-line reason
    assert vm.qemu_proc is None
    assert vm.daemon_proc is not None and vm.daemon_proc.returncode == 1


def test_control_client_reports_errors(fake_qemu: str, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    """The harness's QMP connection (qemu.qmp underneath): error replies as
    ControlError under the root error type, commands sent together answered
    in order, a missing socket as the OS error."""
    monkeypatch.setenv("FAKE_QEMU_MODE", "signal")
    with VM(qemu=fake_qemu, protocol=2) as vm:
        vm.expect(r"^FAKE-WAITING", timeout=30)
        with QmpConnection(vm.control_path) as c:
            with pytest.raises(ControlError) as e:
                c.execute("no-such-command")
            assert e.value.cls == "CommandNotFound"
            assert isinstance(e.value, SdeidError)
            with pytest.raises(ControlError):   # no VM has connected
                c.execute("sdei-trigger", {"event": 0})
            replies = c.execute_all([("query-status", None), ("no-such-command", None),
                                     ("sdei-trigger", {"event": 0}), ("query-status", None)])
            assert [next(iter(r)) for r in replies] == ["return", "error", "error", "return"]
            assert replies[0]["return"]["connected"] is False
            assert replies[1]["error"]["class"] == "CommandNotFound"
            assert replies[2]["error"]["class"] == "GenericError"
    with pytest.raises(FileNotFoundError):
        QmpConnection(tmp_path / "no-such.sock", timeout=5)


def test_qmp_connection_times_out_on_a_silent_server(tmp_path: Path) -> None:
    """A server that accepts and never greets: TimeoutError, not a hang."""
    path = tmp_path / "silent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            QmpConnection(path, timeout=0.5)
        assert time.monotonic() - t0 < 30
    finally:
        srv.close()


# ---------------------------------------------------------- finding QEMU

PROBED_QEMU = """#!/bin/sh
# answers -device X,help as QEMU does: status 0 either way, the listing says
[ "$1 $2" = "-device smccc-user,help" ] && [ -n "$HAS_DEVICE" ] && echo "smccc-user options:"
exit 0
"""


def test_product_find_qemu_never_builds(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    """--qemu, then $SDEID_QEMU, then a qemu-system-aarch64 with the device
    next to sdeid's Python, then on PATH; one without the device is passed
    over, and none at all is a setup failure naming the way out."""
    for var in ("SDEID_QEMU", "SDEID_QEMU_V2"):
        monkeypatch.delenv(var, raising=False)
    env_bin, on_path = tmp_path / "venv-bin", tmp_path / "path-bin"
    for d in (env_bin, on_path):
        d.mkdir()
        (d / "qemu-system-aarch64").write_text(PROBED_QEMU)
        (d / "qemu-system-aarch64").chmod(0o755)
    monkeypatch.setattr(launcher, "env_bin", lambda: env_bin)
    monkeypatch.setenv("PATH", f"{on_path}:/usr/bin:/bin")
    monkeypatch.setenv("HAS_DEVICE", "1")
    assert launcher.find_qemu("/explicit") == "/explicit"
    monkeypatch.setenv("SDEID_QEMU", "/from/env")
    assert launcher.find_qemu() == "/from/env"
    monkeypatch.delenv("SDEID_QEMU")
    monkeypatch.setenv("SDEID_QEMU_V2", "/older/name")
    assert launcher.find_qemu() == "/older/name"
    monkeypatch.delenv("SDEID_QEMU_V2")
    assert launcher.find_qemu() == str(env_bin / "qemu-system-aarch64")
    (env_bin / "qemu-system-aarch64").unlink()
    assert launcher.find_qemu() == str(on_path / "qemu-system-aarch64")
    monkeypatch.delenv("HAS_DEVICE")              # a stock QEMU: not ours
    with pytest.raises(LaunchError, match="has no smccc-user device") as e:
        launcher.find_qemu()
    assert e.value.who == "setup" and "SDEID_QEMU" in e.value.reason
    (on_path / "qemu-system-aarch64").unlink()
    with pytest.raises(LaunchError, match="no patched QEMU found: pass --qemu"):
        launcher.find_qemu()
    # and `sdeid run` says so with status 3, starting nothing (its own
    # environment's bin directory is replaced, as in this process)
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path / "tmp"))
    code = ("import sys; from pathlib import Path; from sdeid import launcher; "
            f"launcher.env_bin = lambda: Path({str(env_bin)!r}); "
            "sys.exit(launcher.main(['--']))")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "no patched QEMU found" in r.stderr, r.stderr
    assert not list((tmp_path / "tmp").iterdir())     # its working directory is gone


def test_harness_find_qemu_builds_the_default_series(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """The harness asks build-qemu for its default (qemu-patches/DEFAULT
    names it), so that file is the one place to change it."""
    for var in ("SDEID_QEMU", "SDEID_QEMU_V2"):
        monkeypatch.delenv(var, raising=False)
    fake = tmp_path / "build-qemu"
    fake.write_text('#!/bin/sh\necho "args:$*" >&2\necho "/built/$#"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(harness, "BUILD_QEMU", fake)
    assert harness.find_qemu() == "/built/0"
    assert harness.find_qemu("/explicit") == "/explicit"
    monkeypatch.setenv("SDEID_QEMU", "/from/env")
    assert harness.find_qemu() == "/from/env"
    monkeypatch.delenv("SDEID_QEMU")
    default = (REPO / "qemu-patches/DEFAULT").read_text().split("\n")
    named = [ln.strip() for ln in default if ln.strip() and not ln.startswith("#")]
    assert len(named) == 1 and (REPO / named[0] / "series").is_file()
    fake.write_text("#!/bin/sh\nexit 4\n")
    with pytest.raises(LaunchError, match="build-qemu failed with status 4"):
        harness.find_qemu()
    monkeypatch.setattr(harness, "BUILD_QEMU", Path("/nonexistent/build-qemu"))
    with pytest.raises(LaunchError, match="no QEMU"):
        harness.find_qemu()


def test_the_device_and_the_one_protocol(monkeypatch: pytest.MonkeyPatch,
                                         fake_qemu: str) -> None:
    monkeypatch.setenv("SDEID_QEMU", "/v2")
    assert launcher.find_qemu(None, 2) == "/v2"
    assert VM(qemu=fake_qemu, protocol=2)._device() == V2_DEVICE
    assert VM(qemu=fake_qemu)._device() == V2_DEVICE
    for gone in (1, 3):
        with pytest.raises(ValueError, match="protocol"):
            VM(qemu=fake_qemu, protocol=gone)
        with pytest.raises(ValueError, match="protocol"):
            launcher.find_qemu(None, gone)


def test_socket_path_too_long(fake_qemu: str, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(LaunchError, match="too long"):
        VM(qemu=fake_qemu, protocol=2, keep_dir=deep).start()



def test_cli_monitor_gives_the_operator_qemus_own_qmp(fake_qemu: str, tmp_path: Path) -> None:
    mon = tmp_path / "vm-qmp.sock"
    p = run_cli(["--qemu", fake_qemu, "--monitor", str(mon), "--"], "exit:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert f"QEMU monitor {mon}" in err
    argv = fake_argv(out)
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    assert re.fullmatch(r"socket,id=mon1,fd=\d+,server=on,wait=off", chardevs[2])
    mons = [argv[i + 1] for i, a in enumerate(argv) if a == "-mon"]
    assert mons == ["chardev=qmp0,mode=control", "chardev=mon1,mode=control"]
    assert wait_gone(daemon_pid(out))
    assert not mon.exists()         # removed with the run
