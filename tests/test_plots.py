"""The benchmark pictures (sdeid.testing.plots, scripts/bench-guest --plot):
drawn from the guest's percentile lines, they are real PNGs of a sensible
size, and bad input is refused, not drawn."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdeid.testing import bench, plots


def _percentiles(base: float, tail: float) -> list[float]:
    return [base + (tail - base) * (i / 100) ** 8 for i in range(101)]


def test_the_guests_percentile_line_parses() -> None:
    line = "SDEI-BENCH-Q sdei_version " + " ".join(str(1000 + i) for i in range(101))
    m = bench.QUANTILES.match(line)
    assert m and m.group(1) == "sdei_version"
    assert [int(v) for v in m.group(2).split()] == list(range(1000, 1101))
    assert bench.QUANTILES.match("SDEI-BENCH-Q x 1 2 3") is None


def test_a_cdf_and_a_histogram_are_written_as_png(tmp_path: Path) -> None:
    out = plots.cdf_png(tmp_path / "calls.png", "calls",
                        [("SDEI_VERSION", _percentiles(20, 45)),
                         ("PE_MASK/UNMASK", _percentiles(22, 60))],
                        floor_us=[8.0 + i / 1000 for i in range(2000)], target_us=26,
                        target_label="3x floor")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    hist = plots.histogram_png(tmp_path / "g.png", "ghes", [3.0, 3.1, 2.9, 21.3], "ms")
    assert hist.read_bytes()[:4] == b"\x89PNG"


def test_a_series_without_101_percentiles_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="percentiles"):
        plots.cdf_png(tmp_path / "x.png", "x", [("short", [1.0, 2.0])])
    assert not (tmp_path / "x.png").exists()
