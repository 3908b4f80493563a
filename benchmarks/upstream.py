"""``kvspec bench upstream``: kvspec's allocator against upstream vLLM 0.33.0's, on the same work.

``python -m kvspec.benchmarks.upstream [--ops N] [--requests R] [--repeats K] [--clock cpu|wall]
[--trace FILE | --save-trace FILE] [--no-gc] [--quick]``

Three comparisons, each a ratio of median times measured in the same run: repeats interleaved
(``kvspec.benchmarks._harness``), every repeat on a fresh pool or manager built outside the
timing, and by default this process's CPU time, so that waiting for a core on a busy machine
counts against neither side. The timed loops call the two libraries' own objects directly:
no protocol adapter, no id-to-block translation, one replay function for both sides that
differs only in the bound methods and the trailing arguments it is handed.

Pool, per-block and batched (this module, on the trace of :mod:`kvspec.benchmarks.pool_ops`)
    One recorded trace of pool operations, replayed per request the way a KV-cache manager
    calls its pool: ``get_cached_block`` per block hash until the first miss, ``touch`` of the
    hits, ``get_new_blocks`` for the rest, caching of the new full blocks, and
    ``free_blocks`` of the table reversed at departure. Caching has the two call shapes that
    matter: *per-block*, one ``cache_full_blocks`` call per newly full block (how a decode step
    caches), and *batched*, one call per request for all its new full blocks (how a prefill
    chunk caches, and how ``KVCacheManager.cache_blocks`` calls the pool). Upstream's
    ``cache_full_blocks`` reads the hashes from ``request.block_hashes``; it is handed an
    object holding the request's hash list, built once per request outside the timing, as the
    real request object exists before the manager sees it.

Manager (:mod:`kvspec.benchmarks.scheduler_trace`)
    kvspec's ``KVCacheManager`` against upstream's on one recorded scheduler trace.

Before timing, each side replays its trace once with checks: every lookup hits as recorded
and both sides end in the same observable state, so the timed runs provably did the same work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvspec.benchmarks import scheduler_trace
from kvspec.benchmarks._harness import (
    CPU_CLOCK,
    WALL_CLOCK,
    Clock,
    Run,
    format_machine_info,
    measure_interleaved,
)
from kvspec.benchmarks.comparison import (
    DEFAULT_REPEATS,
    Comparison,
    check_hits,
    format_comparison,
)
from kvspec.benchmarks.pool_ops import (
    Event,
    PoolTrace,
    compile_events,
    count_calls,
    load_trace,
    record_ops,
    replay,
    save_trace,
)
from kvspec.benchmarks.pool_trace import TraceShape
from kvspec.conformance.cli import Parser

DEFAULT_OPS = 100_000
#: Big enough that eviction by reuse happens all the time, small enough to stay in cache.
DEFAULT_SHAPE = TraceShape(
    num_gpu_blocks=2048,
    num_prompts=16,
    prompt_blocks=(4, 32),
    unique_blocks=(1, 8),
    max_live=32,
    num_requests=100_000,  # more than any --ops needs; the recording is cut at --ops
    seed=0,
)
QUICK_OPS = 2_000
#: Tokens per block given to upstream's ``cache_full_blocks``; equal to its pool's
#: ``hash_block_size``, so upstream uses the request's hashes as they are.
HASH_BLOCK_SIZE = 16


@dataclass(frozen=True)
class CallShape:
    """How the pool comparison calls the pools (see the module docstring)."""

    name: str
    title: str
    per_block: bool  # one cache_full_blocks call per block, else one per admission
    prefix_lookup: bool  # a pool with get_cached_prefix looks a request up in one call


SHAPES = {
    shape.name: shape for shape in (
        CallShape("pool, per-block", "a lookup per hash, a cache call per block",
                  per_block=True, prefix_lookup=False),
        CallShape("pool, batched", "a lookup per hash, a cache call per request",
                  per_block=False, prefix_lookup=False),
        CallShape("pool, as each manager calls it", "a cache call per request; kvspec one "
                  "prefix lookup per request, vLLM a lookup per hash",
                  per_block=False, prefix_lookup=True),
    )
}
CLOCKS = {"cpu": CPU_CLOCK, "wall": WALL_CLOCK}


# ------------------------------------------------------------------ the two pools


class _RequestHashes:
    """What upstream's ``cache_full_blocks`` reads from a request (KV events off)."""

    __slots__ = ("block_hashes",)

    def __init__(self, block_hashes: list[bytes]) -> None:
        self.block_hashes = block_hashes


@dataclass(frozen=True)
class PoolContender:
    """How to build one library's pool and call its ``cache_full_blocks``; ``prefix_lookup``
    names its method looking up a request's hashes in one call, if it has one."""

    label: str
    make_pool: Callable[[int], Any]
    wrap_hashes: Callable[[list[bytes]], Any]
    cache_args: tuple
    prefix_lookup: str | None = None

    def replay(self, pool: Any, events: Sequence[Event], hash_args: Sequence[Any],
               shape: CallShape, hits_out: list[int] | None = None) -> dict[int, list[Any]]:
        prefix = (getattr(pool, self.prefix_lookup)
                  if shape.prefix_lookup and self.prefix_lookup else None)
        return replay(pool, events, hash_args, self.cache_args, shape.per_block, hits_out,
                      prefix)

    def calls(self, events: Sequence[Event], shape: CallShape) -> int:
        return count_calls(events, shape.per_block,
                           shape.prefix_lookup and self.prefix_lookup is not None)


def _impl_pool(num_blocks: int) -> Any:
    from kvspec.impl.block_pool import BlockPool

    return BlockPool(num_blocks)


def _vllm_pool(num_blocks: int) -> Any:
    from kvspec.conformance.upstream.vllm_pool import VllmPool

    return VllmPool(num_blocks).pool


def pool_contenders() -> dict[str, PoolContender]:
    return {
        "impl": PoolContender("kvspec impl.BlockPool", _impl_pool, list, (0,),
                              prefix_lookup="get_cached_prefix"),
        "vllm": PoolContender("vLLM 0.33.0 BlockPool", _vllm_pool, _RequestHashes,
                              (HASH_BLOCK_SIZE, 0)),
    }


def hash_args_for(events: Sequence[Event], contender: PoolContender) -> list[Any]:
    """Per request, the first argument of its ``cache_full_blocks`` calls (built untimed)."""
    num_requests = 1 + max((ev[1] for ev in events), default=-1)
    args: list[Any] = [None] * num_requests
    for ev in events:
        if ev[0] == "admit":
            args[ev[1]] = contender.wrap_hashes(ev[5])
    return args


def end_state(pool: Any, tables: dict[int, list[Any]]) -> dict[str, object]:
    """What both pools must agree on after a replay: every block, the queue, the tables."""
    return {
        "ref_cnt": [b.ref_cnt for b in pool.blocks],
        "block_hash": [None if b.block_hash is None else bytes(b.block_hash[:-4])
                       for b in pool.blocks],
        "free_queue": [b.block_id for b in pool.free_block_queue.get_all_free_blocks()],
        "num_free_blocks": pool.get_num_free_blocks(),
        "tables": {req: [b.block_id for b in table] for req, table in tables.items()},
    }


def replay_checked(
    contender: PoolContender, trace: PoolTrace, events: Sequence[Event], shape: CallShape
) -> dict[str, object]:
    """Replay once untimed; every admission must hit exactly as recorded. Returns the end."""
    pool = contender.make_pool(trace.num_gpu_blocks)
    hits: list[int] = []
    expected = [ev[6] for ev in events if ev[0] == "admit"]
    try:
        tables = contender.replay(pool, events, hash_args_for(events, contender), shape, hits)
    except Exception:
        check_hits(contender.label, hits, expected)  # a divergence explains the failure
        raise
    check_hits(contender.label, hits, expected)
    return end_state(pool, tables)


def compare_pools(
    trace: PoolTrace, shape: CallShape, *, repeats: int = DEFAULT_REPEATS,
    gc_enabled: bool = True, clock: Clock = CPU_CLOCK,
) -> Comparison:
    """Time both pools on ``trace`` in call ``shape``, after one checked replay each."""
    events = compile_events(trace.ops)
    contenders = pool_contenders()
    ends = {name: replay_checked(c, trace, events, shape) for name, c in contenders.items()}
    if ends["impl"] != ends["vllm"]:
        raise AssertionError(
            "compare_pools: kvspec's pool and upstream's ended the trace in different states; "
            "the timed runs would not do the same work (run kvspec check --target vllm)"
        )

    def setup_for(contender: PoolContender) -> Callable[[int], Run]:
        hash_args = hash_args_for(events, contender)

        def setup(ops: int) -> Run:
            pool = contender.make_pool(trace.num_gpu_blocks)
            return lambda: contender.replay(pool, events, hash_args, shape)

        return setup

    calls = {name: c.calls(events, shape) for name, c in contenders.items()}
    measured = measure_interleaved(  # ops=1: the trace fixes the work, no calibration
        {name: setup_for(c) for name, c in contenders.items()},
        repeats=repeats, gc_enabled=gc_enabled, clock=clock, ops=1,
    )
    return Comparison(shape.name, shape.title, calls,
                      {name: c.label for name, c in contenders.items()}, measured)


def format_trace(trace: PoolTrace) -> str:
    counts = trace.counts()
    mix = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    return "\n".join([
        f"trace: {len(trace.ops):,} pool operations on {trace.num_gpu_blocks:,} blocks "
        + (f"(seed {trace.shape.seed})" if trace.shape else "(loaded)"),
        f"  {mix}; {trace.hits():,} of {counts['get_cached_block']:,} lookups hit"
        + ("" if trace.evictions is None else f"; {trace.evictions:,} cached blocks evicted"),
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ops", type=int, default=None,
        help=f"pool operations in the pool trace (default {DEFAULT_OPS:,})",
    )
    parser.add_argument(
        "--requests", type=int, default=None,
        help="requests in the scheduler trace of the manager comparison "
        f"(default {scheduler_trace.DEFAULT_SHAPE.num_requests:,})",
    )
    parser.add_argument(
        "--repeats", type=int, default=None,
        help=f"timed runs per contender, interleaved; the median is reported (default "
        f"{DEFAULT_REPEATS})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SHAPE.seed, help="seed of both request mixes"
    )
    parser.add_argument(
        "--trace", type=Path, default=None,
        help="replay this recorded pool trace file instead of recording one",
    )
    parser.add_argument(
        "--save-trace", type=Path, default=None,
        help="write the recorded pool trace to this file (JSON)",
    )
    parser.add_argument("--no-gc", action="store_true", help="time with the garbage collector off")
    parser.add_argument(
        "--clock", choices=CLOCKS, default="cpu",
        help="cpu (default): this process's CPU time, steady on a busy machine; wall: elapsed",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help=f"{QUICK_OPS:,} pool operations, a small scheduler trace, 3 repeats: checks that "
        "it runs",
    )


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.upstream.vllm_pool import VllmNotInstalledError

    ops = args.ops or (QUICK_OPS if args.quick else DEFAULT_OPS)
    repeats = args.repeats or (3 if args.quick else DEFAULT_REPEATS)
    if args.trace is not None:
        trace = load_trace(args.trace)
    else:
        from kvspec.conformance.pool.targets import impl_pool_factory

        shape = TraceShape(**{**asdict(DEFAULT_SHAPE), "seed": args.seed})
        trace = record_ops(impl_pool_factory, shape, ops)
    if args.save_trace is not None:
        save_trace(trace, args.save_trace)
    schedule = scheduler_trace.record_schedule(
        scheduler_trace.shape_for(args.requests, args.seed, quick=args.quick))
    gc_enabled, clock = not args.no_gc, CLOCKS[args.clock]
    print(format_machine_info())
    print(
        f"== upstream: kvspec against vLLM 0.33.0, called directly, {repeats} runs each, "
        f"interleaved, median of {args.clock} time; garbage collector "
        f"{'off' if args.no_gc else 'on'}"
    )
    print(format_trace(trace))
    sys.stdout.flush()
    try:
        for shape in SHAPES.values():
            print(format_comparison(
                compare_pools(trace, shape, repeats=repeats, gc_enabled=gc_enabled,
                              clock=clock)))
            sys.stdout.flush()
        manager = scheduler_trace.compare_managers(
            schedule, repeats=repeats, gc_enabled=gc_enabled, clock=clock)
    except VllmNotInstalledError as exc:
        print(f"kvspec bench upstream: {exc}", file=sys.stderr)
        return 2
    print(scheduler_trace.format_trace(schedule))
    print(format_comparison(manager))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="kvspec bench upstream",
        description="kvspec's BlockPool and KVCacheManager against upstream vLLM 0.33.0's",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
