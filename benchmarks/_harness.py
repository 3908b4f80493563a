"""Shared timing for ``kvspec bench``: timeit, repeats, the median, and the machine it ran on.

Every benchmark is a *setup* that builds fresh state (not timed) and returns a *run* closure
that performs a known number of operations (timed). Each repeat gets fresh state, so a run
never measures a queue that an earlier run left shuffled or drained.

The garbage collector stays on while timing (timeit switches it off by default): allocation
pressure is part of what the free-queue benchmark compares, and a serving process runs with
the collector on.

The clock is wall time unless a benchmark asks for :data:`CPU_CLOCK`, this process's CPU
time: on a shared machine, time spent waiting for a core then counts against no contender,
which keeps a ratio of two single-threaded contenders steady when the machine is busy.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass

Run = Callable[[], object]
Setup = Callable[[int], Run]  # ops -> a closure that performs that many operations
Clock = Callable[[], float]
WALL_CLOCK: Clock = time.perf_counter
CPU_CLOCK: Clock = time.process_time


@dataclass(frozen=True)
class Measurement:
    """``ops`` operations timed ``len(seconds)`` times; the median is the figure reported."""

    ops: int
    seconds: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def ops_per_s(self) -> float:
        median = self.median_s
        return self.ops / median if median > 0 else float("inf")


def time_once(run: Run, gc_enabled: bool = True, clock: Clock = WALL_CLOCK) -> float:
    """Seconds one call of ``run`` takes on ``clock``, via timeit; the collector stays on
    unless told."""
    setup = "gc.enable()" if gc_enabled else "pass"
    return timeit.Timer(run, setup=setup, timer=clock).timeit(number=1)


def calibrate(
    setup: Setup, start_ops: int, min_time_s: float, max_ops: int, gc_enabled: bool = True
) -> int:
    """Grow the operation count (x4 a step) until one run lasts ``min_time_s``.

    The count is fixed per cell before the repeats start, so every repeat does the same work;
    slow contenders (an O(n) ``deque.remove`` at 100k blocks) get fewer operations than fast
    ones, and ops/s stays comparable.
    """
    ops = max(1, start_ops)
    while ops < max_ops:
        if time_once(setup(ops), gc_enabled) >= min_time_s:
            break
        ops = min(ops * 4, max_ops)
    return ops


def measure(setup: Setup, **kwargs) -> Measurement:
    """Median of ``repeats`` timed runs, each on fresh state from ``setup``."""
    return measure_interleaved({"": setup}, **kwargs)[""]


def measure_interleaved(
    setups: dict[str, Setup],
    *,
    repeats: int = 5,
    min_time_s: float = 0.05,
    start_ops: int = 64,
    max_ops: int = 1 << 22,
    ops: int | None = None,
    gc_enabled: bool = True,
    clock: Clock = WALL_CLOCK,
) -> dict[str, Measurement]:
    """Time several contenders on the same work, round-robin: repeat r of every contender
    runs before repeat r + 1 of any, so a burst of load from elsewhere on a shared machine
    lands on all of them rather than on one, and the ratios of one run stay fair.

    Give ``ops`` to skip calibration (the smoke tests do, with tiny counts).
    """
    counts = {
        name: ops if ops is not None else calibrate(setup, start_ops, min_time_s, max_ops,
                                                    gc_enabled)
        for name, setup in setups.items()
    }
    seconds: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(repeats):
        for name, setup in setups.items():
            seconds[name].append(time_once(setup(counts[name]), gc_enabled, clock))
    return {name: Measurement(ops=counts[name], seconds=tuple(seconds[name])) for name in setups}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, str]:
    """What a reader needs to compare numbers across machines."""
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": str(os.cpu_count()),
    }


def format_machine_info() -> str:
    info = machine_info()
    return "machine: " + "; ".join(f"{key} {value}" for key, value in info.items())


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-align the first column, right-align the rest."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def flush() -> None:
    sys.stdout.flush()
