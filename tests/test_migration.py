"""Live migration carries the dispatcher state (qemu-patches/v2 0009).

The stock Linux guest of tests/test_linux_guest.py boots on a source QEMU
attached to daemon A and probes SDEI, which unmasks every PE in A.  A second
QEMU with the same machine and device command line, plus `-incoming`, is
attached to a fresh daemon B: every PE of B is masked.  The source migrates
to it; the smccc-user device's vmstate pre_save fetches A's state (SAVE_STATE,
over a socket) and the destination's post_load hands it to B (LOAD_STATE), so
B must then show every PE unmasked and report SDEI_STATE_LOADED.  The guest carries on on the
destination: CPU hotplug there reaches B as PE_POWER, and B unmasks the PE
again when the guest brings it back.

Negative cases: a migration stream (a source saved to a file) whose state
blob is corrupt, or well formed but for another topology, makes daemon B
refuse it (-EINVAL, -EBUSY, answered on the state socket) and the destination
QEMU fail the load and exit, instead of running or hanging.

Integration tests: they run in CI and fail, never skip, when QEMU or the guest
assets cannot be had, unless SDEID_SKIP_INTEGRATION=1.  Every wait is bounded
and every process is ended however the test goes.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdeid.proto import spec
from tests.test_linux_guest import (
    DETECTED,
    PE_POWER_OFF,
    PE_POWER_ON,
    STEP_TIMEOUT,
    Vm,
    assert_all_unmasked,
    assert_no_sdei_errors,
    assets,  # noqa: F401 - a fixture
    calls,
    events,
    finish,
    qemu,  # noqa: F401 - a fixture
    wait_boot,
)

pytestmark = pytest.mark.integration

MIGRATE_TIMEOUT = 60.0   # seconds the migration itself may take
SMP = 2


# ------------------------------------------------------------------ harness

def qmp(path: Path, command: str, arguments: dict[str, Any] | None = None,
        timeout: float = 10) -> Any:
    """One command on a QEMU QMP socket (a fresh connection each time)."""
    from qemu.qmp import QMPClient

    async def go() -> Any:
        client = QMPClient("test-migration")
        await asyncio.wait_for(client.connect(str(path)), timeout)
        try:
            return await asyncio.wait_for(client.execute(command, arguments), timeout)
        finally:
            await client.disconnect()

    return asyncio.run(go())


def poll(what: str, check: Any, timeout: float, interval: float = 0.2) -> Any:
    """Call check() until it returns something true; fail after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


class MigVm(Vm):
    """A Vm whose QEMU has extra arguments: the test's own QMP monitor, and on
    the destination `-incoming`."""

    def __init__(self, qemu_bin: str, guest_assets: dict[str, str], workdir: Path, *,
                 extra: list[str], **kw: Any) -> None:
        qmp_path = workdir / "qmp.sock"
        # Vm's own machine and device arguments, so source and destination match.
        super().__init__(qemu_bin, guest_assets, workdir, **kw, extra_args=[
            "-qmp", f"unix:{qmp_path},server=on,wait=off", *extra])
        self.qmp_path = qmp_path

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return qmp(self.qmp_path, command, arguments)

    def quit(self) -> int:
        """`quit` on the test's monitor; QEMU's exit status."""
        try:
            self.qmp("quit")
        except Exception:   # noqa: BLE001 - QEMU may close before it answers
            pass
        return self.wait()


@pytest.fixture
def vms() -> Iterator[list[Vm]]:
    made: list[Vm] = []
    yield made
    for vm in made:
        vm.close()


def new_vm(vms: list[Vm], qemu: str, assets: dict[str, str], tmp_path: Path,  # noqa: F811
           name: str, extra: list[str]) -> MigVm:
    workdir = tmp_path / name
    workdir.mkdir()
    vm = MigVm(qemu, assets, workdir, smp=SMP, extra=extra)
    vms.append(vm)
    return vm


def boot_source(vms: list[Vm], qemu: str, assets: dict[str, str],  # noqa: F811
                tmp_path: Path) -> MigVm:
    """The source VM, booted, SDEI probed, idle at the guest's prompt."""
    src = new_vm(vms, qemu, assets, tmp_path, "source", []).start()
    src.expect(re.escape(DETECTED))
    wait_boot(src)
    src.run("true")
    src.prompt()
    return src


def start_destination(vms: list[Vm], qemu: str, assets: dict[str, str],  # noqa: F811
                      tmp_path: Path, incoming: str) -> MigVm:
    """The destination: daemon B, QEMU waiting for the migration stream and
    connected to B (so that post_load finds its back-end)."""
    dst = new_vm(vms, qemu, assets, tmp_path, "destination", ["-incoming", incoming]).start()

    def connected() -> bool:
        if dst.proc is not None and dst.proc.poll() is not None:
            raise AssertionError(f"destination QEMU exited early\n{dst.tail()}")
        try:
            [status] = dst.control("query-status")
        except OSError:
            return False
        # Ready, not only connected: a LOAD_STATE that QEMU's device must
        # hold back until its handshake is over can no longer fail the
        # incoming migration (qemu-patches/v2/NOTES.md 3.8).
        return bool(status.get("ready"))

    poll("destination QEMU connected to daemon B", connected, STEP_TIMEOUT)
    poll("destination QMP socket", dst.qmp_path.exists, STEP_TIMEOUT)
    return dst


def pes(vm: Vm) -> list[dict[str, Any]]:
    [sdei] = vm.control("query-sdei")
    out: list[dict[str, Any]] = sdei["pes"]
    return out


def migration_status(src: MigVm) -> dict[str, Any]:
    info = src.qmp("query-migrate")
    assert isinstance(info, dict), info
    return info


def run_migration(src: MigVm, uri: str) -> tuple[float, dict[str, Any]]:
    """migrate; wait (bounded) until it completes or fails; (seconds, info)."""
    t0 = time.monotonic()
    src.qmp("migrate", {"uri": uri})

    def done() -> dict[str, Any] | None:
        info = migration_status(src)
        return info if info.get("status") in ("completed", "failed", "cancelled") else None

    info = poll("migration finished", done, MIGRATE_TIMEOUT)
    return time.monotonic() - t0, info


# ------------------------------------------------------------------- tests

def test_live_migration_carries_the_dispatcher_state(
        qemu: str, assets: dict[str, str], tmp_path: Path, vms: list[Vm]) -> None:  # noqa: F811
    src = boot_source(vms, qemu, assets, tmp_path)
    view_a = assert_all_unmasked(src)
    print(f"\ndaemon A query-sdei PEs (source, before migration): {view_a['pes']}")
    assert src.qmp("query-status")["status"] == "running"

    mig = tmp_path / "mig.sock"
    dst = start_destination(vms, qemu, assets, tmp_path, f"unix:{mig}")
    assert dst.qmp("query-status")["status"] == "inmigrate"
    before = pes(dst)
    print(f"daemon B query-sdei PEs (destination, before migration): {before}")
    assert [p["index"] for p in before] == list(range(SMP)), before
    assert all(p["masked"] for p in before), f"a fresh daemon has every PE masked: {before}"
    assert events(dst, "SDEI_STATE_LOADED") == []
    poll("destination listening for the migration stream", mig.exists, STEP_TIMEOUT)

    took, info = run_migration(src, f"unix:{mig}")
    print(f"migration: {info.get('status')} in {took:.2f} s (total-time "
          f"{info.get('total-time')} ms, downtime {info.get('downtime')} ms)")
    assert info["status"] == "completed", f"{info}\nsource:\n{src.tail()}\n" \
                                          f"destination:\n{dst.tail()}"
    poll("destination running", lambda: dst.qmp("query-status")["status"] == "running",
         STEP_TIMEOUT)
    assert src.qmp("query-status")["status"] == "postmigrate"
    trace_a = src.trace()

    # Daemon B now holds A's state: every PE unmasked, loaded from the blob.
    view_b = assert_all_unmasked(dst)
    print(f"daemon B query-sdei PEs (destination, after migration): {view_b['pes']}")
    assert view_b["registered"] == view_a["registered"], (view_a, view_b)
    loaded = events(dst, "SDEI_STATE_LOADED")
    assert len(loaded) == 1, loaded
    [status_b] = dst.control("query-status")
    assert status_b["connected"] and status_b["pes"] == SMP, status_b

    # The guest carries on on the destination (its console is the
    # destination's stdio): the command the source's guest was waiting for.
    dst.waiting = src.prompt()
    trace_mark = len(dst.trace())
    powers_before = len(events(dst, "SDEI_PE_POWER"))
    t_cmd = time.monotonic()
    dst.run("echo 0 > /sys/devices/system/cpu/cpu1/online;"
            " echo 1 > /sys/devices/system/cpu/cpu1/online")
    print(f"hotplug on the destination: {time.monotonic() - t_cmd:.2f} s")
    assert dst.run("cat /sys/devices/system/cpu/online") == ["0-1"]
    powers = events(dst, "SDEI_PE_POWER")[powers_before:]
    assert powers == [{"pe": 1, "state": PE_POWER_OFF}, {"pe": 1, "state": PE_POWER_ON}], powers
    hotplug = dst.trace()[trace_mark:]
    on1 = [c for c in calls(hotplug) if c[0] == 1]
    assert on1 == [(1, "PE_MASK", "1"), (1, "PE_UNMASK", "0")], hotplug
    after = assert_all_unmasked(dst)
    print(f"daemon B query-sdei PEs (after cpu1 offline/online): {after['pes']}")
    print("daemon B trace of the hotplug:\n  " + "\n  ".join(hotplug))
    # Daemon A saw no guest activity after the migration.
    assert src.trace() == trace_a, src.trace()[len(trace_a):]

    finish(dst)
    assert_no_sdei_errors(dst)
    assert not any(DETECTED in ln for ln in dst.console()), dst.sdei_lines()

    # The paused source: quit it; its daemon ends cleanly.
    rc = src.quit()
    assert rc == 0, f"source QEMU exited with {rc}\n{src.tail()}"
    drc = src.stop_daemon()
    assert drc == 0, f"daemon A exited with {drc}:\n{src.daemon_log()[-3000:]}"
    assert "Traceback" not in src.daemon_log(), src.daemon_log()[-3000:]
    assert "ERROR" not in src.daemon_log(), src.daemon_log()[-3000:]


def _edit_blob(path: Path, how: str) -> None:
    """Spoil the one SDEI state blob (docs/state-format.md) in a migration
    stream saved to a file.  "corrupt": flip one byte of its zlib body (the
    CRC no longer matches).  "topology": a well-formed blob for a machine
    with 32 more SPIs (the vmstate's blob_len, the be32 right before the
    blob, is updated)."""
    data = bytearray(path.read_bytes())
    starts = [m.start() for m in re.finditer(b"SDEISTAT", data)]
    assert len(starts) == 1, f"{len(starts)} state blobs in the stream"
    at = starts[0]
    major, minor, length, crc = struct.unpack_from("<HHII", data, at + 8)
    body = bytes(data[at + 20:at + 20 + length])
    assert zlib.crc32(body) == crc, "the blob found is not intact to start with"
    assert struct.unpack_from(">I", data, at - 4)[0] == 20 + length, "no blob_len before it"
    if how == "corrupt":
        data[at + 20 + length // 2] ^= 0xFF
    else:
        state = json.loads(zlib.decompress(body))
        state["topology"]["nr_spis"] += 32
        new = zlib.compress(json.dumps(state).encode())
        blob = b"SDEISTAT" + struct.pack("<HHII", major, minor, len(new), zlib.crc32(new)) + new
        data[at - 4:at + 20 + length] = struct.pack(">I", len(blob)) + blob
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["corrupt", "topology"])
def test_bad_state_blob_fails_the_incoming_migration(
        qemu: str, assets: dict[str, str], tmp_path: Path, vms: list[Vm],  # noqa: F811
        how: str) -> None:
    src = boot_source(vms, qemu, assets, tmp_path)
    assert_all_unmasked(src)
    stream = tmp_path / "stream.bin"
    took, info = run_migration(src, f"file:{stream}")
    assert info["status"] == "completed", info
    print(f"\nsaved to a file in {took:.2f} s: {stream.stat().st_size} bytes")
    assert src.quit() == 0
    _edit_blob(stream, how)

    # -incoming defer: the stream is read once QEMU is connected to daemon B.
    dst = start_destination(vms, qemu, assets, tmp_path, "defer")
    dst.qmp("migrate-incoming", {"uri": f"file:{stream}"})
    rc = dst.wait(STEP_TIMEOUT)
    stream.unlink()
    assert rc != 0, f"the destination ran a VM from a bad state blob\n{dst.tail()}"
    messages = [ln for ln in dst.console() if ln.startswith("qemu-system")]
    print(f"destination exited with {rc}; its messages:\n  " + "\n  ".join(messages))
    # The back-end's status came back on the state socket (-EINVAL, -EBUSY)
    # and failed the device's post_load, so the load failed.
    status = {"corrupt": spec.STATUS["EINVAL"], "topology": spec.STATUS["EBUSY"]}[how]
    assert any(f"smccc-user: the back-end's state did not cross (status {status})" in ln
               for ln in messages), messages
    assert any("load of migration failed" in ln for ln in messages), messages
    # Daemon B refused the blob and kept its own state.
    why = {"corrupt": "LOAD_STATE refused: ", "topology": "for a different topology"}[how]
    assert why in dst.daemon_log(), dst.daemon_log()[-3000:]
    assert events(dst, "SDEI_STATE_LOADED") == []
    assert all(p["masked"] for p in pes(dst)), pes(dst)
    assert dst.stop_daemon() == 0, dst.daemon_log()[-3000:]
