"""``kvspec show TRACE --html out.html``: a trace as one static page.

The trace is replayed on the spec and ``--target`` (the target that produced the failure:
the trace file does not record it), and every step is drawn with both sides' states.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvspec.conformance.commands import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="a kvspec-trace JSON file (pool, manager or hybrid level)")
    parser.add_argument("--html", type=Path, required=True, metavar="OUT",
                        help="where to write the page")
    parser.add_argument("--target", default="impl",
                        help="the target to replay it on: impl, vllm, mutant:NAME or "
                        "module.path:factory (default impl)")


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.pool.targets import TargetSpecError
    from kvspec.conformance.report import count_steps
    from kvspec.conformance.show import write_html
    from kvspec.conformance.trace import Trace, TraceError

    try:
        trace = Trace.load(args.trace)
        replayed = write_html(trace, args.target, args.html)
    except (OSError, TraceError, TargetSpecError, ValueError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    print(f"{args.html}: {count_steps(len(trace.steps))}, target {args.target}: "
          f"{replayed.verdict}")
    return 0
