"""The real `sdeid` process: back-end program conventions, readiness,
early failure on bad configuration, clean SIGTERM, --fd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdeid.model.abi import Fid
from sdeid.testing.frontend2 import FrontendCore, SocketFrontend

SDEID = [sys.executable, "-m", "sdeid"]


def start(*args: str, fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start sdeid and wait for its readiness line (no sleeps)."""
    r, w = os.pipe()
    p = subprocess.Popen([*SDEID, *args, "--ready-fd", str(w)], pass_fds=(w, *fds),
                         stderr=subprocess.PIPE)
    os.close(w)
    with os.fdopen(r, "rb") as ready:
        line = ready.readline()
    if line != b"READY\n":
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"sdeid did not become ready: {err.decode()}")
    return p


def stop(p: subprocess.Popen[bytes]) -> bytes:
    """SIGTERM; the daemon must exit 0.  Returns its stderr."""
    p.terminate()
    _, err = p.communicate(timeout=10)
    assert p.returncode == 0, err.decode()
    return err


def test_print_capabilities() -> None:
    out = subprocess.run([*SDEID, "--print-capabilities"], capture_output=True, check=True,
                         timeout=30)
    caps = json.loads(out.stdout)
    assert caps["type"] == "sdei"
    assert caps["protocol-version"] == 2
    assert set(caps["features"]) == {"state", "lines", "pe-power", "nmi"}
    assert caps["sdei-versions"] == ["1.0", "1.1"]


@pytest.mark.parametrize("args,reason", [
    ([], "one of --socket-path or --fd is required"),
    (["--socket-path", "/tmp/x.sock", "--event", "abc"], "'number' must be an integer"),
    (["--socket-path", "/tmp/x.sock", "--event", "0"], "collides with event 0"),
    (["--socket-path", "/tmp/x.sock", "--event", "7:both"], "type must be"),
    (["--socket-path", "/tmp/x.sock", "--private-slots", "17"], "private-slots must be"),
    (["--socket-path", "/nonexistent-dir/x.sock"], "cannot listen on"),
    (["--socket-path", "/tmp/x.sock", "--config", "/nonexistent.toml"], "cannot read"),
    (["--socket-path", "/tmp/x.sock", "--event", "100:shared:critical", "--nmi-event", "100",
      "--nmi-ghes"], "--nmi-ghes needs"),
])
def test_bad_configuration_exits_early_with_one_line(args: list[str], reason: str) -> None:
    t0 = time.monotonic()
    out = subprocess.run([*SDEID, *args], capture_output=True, timeout=30)
    assert out.returncode == 1
    err = out.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdeid: error: ") and reason in err[0], err
    assert time.monotonic() - t0 < 20


def test_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "sdeid.toml"
    cfg.write_text('sdei-version = "1.0"\nshared-slots = 4\n'
                   '[[event]]\nnumber = 100\ntype = "shared"\npriority = "critical"\n')
    sock = tmp_path / "s.sock"
    p = start("--socket-path", str(sock), "--config", str(cfg))
    try:
        f = SocketFrontend(str(sock), FrontendCore((0, 1)))
        try:
            assert (f.ret(0, Fid.VERSION) >> 32) & 0xFFFF == 0
            assert f.ret(0, Fid.EVENT_GET_INFO, 100, 2) == 1
            assert f.ret(0, Fid.FEATURES, 0) >> 16 == 4
        finally:
            f.close()
    finally:
        stop(p)


def test_sigterm_exits_cleanly_and_removes_the_socket(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    p = start("--socket-path", str(sock))
    f = SocketFrontend(str(sock), FrontendCore((0,)))
    try:
        assert f.ret(0, Fid.VERSION) >> 48 == 1
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
        assert p.returncode == 0
    finally:
        f.close()
    assert time.monotonic() - t0 < 5
    assert not sock.exists()
    assert b"Traceback" not in err and b"stopping" in err


def test_inherited_listening_fd(tmp_path: Path) -> None:
    path = tmp_path / "fd.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(path))
    lsock.listen(1)
    try:
        p = start("--fd", str(lsock.fileno()), fds=(lsock.fileno(),))
    finally:
        lsock.close()
    try:
        f = SocketFrontend(str(path), FrontendCore((0, 1, 2)))
        try:
            assert f.ret(2, Fid.PE_UNMASK) == 0
        finally:
            f.close()
    finally:
        stop(p)


def test_inherited_connected_fd() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        p = start("--fd", str(theirs.fileno()), fds=(theirs.fileno(),))
    finally:
        theirs.close()
    try:
        core = FrontendCore((0,))
        f = SocketFrontend("", core, sock=ours)
        try:
            assert f.ret(0, Fid.VERSION) >> 48 == 1
            assert core.hello_reply is not None and core.hello_reply["status"] == 0
        finally:
            f.close()
    finally:
        stop(p)


def test_fd_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "file", "w") as fh:
        out = subprocess.run([*SDEID, "--fd", str(fh.fileno())], pass_fds=(fh.fileno(),),
                             capture_output=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.decode().startswith("sdeid: error: --fd")
