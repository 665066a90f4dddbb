"""Let a script in scripts/ run from a fresh clone, outside any venv.

``import pyenv; pyenv.ensure()`` at the top of a script: when the
project's packages cannot be imported, it sets up the project venv the way
scripts/test does (scripts/env.sh) and re-executes the script under it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure() -> None:
    try:
        import construct  # noqa: F401

        import sdeid  # noqa: F401
        return
    except ImportError:
        pass
    venv = Path(os.environ.get("SDEID_VENV", ROOT / ".venv"))
    py = venv / "bin" / "python"
    if os.environ.get("SDEID_PYENV_REEXEC") == "1":
        sys.exit(f"{sys.argv[0]}: the project venv {venv} lacks sdeid's dependencies")
    subprocess.run(["bash", "-c", '. "$1/scripts/env.sh" && sdeid_python_env', "env",
                    str(ROOT)], check=True, stdout=sys.stderr)
    os.environ["SDEID_PYENV_REEXEC"] = "1"
    os.execv(str(py), [str(py), *sys.argv])


def ensure_extra(extra: str, module: str) -> None:
    """Install the project's optional `extra` into the running venv when
    `module` cannot be imported (after ensure(): we run in the venv)."""
    try:
        __import__(module)
        return
    except ImportError:
        pass
    print(f"{Path(sys.argv[0]).name}: installing the [{extra}] extra into {sys.prefix}",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extra}]"],
                   check=True, stdout=sys.stderr)

