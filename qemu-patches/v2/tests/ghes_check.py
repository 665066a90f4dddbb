"""Check the GHES source notified by SDEI end to end, without an OS.

    python3 ghes_check.py QEMU [--efi QEMU_EFI.fd] [--event N]

Runs QEMU (-M virt,ras=on with UEFI firmware, which installs the ACPI
tables and so the HEST address) with -device smccc-user,...,ghes-event=N,
and plays the back-end itself: agrees ERROR_RECORDS, then sends
ERROR_RECORD (memory error at ADDR) until the source exists (-ENOENT
before the firmware has run the table loader), expects 0 for the first
record and -EAGAIN (-11) for a second one (no OS acknowledges the first).
Then it saves guest RAM over QMP and checks that the HEST has a GHESv2
source with notification type 11 and vector N, and that a memory-error
CPER section (its GUID) with ADDR is in memory.  Exit 0 when all hold.
"""
import argparse
import array
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HDR = struct.Struct("<HHIII")
MEM_GUID = bytes.fromhex("1411bca5646fde4eb8633e83ed7c83b1")  # A5BC1114-6F64-4EDE-...
ADDR = 0x40123000


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        data, _anc, _f, _a = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(16))
        if not data:
            raise EOFError
        buf += data
    return buf


def frame(sock):
    typ, flags, size, tag, _r = HDR.unpack(recv_exact(sock, 16))
    return typ, flags, tag, recv_exact(sock, size) if size else b""


def qmp(path, *cmds):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    f.readline()
    out = []
    for c in ({"execute": "qmp_capabilities"},) + cmds:
        f.write(json.dumps(c) + "\n")
        f.flush()
        while "return" not in (r := json.loads(f.readline())) and "error" not in r:
            pass
        out.append(r)
    s.close()
    return out[1:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qemu")
    ap.add_argument("--efi", default="/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
    ap.add_argument("--event", type=int, default=100)
    args = ap.parse_args()
    d = tempfile.mkdtemp()
    be, mon, ram = f"{d}/be.sock", f"{d}/qmp.sock", f"{d}/ram"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(be)
    srv.listen(1)
    q = subprocess.Popen([args.qemu, "-M", "virt,gic-version=3,ras=on", "-cpu", "max",
                          "-m", "256", "-bios", args.efi, "-display", "none", "-nodefaults",
                          "-serial", "null", "-qmp", f"unix:{mon},server=on,wait=off",
                          "-chardev", f"socket,id=be,path={be}",
                          "-device", f"smccc-user,chardev=be,fids=0xc4000020-0xc400003f,"
                                     f"ghes-event={args.event}"])
    conn, _ = srv.accept()
    typ, _fl, tag, p = frame(conn)
    feats = struct.unpack_from("<Q", p, 8)[0]
    print(f"HELLO features {feats:#x}")
    assert typ == 1 and feats & 8, "ERROR_RECORDS not offered"
    conn.sendall(HDR.pack(1, 1, 16, tag, 0) + struct.pack("<IiQ", 2, 0, 8))
    statuses, t0, seq = [], time.monotonic(), 100
    while time.monotonic() - t0 < 240:
        conn.settimeout(1)
        try:
            typ, fl, tag, p = frame(conn)
            if typ == 4:
                conn.sendall(HDR.pack(4, 1, 8, tag, 0) + struct.pack("<iI", 0, 0))
            elif typ == 35 and fl == 1:
                st = struct.unpack_from("<i", p)[0]
                print(f"{time.monotonic() - t0:6.1f}s ERROR_RECORD status {st}")
                statuses.append(st)
                if st == 0 or (st == -11 and 0 in statuses):
                    if len([s for s in statuses if s in (0, -11)]) >= 2:
                        break
                    seq += 1
                    conn.sendall(HDR.pack(35, 0, 16, seq, 0) +
                                 struct.pack("<IIQ", args.event, 1, ADDR))
            continue
        except socket.timeout:
            pass
        if not statuses or statuses[-1] == -2:   # no source yet: the firmware has not run
            seq += 1
            conn.sendall(HDR.pack(35, 0, 16, seq, 0) + struct.pack("<IIQ", args.event, 1, ADDR))
    ok = [s for s in statuses if s != -2] == [0, -11]
    print("statuses after the source appeared:", [s for s in statuses if s != -2])
    print(qmp(mon, {"execute": "pmemsave",
                    "arguments": {"val": 0x40000000, "size": 256 << 20, "filename": ram}}))
    mem = open(ram, "rb").read()
    hest = mem.find(b"HEST")
    n = struct.unpack_from("<I", mem, hest + 36)[0]
    srcs = [struct.unpack_from("<HH", mem, hest + 40 + 92 * i) +
            struct.unpack_from("<BxxxxxxxI", mem, hest + 40 + 92 * i + 32) for i in range(n)]
    print(f"HEST at {0x40000000 + hest:#x}: sources (type, id, notify, vector) {srcs}")
    ok &= (10, 2, 11, args.event) in srcs
    g = mem.find(MEM_GUID)
    found = g >= 0 and ADDR.to_bytes(8, "little") in mem[g:g + 200]
    print(f"memory-error CPER with {ADDR:#x} in guest RAM: {found}")
    ok &= found
    q.kill()
    q.wait()
    conn.close()
    os.unlink(ram)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
