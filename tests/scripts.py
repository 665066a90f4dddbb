"""The project's scripts (scripts/, no .py suffix) as modules, for the tests
that drive them in-process."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """scripts/NAME as module NAME with '-' as '_', loaded once.  It is
    registered in sys.modules before it runs: dataclasses look their module
    up there."""
    modname = name.replace("-", "_")
    if modname in sys.modules:
        return sys.modules[modname]
    loader = importlib.machinery.SourceFileLoader(modname, str(ROOT / "scripts" / name))
    spec = importlib.util.spec_from_loader(modname, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    loader.exec_module(mod)
    return mod
