#!/usr/bin/env python3
"""Check that kvspec's verdicts hold across seeds: no false alarm, no missed mutant.

Runs ``kvspec check`` on kvspec's own allocator at every level, profile and mode, under
the given settings and seeds (every run must pass), and the mutant zoo under the given
seeds (every mutant must be caught), without the example database, and prints one line per
run and a summary with the seconds per mutant. Exit status 1 when any verdict is wrong.

    scripts/sweep-verdicts.py --settings dev ci --seeds 0-9
    scripts/sweep-verdicts.py --settings thorough --seeds 0-2 --no-mutants
    scripts/sweep-verdicts.py --no-checks --mutant-seeds 0-4
    scripts/sweep-verdicts.py --settings thorough --seeds 0-2 --levels pool manager
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from kvspec.conformance.commands.mutants import run_mutant
from kvspec.conformance.engines.pipeline import run_check
from kvspec.conformance.levels import get_level
from kvspec.conformance.mutants import MUTANTS

# (level, profile, mode): every combination kvspec check accepts
COMBINATIONS = [
    (level, profile, mode)
    for level in ("pool", "manager", "content", "hybrid")
    for profile in ("current", "classic")
    for mode in get_level(level).modes
]


def seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["dev", "ci"])
    parser.add_argument("--seeds", type=seeds, default=seeds("0-9"))
    parser.add_argument("--mutant-seeds", type=seeds, default=seeds("0-4"))
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--no-mutants", action="store_true")
    parser.add_argument("--levels", nargs="+", default=["pool", "manager", "content", "hybrid"])
    args = parser.parse_args()
    wrong = 0
    if not args.no_checks:
        for settings in args.settings:
            for level, profile, mode in COMBINATIONS:
                if level not in args.levels:
                    continue
                factory = get_level(level).load_factory("impl")
                for seed in args.seeds:
                    r = run_check(factory, level=level, profile=profile, mode=mode,
                                  settings_name=settings, seed=seed, database=None,
                                  progress=False)
                    depth = r.exhaustive.depth if r.exhaustive else "-"
                    verdict = "pass" if r.passed else f"FALSE ALARM [{r.failure.caught_by}]"
                    wrong += not r.passed
                    print(f"check {settings:<8} {level:<7} {profile:<7} {mode:<8} seed {seed}: "
                          f"{verdict}, depth {depth}, {r.stats.examples} examples, "
                          f"{r.stats.steps} steps, {r.seconds:.1f}s", flush=True)
    if not args.no_mutants:
        times: list[float] = []
        for seed in args.mutant_seeds:
            for name in MUTANTS:
                start = time.perf_counter()
                row = run_mutant(name, "ci", seed)
                times.append(time.perf_counter() - start)
                wrong += not row.caught
                print(f"mutant seed {seed} {name:<34} "
                      f"{'caught' if row.caught else 'MISSED'} by {row.caught_by} "
                      f"({row.found_by}), length {row.length}, {times[-1]:.1f}s", flush=True)
        print(f"mutants: median {statistics.median(times):.2f}s, worst {max(times):.2f}s "
              f"over {len(times)} runs")
    print("all verdicts right" if not wrong else f"{wrong} WRONG VERDICTS")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
