"""A minimal smccc-user v2 back-end for testing the QEMU side.

    python3 fake_backend.py SOCKET [--delay SECONDS] [--x0 VALUE]

Listens on SOCKET (one front-end at a time), answers HELLO (no features),
RESET, and every CALL with RETURN x0=VALUE after DELAY seconds, each vCPU
channel on its own thread (so replies to different PEs overlap in time).
Prints one line per event on stdout.  Not sdeid: only for checking QEMU.
"""
import argparse
import array
import os
import socket
import struct
import sys
import threading
import time

HDR = struct.Struct("<HHIII")
REQ = struct.Struct("<IIQ18QQQQQII")          # SmcccUserVcpuRequest, 200 bytes
REP = struct.Struct("<IIQII18QQQQ")           # SmcccUserVcpuReply, 192 bytes
assert REQ.size == 200 and REP.size == 192


def log(*a):
    print(f"{time.monotonic():.3f}", *a, flush=True)


def recv_exact(sock, n, fds):
    buf = b""
    while len(buf) < n:
        data, anc, _f, _a = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(16))
        if not data:
            raise EOFError
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[:len(payload) - len(payload) % 4]))
        buf += data
    return buf


def vcpu(pe, ch, delay, x0):
    while True:
        data = ch.recv(4096)
        if not data:
            log("channel", pe, "closed")
            return
        op, flags, seq, *rest = REQ.unpack(data)
        log("request pe", pe, "op", op, "seq", seq, "fid", hex(rest[0]))
        time.sleep(delay)
        x = [x0, 0, 0, 0] + [0] * 14
        ch.send(REP.pack(op, 1 if op == 1 else 0, seq, 0, 0, *x, 0, 0, 0))


def serve(conn, delay, x0):
    fds = []
    while True:
        h = recv_exact(conn, 16, fds)
        typ, flags, size, tag, _r = HDR.unpack(h)
        p = recv_exact(conn, size, fds) if size else b""
        log("control", typ, "flags", flags, "size", size, "tag", tag, "fds", len(fds))
        if typ == 1:
            ver, nr_pes, feats, inst = struct.unpack_from("<IIQQ", p)
            log("HELLO version", ver, "pes", nr_pes, "features", hex(feats), "instance", hex(inst))
            nr_spis, = struct.unpack_from("<I", p, 24)
            words = struct.unpack_from("<16Q", p, 32)
            ids = [w * 64 + b for w in range(16) for b in range(64) if words[w] >> b & 1]
            log("HELLO spis", nr_spis, "lines", len(ids), ids)
            conn.sendall(HDR.pack(1, 1, 16, tag, 0) + struct.pack("<IiQ", 2, 0, 0))
        elif typ == 2:
            pe, _r, mpidr = struct.unpack("<IIQ", p)
            ch = socket.socket(fileno=fds.pop(0))
            threading.Thread(target=vcpu, args=(pe, ch, delay, x0), daemon=True).start()
        elif typ == 4:
            conn.sendall(HDR.pack(4, 1, 8, tag, 0) + struct.pack("<iI", 0, 0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--x0", type=lambda v: int(v, 0), default=0x1000000000000)
    args = ap.parse_args()
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.socket)
    srv.listen(1)
    log("listening")
    while True:
        conn, _ = srv.accept()
        log("connected")
        try:
            serve(conn, args.delay, args.x0)
        except (EOFError, ConnectionError) as e:
            log("disconnected", type(e).__name__)
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
