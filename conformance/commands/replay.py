"""``kvspec replay TRACE --target T``: re-run a trace and report the first divergence."""

from __future__ import annotations

import argparse

from kvspec.conformance.commands import UsageError, usable_level
from kvspec.conformance.report import format_failure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="a kvspec-trace JSON file")
    parser.add_argument("--target", default="impl", help="impl, vllm, or module.path:factory")
    parser.add_argument(
        "--mode", choices=["strict", "abstract"], default=None,
        help="override the mode recorded in the trace",
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0: no divergence; 1: a divergence; 2: a trace or target that cannot be
    replayed, or a step outside the checked scope."""
    from kvspec.conformance.engines.replay import replay_trace
    from kvspec.conformance.level import RunOptions
    from kvspec.conformance.levels import check_factory
    from kvspec.conformance.trace import Trace, TraceError

    try:
        trace = Trace.load(args.trace)
    except OSError as exc:
        raise UsageError(f"{args.trace}: cannot read it ({exc.strerror or exc})") from None
    except TraceError as exc:
        raise TraceError(f"{args.trace}: {exc}") from None
    level = usable_level(trace.level)
    config = level.config_from_json({**trace.config, **({"mode": args.mode} if args.mode
                                                         else {})})
    try:
        level.check_mode(getattr(config, "mode", "strict"))
        level.check_options(RunOptions(profile=getattr(config, "profile", "current"),
                                       mode=getattr(config, "mode", "strict"),
                                       device=getattr(config, "device", "cpu"),
                                       dtype=getattr(config, "dtype", "float32")))
    except ValueError as exc:
        raise UsageError(f"{args.trace}: {exc}") from None
    factory = level.load_factory(args.target)
    check_factory(trace.level, factory, args.target, profile=getattr(config, "profile",
                                                                     "current"))
    result = replay_trace(trace, factory, mode=args.mode)
    print(f"{args.trace}: {len(trace.steps)} steps, target {args.target}, config {trace.config}")
    for i in result.refused:
        print(f"  step {i}: refused by both, as the spec requires")
    for name, why in result.waived.items():
        print(f"  not checked: {name}, {why}")
    if result.outside_scope is not None:
        print(f"OUTSIDE SCOPE: {result.message}")
        return 2
    if result.ok:
        print(f"OK: {result.message}")
        return 0
    assert result.divergence is not None
    print("DIVERGES\n" + format_failure(result.divergence))
    return 1
