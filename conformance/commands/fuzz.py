"""``kvspec fuzz --target T``: a fuzzing campaign with HypoFuzz (:mod:`kvspec.conformance.fuzz`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvspec.conformance.commands import positive_float, positive_int, usable_level, writable_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True,
                        help="impl, vllm, mutant:NAME, or module.path:factory")
    parser.add_argument("--level", choices=["pool", "manager", "all"], default="all")
    parser.add_argument("--mode", choices=["strict", "abstract"], default="strict")
    parser.add_argument("--profile", choices=["current", "classic"], default="current")
    parser.add_argument("--workers", type=positive_int, default=2,
                        help="fuzzing processes (default 2)")
    parser.add_argument("--minutes", type=positive_float, default=10.0,
                        help="how long to fuzz before replaying what was found (default 10)")
    parser.add_argument("--db", type=Path, default=Path(".kvspec") / "fuzz-examples",
                        help="the example database folder; share it between hosts")
    parser.add_argument("--out", type=Path, default=Path(".kvspec") / "traces",
                        help="where failure traces and pytest functions are written")
    parser.add_argument("--dashboard-port", type=int, default=None, metavar="PORT",
                        help="serve HypoFuzz's dashboard on localhost:PORT (default: none)")


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.commands.check import levels_to_run
    from kvspec.conformance.fuzz import (
        HYPOFUZZ_MISSING,
        Campaign,
        hypofuzz_installed,
        run_campaign,
    )
    from kvspec.conformance.levels import check_factory

    levels, _notes = levels_to_run(args.target, args.level)
    for level in levels:
        check_factory(level, usable_level(level).load_factory(args.target), args.target,
                      profile=args.profile)
    writable_path(args.out, "--out", folder=True)
    writable_path(args.db, "--db", folder=True)
    if not hypofuzz_installed():
        print(HYPOFUZZ_MISSING, file=sys.stderr)
        return 2
    campaign = Campaign(args.target, args.level, args.mode, args.profile, args.db, args.out)
    print(f"kvspec fuzz: {args.target}, levels {', '.join(levels)}, {args.workers} workers, "
          f"{args.minutes:g} min, example database {args.db}", flush=True)
    return run_campaign(campaign, workers=args.workers, seconds=args.minutes * 60,
                        dashboard_port=args.dashboard_port)
