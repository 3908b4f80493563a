"""``kvspec replay TRACE --target T``: re-run a trace and report the first divergence."""

from __future__ import annotations

import argparse

from kvspec.conformance.report import format_failure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="a kvspec-trace JSON file")
    parser.add_argument("--target", default="impl", help="impl, vllm, or module.path:factory")
    parser.add_argument(
        "--mode", choices=["strict", "abstract"], default=None,
        help="override the mode recorded in the trace",
    )


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.engines.replay import replay_trace
    from kvspec.conformance.trace import Trace, TraceError

    try:
        trace = Trace.load(args.trace)
    except (OSError, TraceError) as exc:
        print(f"kvspec replay: {exc}")
        return 2
    result = replay_trace(trace, args.target, mode=args.mode)
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
