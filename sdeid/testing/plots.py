"""Pictures of the benchmark figures (scripts/bench-guest --plot DIR).

Latency CDFs, drawn from the percentiles the guest prints (SDEI-BENCH-Q:
the sample at every percentile 0..100) and from the floor's raw samples,
on a log time axis so the floor, the median and the tail fit one figure.
matplotlib is the optional `[bench]` extra; nothing else imports this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PERCENTILES = [i / 100 for i in range(101)]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise SystemExit("plots need matplotlib: .venv/bin/pip install -e '.[bench]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def cdf_png(path: Path, title: str, series: Sequence[tuple[str, Sequence[float]]],
            floor_us: Sequence[float] | None = None, target_us: float | None = None,
            target_label: str = "") -> Path:
    """One CDF per (label, percentiles 0..100 in µs); the floor's samples
    (µs) as a dashed CDF of their own, and a vertical target line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, qs in series:
        if len(qs) != len(PERCENTILES):
            raise ValueError(f"{label}: {len(qs)} percentiles, want {len(PERCENTILES)}")
        ax.step(qs, PERCENTILES, where="post", label=label)
    if floor_us:
        xs = sorted(floor_us)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", linestyle="--", color="black",
                label=f"floor: socketpair round trip (n={len(xs)})")
    if target_us is not None:
        ax.axvline(target_us, color="red", linewidth=0.8, linestyle=":", label=target_label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (µs, log scale)")
    ax.set_ylabel("fraction of samples ≤ latency")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", linewidth=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def histogram_png(path: Path, title: str, values_ms: Sequence[float], xlabel: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    ax.hist(values_ms, bins=min(40, max(5, len(values_ms) // 2)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("events")
    ax.set_title(title)
    ax.grid(True, linewidth=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
