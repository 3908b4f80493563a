"""``kvspec bench [NAME] [ARGS...]``: run one benchmark, or the default set (queue, pool).

``queue`` and ``pool`` are pure Python and run anywhere. ``store`` (the K/V block store),
``upstream`` (upstream vLLM's pool and manager) and ``prove`` (z3: BMC depth and induction
time) own their arguments or need extra dependencies, so their modules are imported only
when named, and every argument after their name is passed to their ``main(argv)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from kvspec.benchmarks._harness import format_machine_info
from kvspec.conformance.commands import positive_float, positive_int

# name -> module with main(argv) -> int, for benchmarks that own their arguments.
EXTERNAL = {
    "store": "kvspec.benchmarks.block_store",
    "upstream": "kvspec.benchmarks.upstream",
    "prove": "kvspec.benchmarks.prove",
    "check": "kvspec.benchmarks.check",
}
BUILTIN = ("queue", "pool")
DEFAULT = BUILTIN


def _sizes(text: str) -> tuple[int, ...]:
    """``--sizes``: comma-separated pool sizes, each at least 1 block."""
    try:
        return tuple(positive_int(x) for x in text.split(","))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"pool sizes, comma-separated: {exc}") from None


def _add_options(parser: argparse.ArgumentParser) -> None:
    """Options of the built-in benchmarks, accepted before or after the name."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run (seconds) to check that everything works; numbers are not meaningful",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="queue: comma-separated pool sizes in blocks (default 1000,10000,100000)",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=None,
        help="timed runs per cell; the median is reported"
    )
    parser.add_argument(
        "--min-time",
        type=positive_float,
        default=None,
        help="queue: seconds one timed run should last (sets the operation count per cell)",
    )
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="queue: time with the garbage collector off, to separate its share of the cost",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        choices=[*BUILTIN, *EXTERNAL],
        help="which benchmark; default: queue then pool",
    )
    _add_options(parser)
    parser.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        help="for store, upstream and prove: arguments passed on to that benchmark",
    )


def _queue(args: argparse.Namespace) -> None:
    from kvspec.benchmarks import free_queue

    sizes = args.sizes or ((64, 256) if args.quick else free_queue.DEFAULT_SIZES)
    repeats = args.repeats or (3 if args.quick else 5)
    min_time = args.min_time or (0.002 if args.quick else 0.05)
    print(
        f"== queue: free-queue designs, {repeats} runs per cell, median; each run on a fresh "
        f"full queue, lasting >= {min_time:g} s; runs interleaved across queues; garbage "
        f"collector {'off' if args.no_gc else 'on'}"
    )
    results = free_queue.run_queue_bench(
        sizes, repeats=repeats, min_time_s=min_time, gc_enabled=not args.no_gc
    )
    print(free_queue.format_results(results))
    print()
    print(free_queue.format_summary(results))


def _pool(args: argparse.Namespace) -> None:
    from kvspec.benchmarks import pool_trace

    shape = pool_trace.QUICK_SHAPE if args.quick else pool_trace.TraceShape()
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"== pool: BlockPool on a recorded trace, {repeats} runs per profile, median")
    print(pool_trace.format_results(pool_trace.run_pool_bench(shape, repeats=repeats)))


def run(args: argparse.Namespace) -> int:
    if args.name in EXTERNAL:
        try:
            module = importlib.import_module(EXTERNAL[args.name])
        except ModuleNotFoundError as exc:
            if exc.name != EXTERNAL[args.name]:
                raise  # the benchmark exists but one of its own dependencies is missing
            print(
                f"kvspec bench {args.name}: module {EXTERNAL[args.name]} is not installed in "
                "this checkout",
                file=sys.stderr,
            )
            return 2
        return int(module.main(list(args.rest)) or 0)
    if args.rest:  # options written after a built-in benchmark's name
        from kvspec.conformance.cli import Parser

        late = Parser(prog=f"kvspec bench {args.name}")
        _add_options(late)
        late.parse_args(args.rest, namespace=args)
    names = (args.name,) if args.name else DEFAULT
    print(format_machine_info())
    for name in names:
        start = time.perf_counter()
        print()
        {"queue": _queue, "pool": _pool}[name](args)
        print(f"({name}: {time.perf_counter() - start:.1f} s)")
        sys.stdout.flush()
    return 0
