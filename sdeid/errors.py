"""One root error, split by whose fault it is.

- GuestError never leaves the model: a guest's bad call is answered with an
  SDEI error code, so there is deliberately no exception type for it.
- PeerError: the socket peer broke the protocol.  The session logs it and
  drops that connection; the dispatcher state is untouched.
- ConfigError: the operator's configuration is wrong; the CLI exits early
  with a one-line reason.
- StateError: a state blob cannot be restored (corrupt, wrong version,
  different topology).
Anything else that escapes is a bug in sdeid and should crash loudly in tests.
"""

from __future__ import annotations


class SdeidError(Exception):
    """Root of every error sdeid raises on purpose."""


class PeerError(SdeidError):
    """The peer on the device or control socket broke the protocol."""


class ConfigError(SdeidError):
    """The daemon was started with a configuration it cannot serve."""


class StateError(SdeidError):
    """A dispatcher state blob cannot be restored."""
