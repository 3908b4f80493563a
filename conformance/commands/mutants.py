"""``kvspec mutants``: run the suite against every zoo mutant and print a kill matrix.

For each mutant: caught or not, the invariant or observation that caught it, which engine
found it, how many random examples and seconds it took (minimizing included), the
exhaustive engine's shortest failing length, and the length of the reported 1-minimal
trace.
Mutants run in parallel worker processes (``--jobs``, one per CPU by default); the rows are
printed in the zoo's order whatever order they finish in.
A mutant that survives is a finding about the suite, reported, never hidden.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from kvspec.conformance.engines.pipeline import CheckResult
from kvspec.conformance.engines.settings import SETTINGS_PROFILES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--level", choices=["pool", "manager", "content", "hybrid", "all"],
                        default="all")
    parser.add_argument("--settings", choices=list(SETTINGS_PROFILES), default="ci")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0: reproducible)")
    parser.add_argument("--list", action="store_true", help="list the zoo and exit")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="worker processes (default: one per CPU; 1: run in this process)")


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


def worker_groups(names: list[str]) -> list[list[str]]:
    """The tasks handed to worker processes: the content level's mutants together (their
    worker imports torch once), first, then every other mutant alone, in the order given."""
    from kvspec.conformance.mutants import MUTANTS

    content = [n for n in names if MUTANTS[n].level == "content"]
    return ([content] if content else []) + [[n] for n in names if n not in content]


def _run_group(names: list[str], settings_name: str, seed: int | None) -> list[KillRow]:
    return [run_mutant(name, settings_name, seed) for name in names]


def run_mutants(names: list[str], settings_name: str = "ci", seed: int | None = 0,
                jobs: int = 1) -> Iterator[KillRow]:
    """:func:`run_mutant` for each name, in ``jobs`` worker processes; the rows come in
    the order of ``names``, each as soon as it and every row before it are done."""
    if jobs <= 1 or len(names) <= 1:
        for name in names:
            yield run_mutant(name, settings_name, seed)
        return
    groups = worker_groups(names)
    # Fresh interpreters (spawn), not forks: only the content worker imports torch.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(groups)), mp_context=context) as pool:
        futures = [pool.submit(_run_group, group, settings_name, seed) for group in groups]
        holder = {n: (group, future) for group, future in zip(groups, futures, strict=True)
                  for n in group}
        done: dict[str, KillRow] = {}
        try:
            for name in names:
                if name not in done:
                    group, future = holder[name]
                    done.update(zip(group, future.result(), strict=True))
                yield done.pop(name)
        finally:
            for future in futures:
                future.cancel()


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.commands import Interrupted, UsageError
    from kvspec.conformance.mutants import MUTANTS

    chosen = args.names or [
        n for n, m in MUTANTS.items() if args.level == "all" or m.level == args.level
    ]
    unknown = [n for n in chosen if n not in MUTANTS]
    if unknown:
        raise UsageError(f"unknown mutant(s) {unknown}; see kvspec mutants --list")
    if args.list:
        for n in chosen:
            print(f"  {n:<34} {MUTANTS[n].level:<8} {MUTANTS[n].summary}")
        return 0
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}, expected 1 or more")
    jobs = args.jobs or os.cpu_count() or 1
    not_run = needing_torch(chosen)
    if not_run:
        print(f"skipped: {len(not_run)} store mutant(s) ({', '.join(not_run)}): the content "
              "level needs torch, which is not installed (pip install 'kvspec[store]')")
        chosen = [n for n in chosen if n not in not_run]
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    start = time.perf_counter()
    try:
        for row in run_mutants(chosen, args.settings, args.seed, jobs):
            rows.append(row)
            print(format_row(row), flush=True)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {len(rows)} of {len(chosen)} mutants") from None
    wall = time.perf_counter() - start
    print("(exhaustive: the exhaustive engine's shortest failing length, or >d when it found "
          "none to depth d; length: the reported, 1-minimal trace)")
    caught = [r for r in rows if r.caught]
    workers = min(jobs, len(rows))
    where = f"{workers} worker processes" if workers > 1 else "in this process"
    print(f"\n{len(caught)}/{len(rows)} mutants caught in {wall:.1f} s ({where})"
          + (f"; {len(not_run)} store mutants not run: no torch" if not_run else ""))
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
