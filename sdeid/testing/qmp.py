"""A blocking QMP connection for tests and scripts, on qemu.qmp's client.

Real-guest tests are synchronous (they wait on a console, a process, a
socket), and they talk to two QMP servers: sdeid's control socket and QEMU's
operator monitor.  `QmpConnection` runs qemu.qmp's `QMPClient` on a private
event loop, so the protocol (greeting, negotiation, ids, events) is the
library's and only the blocking shape is ours:

    with QmpConnection(vm.control_path) as ctl:
        ctl.execute("sdei-trigger", {"event": 100})
        replies = ctl.execute_all([("query-stats", None), ("query-sdei", None)])

A QMP error reply raises `ControlError` (class and description), under the
package's root error type; a dead socket raises OSError or EOFError, and a
command that gets no answer within `timeout` raises TimeoutError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient

from sdeid.errors import SdeidError

T = TypeVar("T")


class ControlError(SdeidError):
    """A QMP server answered a command with an error."""

    def __init__(self, cls: str, desc: str) -> None:
        super().__init__(f"{cls}: {desc}")
        self.cls = cls
        self.desc = desc


class QmpConnection:
    """One QMP connection (negotiated) to the Unix socket at `path`.
    `timeout` bounds the connection and each command."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(f"qmp:{Path(path).name}")
        try:
            self._run(self._client.connect(str(path)))
        except ConnectError as e:
            self._close_loop()
            # The cause is what a caller can act on (no such socket, refused).
            cause = e.exc if isinstance(e.exc, OSError) else None
            if cause is not None:
                raise cause from e
            raise ConnectionError(str(e)) from e
        except BaseException:
            self._close_loop()
            raise

    def _run(self, aw: Awaitable[T]) -> T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(aw, self.timeout))
        except TimeoutError:
            raise TimeoutError(f"no QMP answer within {self.timeout:g} s") from None

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """The command's return value; ControlError for an error reply."""
        try:
            return self._run(self._client.execute(command, arguments))
        except ExecuteError as e:
            raise ControlError(e.error_class, e.error.error.desc) from None

    def execute_all(self, commands: Sequence[tuple[str, dict[str, Any] | None]]
                    ) -> list[dict[str, Any]]:
        """Send every command at once, without waiting for a reply between
        them (qemu.qmp matches the replies by id), then collect them: each as
        {"return": ...} or {"error": {"class": ..., "desc": ...}}, in the
        order of `commands`."""
        async def all_() -> list[Any]:
            return await asyncio.gather(
                *(self._client.execute(c, a) for c, a in commands), return_exceptions=True)
        out: list[dict[str, Any]] = []
        for r in self._run(all_()):
            if isinstance(r, ExecuteError):
                out.append({"error": {"class": r.error_class, "desc": r.error.error.desc}})
            elif isinstance(r, BaseException):
                raise r
            else:
                out.append({"return": r})
        return out

    def events(self) -> list[dict[str, Any]]:
        """The asynchronous events received so far (and not yet taken)."""
        self._run(asyncio.sleep(0))        # let the reader take what has arrived
        return [dict(m) for m in self._client.events.clear()]

    def _close_loop(self) -> None:
        if not self._loop.is_closed():
            self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.disconnect())
        except (OSError, EOFError, TimeoutError):
            pass
        finally:
            self._close_loop()

    def __enter__(self) -> QmpConnection:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
