"""Serve the v2 (smccc-user) protocol: ``python -m sdeid.proto.serve``.

    python -m sdeid.proto.serve --socket-path PATH [--state-file FILE]
        [--event N[:TYPE[:PRIO]]]... [--config FILE] [--sdei-version 1.0|1.1]
        [--ready-fd N] [--log-level LEVEL]

The dispatcher of `sdeid`, behind the v2 front-end (the QEMU series in
qemu-patches/v2).  `--state-file` is the journal (sdeid.proto.journal): a
daemon killed with SIGKILL and started again with the same file loses no
effect the guest saw and doubles none.  SIGTERM/SIGINT stop it cleanly
(exit 0) after a checkpoint; a bad configuration exits 1 with one line.
The operator control socket and QMP hooks of `sdeid` come to v2 when the
v2 series replaces v1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from sdeid.config import load_config
from sdeid.errors import ConfigError, StateError
from sdeid.proto.journal import Journal
from sdeid.proto.ring import Ring
from sdeid.proto.session import Backend


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sdeid.proto.serve",
                                 description="sdeid behind the smccc-user v2 front-end.")
    ap.add_argument("--socket-path", type=Path, required=True, metavar="PATH")
    ap.add_argument("--state-file", type=Path, metavar="FILE",
                    help="journal: restore from it at start, commit every change to it")
    ap.add_argument("--config", type=Path, metavar="FILE")
    ap.add_argument("--event", action="append", default=[], metavar="N[:TYPE[:PRIO]]")
    ap.add_argument("--sdei-version", choices=["1.0", "1.1"])
    ap.add_argument("--ready-fd", type=int, metavar="N")
    ap.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="sdeid: %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.event, args.sdei_version, None, None)
        backend = Backend(config)
        journal = None
        if args.state_file is not None:
            journal = Journal(args.state_file)
            try:
                n = journal.load(backend)
            except StateError as e:
                raise ConfigError(str(e)) from e
            if n or backend.dispatcher is not None:
                logging.getLogger("sdeid").info("restored %s (%d journal records)",
                                                args.state_file, n)
            journal.open(backend)
        ring = Ring(backend, journal=journal)
        try:
            ring.listen(args.socket_path)
        except OSError as e:
            raise ConfigError(f"cannot listen on {args.socket_path}: {e.strerror}") from e
    except ConfigError as e:
        print(f"sdeid: error: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"READY\n")
        os.close(args.ready_fd)
    logging.getLogger("sdeid").info("serving smccc-user v2 on %s", args.socket_path)
    while not stop.wait(3600):
        pass
    ring.close()
    with_path = args.socket_path
    try:
        with_path.unlink()
    except FileNotFoundError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
