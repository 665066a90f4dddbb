"""Start-up configuration: the platform's events and the dispatcher limits.

Read from a TOML file (`--config`) and/or `--event` options; every mistake
becomes a ConfigError with one line that says what is wrong.

    sdei-version = "1.1"         # or "1.0"
    private-slots = 16           # INTERRUPT_BIND slots for PPIs (FEATURES)
    shared-slots = 32            # ... and for SPIs

    [[event]]                    # a static platform event, e.g. a GHES source
    number = 100
    type = "shared"              # or "private"
    priority = "critical"        # or "normal"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from sdeid.errors import ConfigError
from sdeid.model.abi import EventType, Priority
from sdeid.model.state import build_event_table
from sdeid.model.types import EventDef, PlatformConfig

MAX_STATIC_EVENTS = 65536


def parse_event(text: str) -> EventDef:
    """NUMBER[:TYPE[:PRIORITY]], e.g. `100:shared:critical`."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3:
        raise ConfigError(f"--event {text!r}: expected NUMBER[:TYPE[:PRIORITY]]")
    return _event({"number": parts[0],
                   "type": parts[1] if len(parts) > 1 else "shared",
                   "priority": parts[2] if len(parts) > 2 else "normal"}, f"--event {text!r}")


def _event(d: dict[str, Any], where: str) -> EventDef:
    try:
        number = int(d["number"], 0) if isinstance(d["number"], str) else int(d["number"])
    except (KeyError, ValueError, TypeError):
        raise ConfigError(f"{where}: 'number' must be an integer") from None
    types = {"shared": EventType.SHARED, "private": EventType.PRIVATE}
    prios = {"normal": Priority.NORMAL, "critical": Priority.CRITICAL}
    t, p = str(d.get("type", "shared")), str(d.get("priority", "normal"))
    if t not in types:
        raise ConfigError(f"{where}: type must be 'shared' or 'private', not {t!r}")
    if p not in prios:
        raise ConfigError(f"{where}: priority must be 'normal' or 'critical', not {p!r}")
    unknown = set(d) - {"number", "type", "priority"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return EventDef(number, types[t], prios[p])


def load_config(path: Path | None, events: list[str], version: str | None,
                private_slots: int | None, shared_slots: int | None) -> PlatformConfig:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
        unknown = set(data) - {"sdei-version", "private-slots", "shared-slots", "event"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    ver = version or str(data.get("sdei-version", "1.1"))
    if ver not in ("1.0", "1.1"):
        raise ConfigError(f"SDEI version must be 1.0 or 1.1, not {ver!r}")
    priv = private_slots if private_slots is not None else data.get("private-slots", 16)
    shr = shared_slots if shared_slots is not None else data.get("shared-slots", 32)
    if not isinstance(priv, int) or not 0 <= priv <= 16:
        raise ConfigError(f"private-slots must be 0..16 (one per PPI), not {priv!r}")
    if not isinstance(shr, int) or not 0 <= shr <= 988:
        raise ConfigError(f"shared-slots must be 0..988 (one per SPI), not {shr!r}")
    defs = [_event(e, f"{path} [[event]] #{i + 1}")
            for i, e in enumerate(data.get("event", []))]
    defs += [parse_event(e) for e in events]
    if len(defs) > MAX_STATIC_EVENTS:
        raise ConfigError(f"at most {MAX_STATIC_EVENTS} static events")
    config = PlatformConfig(version_minor=int(ver[-1]), private_slots=priv,
                            shared_slots=shr, static_events=tuple(defs))
    seen: set[int] = set()
    for ev in defs:
        if ev.number in seen:
            raise ConfigError(f"event {ev.number} is defined twice")
        seen.add(ev.number)
    try:
        build_event_table(config)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return config
