"""One timed comparison of kvspec against upstream vLLM on the same work, and its printout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvspec.benchmarks._harness import Measurement, format_table

#: Each timed run is short (0.05-0.5 s), so a burst of load elsewhere can spoil one; nine
#: interleaved runs keep the medians, and the ratios, steady on a shared machine.
DEFAULT_REPEATS = 9


@dataclass(frozen=True)
class Comparison:
    """kvspec's side (``"impl"``) against upstream's (``"vllm"``), timed in the same run.

    ``calls`` is, per side, the number of library calls one timed run makes.
    """

    name: str  # short, for the ratio line
    title: str  # what was timed
    calls: dict[str, int]
    labels: dict[str, str]
    measurements: dict[str, Measurement]

    @property
    def ratio(self) -> float:
        """Upstream's median time over kvspec's: above 1.0, kvspec is faster."""
        return self.measurements["vllm"].median_s / self.measurements["impl"].median_s


def format_comparison(result: Comparison) -> str:
    rows = []
    for name, m in result.measurements.items():
        per_run = ", ".join(f"{s:.3f}" for s in m.seconds)
        calls = result.calls[name]
        rows.append([result.labels[name], f"{calls:,}", f"{calls / m.median_s:,.0f}",
                     f"{m.median_s:.4f}", per_run])
    return "\n".join([
        f"-- {result.name}: {result.title}",
        format_table(["contender", "calls", "calls/s", "median s", "runs (s)"], rows),
        f"ratio impl / upstream: {result.ratio:.2f}x ({result.name}; upstream's median time "
        "over kvspec's, above 1.0: kvspec is faster)",
    ])


def check_hits(label: str, got: Sequence[int], expected: Sequence[int]) -> None:
    """Refuse a checked replay whose admissions did not hit as the recording did: the timed
    runs would then not do the recorded work."""
    for index, (hit, want) in enumerate(zip(got, expected, strict=False)):
        if hit != want:
            raise AssertionError(
                f"replay_checked: admission {index} hit {hit} on {label}, but the recording "
                f"hit {want}; the two diverged"
            )
    if len(got) != len(expected):
        raise AssertionError(
            f"replay_checked: {len(got)} admissions replayed on {label}; the recording has "
            f"{len(expected)}"
        )
