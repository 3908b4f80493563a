"""``kvspec mutants``: run the suite against every zoo mutant and print a kill matrix.

For each mutant: caught or not, the invariant or observation that caught it, which engine
found it, how many random examples and seconds it took (minimizing included), the
exhaustive engine's shortest failing length, and the length of the reported 1-minimal
trace.
A mutant that survives is a finding about the suite, reported, never hidden.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field

from kvspec.conformance.engines.pipeline import CheckResult
from kvspec.conformance.engines.settings import SETTINGS_PROFILES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--level", choices=["pool", "manager", "content", "all"], default="all")
    parser.add_argument("--settings", choices=list(SETTINGS_PROFILES), default="ci")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0: reproducible)")
    parser.add_argument("--list", action="store_true", help="list the zoo and exit")


@dataclass
class KillRow:
    name: str
    level: str
    caught: bool
    caught_by: str
    found_by: str
    examples: int | None
    seconds: float
    exhaustive: str
    """The exhaustive engine's shortest failure length, or ``>d`` when it found none within
    the depth d it completed."""
    length: int | None
    """The reported (1-minimal) trace's length."""
    result: CheckResult | None = field(default=None, repr=False)
    """The whole check result (its failure, its exhaustive search)."""

    @classmethod
    def from_result(cls, name: str, level: str, result: CheckResult) -> KillRow:
        failure = result.failure
        e = result.exhaustive
        if e is None:
            shortest = "-"
        elif result.found_by == "exhaustive":
            shortest = str(result.found_length)
        else:
            shortest = f">{e.depth}"
        return cls(
            name=name,
            level=level,
            caught=failure is not None,
            caught_by=failure.caught_by if failure else "-",
            found_by=result.found_by or "-",
            examples=result.examples_to_failure,
            seconds=result.seconds,
            exhaustive=shortest,
            length=len(failure.steps) if failure else None,
            result=result,
        )


def run_mutant(name: str, settings_name: str = "ci", seed: int | None = 0) -> KillRow:
    """Run the suite against one mutant; no example database, so each run is fresh."""
    from kvspec.conformance.engines.pipeline import run_check
    from kvspec.conformance.mutants import MUTANTS

    mutant = MUTANTS[name]
    result = run_check(
        mutant.factory,
        target_name=f"mutant:{name}",
        level=mutant.level,
        profile=mutant.profile,
        settings_name=settings_name,
        seed=seed,
        database=None,
        progress=False,
    )
    return KillRow.from_result(name, mutant.level, result)


def needing_torch(names: list[str]) -> list[str]:
    """The content-level (store) mutants among ``names`` when torch cannot be imported."""
    from kvspec.conformance.mutants import MUTANTS

    content = [n for n in names if MUTANTS[n].level == "content"]
    if content:
        try:
            import torch  # noqa: F401
        except ImportError:
            return content
    return []


HEADER = (f"{'mutant':<34} {'level':<7} {'caught':<6} {'caught by':<26} {'found by':<10} "
          f"{'examples':>8} {'seconds':>8} {'exhaustive':>10} {'length':>6}")


def format_row(row: KillRow) -> str:
    return (
        f"{row.name:<34} {row.level:<7} {'yes' if row.caught else 'NO':<6} "
        f"{row.caught_by:<26} {row.found_by:<10} {row.examples or '-':>8} "
        f"{row.seconds:>8.2f} {row.exhaustive:>10} "
        f"{row.length if row.length is not None else '-':>6}"
    )


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.mutants import MUTANTS

    chosen = args.names or [
        n for n, m in MUTANTS.items() if args.level == "all" or m.level == args.level
    ]
    unknown = [n for n in chosen if n not in MUTANTS]
    if unknown:
        from kvspec.conformance.commands import UsageError

        raise UsageError(f"unknown mutant(s) {unknown}; see kvspec mutants --list")
    if args.list:
        for n in chosen:
            print(f"  {n:<34} {MUTANTS[n].level:<8} {MUTANTS[n].summary}")
        return 0
    not_run = needing_torch(chosen)
    if not_run:
        print(f"skipped: {len(not_run)} store mutant(s) ({', '.join(not_run)}): the content "
              "level needs torch, which is not installed (pip install 'kvspec[store]')")
        chosen = [n for n in chosen if n not in not_run]
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    for n in chosen:
        try:
            row = run_mutant(n, args.settings, args.seed)
        except KeyboardInterrupt:
            from kvspec.conformance.commands import Interrupted

            raise Interrupted(f"interrupted while running mutant {n}, after {len(rows)} of "
                              f"{len(chosen)} mutants") from None
        rows.append(row)
        print(format_row(row), flush=True)
    print("(exhaustive: the exhaustive engine's shortest failing length, or >d when it found "
          "none to depth d; length: the reported, 1-minimal trace)")
    caught = [r for r in rows if r.caught]
    print(f"\n{len(caught)}/{len(rows)} mutants caught"
          + (f" ({len(not_run)} store mutants not run: no torch)" if not_run else ""))
    if caught:
        print(
            f"median seconds to catch (incl. minimizing): "
            f"{statistics.median(r.seconds for r in caught):.2f}, worst "
            f"{max(r.seconds for r in caught):.2f}; "
            f"median length: {statistics.median(r.length or 0 for r in caught)}"
        )
    survivors = [r.name for r in rows if not r.caught]
    if survivors:
        print(f"NOT CAUGHT: {', '.join(survivors)}")
        return 1
    return 0
