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

import logging
from typing import Any


class SdeidError(Exception):
    """Root of every error sdeid raises on purpose."""


class PeerError(SdeidError):
    """The peer on the device or control socket broke the protocol."""


class ConfigError(SdeidError):
    """The daemon was started with a configuration it cannot serve."""


class StateError(SdeidError):
    """A dispatcher state blob cannot be restored."""


class ConnectionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for one connection: its name prefixes each message.

    Not a child logger per connection: logging keeps every logger it ever
    made, so a front-end that reconnects forever would grow the process."""

    def __init__(self, logger: logging.Logger, name: str) -> None:
        super().__init__(logger, {"conn": name})

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['conn']}: {msg}", kwargs  # type: ignore[index]
