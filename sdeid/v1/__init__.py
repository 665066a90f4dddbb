"""LEGACY: protocol 1, the sdei-user device of the retired QEMU 10.0 series.

Protocol 2 (sdeid.proto, qemu-patches/v2) is the protocol; `sdeid` and
`sdeid run` speak it by default.  This package is kept only because the
GHES test (tests/test_linux_ghes.py) and the demo (sdeid/testing/guest_demo.py)
need a QEMU with a GHES error source notified by SDEI, and only the v1
series has one yet.  It is served by `sdeid --protocol 1` and
`sdeid.launcher.Launch(protocol=1)` (the launcher API's default until then).

When the v2 GHES source lands and those two move to v2, delete:
  sdeid/v1/, qemu-patches/0*.patch, qemu-patches/series, qemu-patches/base,
  LEGACY_V1 in sdeid/cli.py (and the --protocol 1 branch), SERIES[1] and
  the sdei-user device line in sdeid/launcher.py (make protocol=2 Launch's
  default), the `qemu_v1` fixture in tests/test_linux_guest.py, and the
  Daemon import under TYPE_CHECKING in sdeid/control.py.
No unit test covers this package any more (its tests were ported to v2 and
removed); the GHES test exercises it end to end.

  daemon.py   the asyncio device server (was sdeid/server.py)
  session.py  one connection bound to the model (was sdeid/session.py)
  spec.py, codec.py  the v1 wire format (was sdeid/wire/)
"""
