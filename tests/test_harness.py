"""The test harness itself: an exception that reaches the event loop's
handler fails the test that caused it (tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_exception_in_a_loop_callback_fails_the_test(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "test_inner.py").write_text(
        "import asyncio\n\n"
        "async def test_callback_raises():\n"
        "    asyncio.get_running_loop().call_soon(lambda: 1 / 0)\n"
        "    await asyncio.sleep(0.01)\n\n"
        "async def test_debug_mode_is_on():\n"
        "    assert asyncio.get_running_loop().get_debug()\n")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    # The fixture fails at teardown: pytest reports it as an error of that test.
    assert r.returncode == 1 and "1 error" in r.stdout, r.stdout
    assert "ZeroDivisionError" in r.stdout
