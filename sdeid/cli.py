"""The `sdeid` command: the daemon, following vhost-user back-end conventions.

    sdeid --socket-path PATH [options]     listen on a new socket (mode 0600)
    sdeid --fd N [options]                 serve an inherited socket
    sdeid --print-capabilities             JSON on stdout, exit 0
    sdeid run [...] -- QEMU-ARGS           start sdeid and QEMU wired together

No self-daemonizing; SIGTERM/SIGINT end it promptly and cleanly (exit 0);
a bad configuration ends it at once with a one-line reason (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from sdeid import __version__
from sdeid.errors import ConfigError
from sdeid.proto import spec

CAPABILITIES = {
    "type": "sdei",
    "protocol-version": spec.PROTOCOL_VERSION,
    "features": sorted(name.lower().replace("_", "-") for name in spec.FEATURES),
    "sdei-versions": ["1.0", "1.1"],
    "version": __version__,
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="sdeid", description="SDEI dispatcher daemon for QEMU virtual machines.",
        epilog="`sdeid run --help` describes the launcher.")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--socket-path", type=Path, metavar="PATH",
                       help="listen for the VMM on a new Unix socket at PATH")
    where.add_argument("--fd", type=int, metavar="N",
                       help="serve an inherited Unix socket (listening or connected)")
    ap.add_argument("--protocol", type=int, choices=[spec.PROTOCOL_VERSION],
                    default=spec.PROTOCOL_VERSION,
                    help="device protocol: 2, the only one (the smccc-user device of "
                    "qemu-patches/v2); accepted for scripts written when there were two")
    ap.add_argument("--print-capabilities", action="store_true",
                    help="print the back-end capabilities as JSON and exit")
    ap.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    ap.add_argument("--config", type=Path, metavar="FILE",
                    help="TOML file with platform events and limits")
    ap.add_argument("--event", action="append", default=[], metavar="N[:TYPE[:PRIO]][:intid=I]",
                    help="a static platform event, e.g. 100:shared:critical, or one behind a "
                    "device interrupt, 200:shared:critical:intid=34 (repeatable)")
    ap.add_argument("--nmi-event", type=int, metavar="N",
                    help="trigger static event N on QEMU's NMI (QMP inject-nmi, "
                    "-action watchdog=inject-nmi); critical priority recommended")
    ap.add_argument("--nmi-ghes", action="store_true",
                    help="deliver an NMI as a fatal GHES error record notified by the "
                    "--nmi-event (QEMU's ghes-event): a stock Linux kernel with GHES "
                    "panics from that event's handler; needs --qmp")
    ap.add_argument("--sdei-version", choices=["1.0", "1.1"],
                    help="SDEI version reported to the guest (default 1.1)")
    ap.add_argument("--private-slots", type=int, metavar="N",
                    help="INTERRUPT_BIND slots for PPIs (0..16, default 16)")
    ap.add_argument("--shared-slots", type=int, metavar="N",
                    help="INTERRUPT_BIND slots for SPIs (0..988, default 32)")
    ap.add_argument("--control-socket", type=Path, metavar="PATH",
                    help="serve the QMP-style operator control socket at PATH")
    ap.add_argument("--qmp", metavar="PATH",
                    help="QEMU's QMP socket reserved for sdeid (lifecycle hooks)")
    ap.add_argument("--exit-with-vm", action="store_true",
                    help="exit when QEMU reports SHUTDOWN or its QMP socket closes")
    ap.add_argument("--state-file", type=Path, metavar="FILE",
                    help="persist dispatcher state here and restore it at start: a journal, "
                    "one write per call (no fsync), exactly-once across a SIGKILL")
    ap.add_argument("--allow-uid", type=int, action="append", default=[], metavar="UID",
                    help="also serve peers with this uid (default: only our own)")
    ap.add_argument("--allow-any-uid", action="store_true",
                    help="serve peers of any uid (the socket mode still applies)")
    ap.add_argument("--ready-fd", type=int, metavar="N",
                    help="write 'READY\\n' to fd N once listening, then close it")
    ap.add_argument("--version", action="version", version=f"sdeid {__version__}")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from sdeid.launcher import main as run_main
        return run_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES))
        return 0
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="sdeid: %(levelname)s %(name)s: %(message)s")
    try:
        if args.socket_path is None and args.fd is None:
            raise ConfigError("one of --socket-path or --fd is required")
        return asyncio.run(serve(args))
    except ConfigError as e:
        print(f"sdeid: error: {e}", file=sys.stderr)
        return 1


async def serve(args: argparse.Namespace) -> int:
    from sdeid.config import load_settings
    from sdeid.control import ControlServer
    from sdeid.model.abi import Priority
    from sdeid.proto.daemon import Daemon2
    from sdeid.qmp_hooks import QmpHooks

    settings = load_settings(args.config, args.event, args.sdei_version, args.private_slots,
                             args.shared_slots, args.nmi_event)
    config = settings.platform
    nmi = next((e for e in config.static_events if e.number == settings.nmi_event), None)
    if nmi is not None and nmi.priority != Priority.CRITICAL:
        logging.getLogger("sdeid").warning(
            "NMI event %d has normal priority: it cannot preempt a running normal handler",
            nmi.number)
    daemon = Daemon2(config, state_file=args.state_file,
                     allowed_uids={os.getuid(), *args.allow_uid},
                     allow_any_uid=args.allow_any_uid, nmi_event=settings.nmi_event,
                     nmi_ghes=args.nmi_ghes)
    if args.nmi_ghes and (settings.nmi_event is None or args.qmp is None):
        raise ConfigError("--nmi-ghes needs --nmi-event N (the GHES source's event) and "
                          "--qmp PATH (the record is written through QEMU's monitor)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    control = ControlServer(daemon, on_quit=stop.set)
    hooks = None
    try:
        if args.socket_path is not None:
            await daemon.listen_path(args.socket_path)
        else:
            await daemon.listen_fd(args.fd)
        if args.control_socket is not None:
            await control.listen(args.control_socket)
        if args.qmp is not None:
            hooks = QmpHooks(args.qmp, daemon._observe,
                             on_shutdown=stop.set if args.exit_with_vm else None)
            daemon.record_writer = hooks.inject_ghes
            await hooks.start()
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"READY\n")
            os.close(args.ready_fd)
        await stop.wait()
        logging.getLogger("sdeid").info("stopping")
    finally:
        if hooks is not None:
            await hooks.close()
        await control.close()
        await daemon.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
