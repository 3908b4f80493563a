"""One timed comparison of kvspec against upstream vLLM on the same work, and its printout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvspec.benchmarks._harness import Measurement, format_table


@dataclass(frozen=True)
class Comparison:
    """kvspec's side (``"impl"``) against upstream's (``"vllm"``), timed in the same run.

    ``calls`` is the number of library calls one timed run makes (the same on both sides).
    """

    title: str
    calls: int
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
        rows.append([result.labels[name], f"{m.ops_per_s:,.0f}", f"{m.median_s:.4f}", per_run])
    return "\n".join([
        f"-- {result.title}: {result.calls:,} calls per run",
        format_table(["contender", "calls/s", "median s", "runs (s)"], rows),
        f"ratio impl / upstream: {result.ratio:.2f}x ({result.title}; upstream's median time "
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
