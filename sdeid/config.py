"""Start-up configuration: the platform's events and the dispatcher limits.

Read from a TOML file (`--config`) and/or `--event` options; every mistake
becomes a ConfigError with one line that says what is wrong.

    sdei-version = "1.1"         # or "1.0"
    private-slots = 16           # INTERRUPT_BIND slots for PPIs (FEATURES)
    shared-slots = 32            # ... and for SPIs

    nmi-event = 200              # QEMU's NMI (inject-nmi) triggers this event
                                 # (also spelt nmi_event; --nmi-event N)

    [[event]]                    # a static platform event, e.g. a GHES source
    number = 100
    type = "shared"              # or "private"
    priority = "critical"        # or "normal"

    [[event]]                    # a static event behind a device interrupt:
    number = 200                 # the dispatcher owns INTID 34 (the PL031 RTC
    priority = "critical"        # on virt) and a rising level triggers it
    intid = 34                   # (--event 200:shared:critical:intid=34)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdeid.errors import ConfigError
from sdeid.model.abi import EventType, Priority
from sdeid.model.state import build_event_table
from sdeid.model.types import EventDef, PlatformConfig

MAX_STATIC_EVENTS = 65536


@dataclass(frozen=True)
class Settings:
    """The model's configuration and what only the daemon uses."""

    platform: PlatformConfig
    nmi_event: int | None = None


def parse_event(text: str) -> EventDef:
    """NUMBER[:TYPE[:PRIORITY]][:intid=N], e.g. `100:shared:critical` or
    `200:shared:critical:intid=34`."""
    parts = text.split(":")
    keys = [p for p in parts[1:] if "=" in p]
    pos = [p for p in parts if "=" not in p]
    usage = f"--event {text!r}: expected NUMBER[:TYPE[:PRIORITY]][:intid=N]"
    if not 1 <= len(pos) <= 3 or parts[:len(pos)] != pos:
        raise ConfigError(usage)
    d: dict[str, Any] = {"number": pos[0],
                         "type": pos[1] if len(pos) > 1 else "shared",
                         "priority": pos[2] if len(pos) > 2 else "normal"}
    for k in keys:
        name, _, value = k.partition("=")
        if name != "intid" or "intid" in d:
            raise ConfigError(usage)
        d["intid"] = value
    return _event(d, f"--event {text!r}")


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
    unknown = set(d) - {"number", "type", "priority", "intid"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    intid = None
    if "intid" in d:
        raw = d["intid"]
        try:
            if isinstance(raw, bool):
                raise TypeError
            intid = int(raw, 0) if isinstance(raw, str) else int(raw)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: 'intid' must be an integer") from None
    return EventDef(number, types[t], prios[p], intid=intid)


def load_config(path: Path | None, events: list[str], version: str | None,
                private_slots: int | None, shared_slots: int | None) -> PlatformConfig:
    return load_settings(path, events, version, private_slots, shared_slots).platform


def load_settings(path: Path | None, events: list[str], version: str | None,
                  private_slots: int | None, shared_slots: int | None,
                  nmi_event: int | None = None) -> Settings:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
        unknown = set(data) - {"sdei-version", "private-slots", "shared-slots", "event",
                               "nmi-event", "nmi_event"}
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
    if nmi_event is None:
        nmi = data.get("nmi-event", data.get("nmi_event"))
        if "nmi-event" in data and "nmi_event" in data:
            raise ConfigError(f"{path}: nmi-event is given twice (nmi-event and nmi_event)")
        if nmi is not None and (not isinstance(nmi, int) or isinstance(nmi, bool)):
            raise ConfigError(f"{path}: nmi-event must be an integer, not {nmi!r}")
        nmi_event = nmi
    if nmi_event is not None and nmi_event not in seen:
        raise ConfigError(f"--nmi-event {nmi_event} is not a static event (define it, e.g. "
                          f"--event {nmi_event}:shared:critical)")
    return Settings(config, nmi_event)
