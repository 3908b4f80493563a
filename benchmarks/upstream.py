"""``kvspec bench upstream``: kvspec's ``BlockPool`` against upstream vLLM 0.33.0's, same trace.

``python -m benchmarks.upstream [--ops N] [--repeats R] [--trace FILE | --save-trace FILE]``

One recorded trace of pool operations is replayed on both pools through the same
:class:`~kvspec.conformance.pool.protocol.PoolTarget` adapters the conformance suite drives
(``kvspec.conformance.pool.targets.impl_pool_factory`` and
``kvspec.conformance.upstream.vllm_pool.vllm_pool_factory``),
by the same replay loop. Both sides therefore pay the same kind of id-to-block translation, and
the ratio compares the pools, not two harnesses.

The trace
    Requests arrive and depart the way a serving engine drives a pool (the request mix of
    ``kvspec bench pool``: a few system prompts with skewed popularity, a unique suffix, an
    unhashed partial last block). Each arrival becomes pool operations: ``get_cached_block``
    per block of its hash chain until the first miss, ``touch`` of the hits (reviving
    eviction candidates out of the free queue), ``get_new_blocks`` for the rest (evicting the
    oldest free cached blocks once the never-used ones run out) and ``cache_block`` per new
    full block; a departure is one ``free_blocks`` of its table in reverse. The operations are
    recorded once, against kvspec's pool, and cut at exactly ``--ops``; they name requests and
    table positions, not block ids, so the replay resolves ids on the pool it drives.

Before timing, each pool replays the trace once untimed with checks: every lookup must hit or
miss as recorded and both pools must end in the same observable state, so the two timed runs
provably did the same work. Timing then follows ``kvspec.benchmarks._harness``: a fresh pool per
repeat (not timed), repeats interleaved across the two pools, the median reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kvspec.benchmarks._harness import (
    Measurement,
    Run,
    format_machine_info,
    format_table,
    measure_interleaved,
)
from kvspec.benchmarks.pool_trace import TraceShape, record_trace
from kvspec.conformance.pool.protocol import PoolTarget

TRACE_FORMAT = "kvspec-pool-ops/1"
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

# One recorded operation (a tuple, for a fast replay loop):
#   ("get_cached_block", req, hash, hit)   hit: whether the recording pool found it
#   ("touch", req)                         touch the hits collected for req
#   ("get_new_blocks", req, n)             append n new blocks to req's table
#   ("cache_block", req, index, hash)      cache req's table[index] under hash
#   ("free_blocks", req)                   free req's table in reverse
Op = tuple
OPS_NAMES = ("get_cached_block", "touch", "get_new_blocks", "cache_block", "free_blocks")


@dataclass(frozen=True)
class PoolTrace:
    """A recorded operation list and the pool it was recorded on."""

    num_gpu_blocks: int
    ops: tuple[Op, ...]
    shape: TraceShape | None = None  # None when loaded from a file written elsewhere
    evictions: int | None = None  # cached blocks popped for reuse, counted while recording

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(OPS_NAMES, 0)
        for op in self.ops:
            out[op[0]] += 1
        return out

    def hits(self) -> int:
        return sum(1 for op in self.ops if op[0] == "get_cached_block" and op[3])


def record_ops(factory: Callable[..., PoolTarget], shape: TraceShape, num_ops: int) -> PoolTrace:
    """Run the request mix on a pool from ``factory`` and record its first ``num_ops`` calls."""
    pool = factory(shape.num_gpu_blocks, enable_caching=True, profile="current")
    ops: list[Op] = []
    tables: dict[int, list[int]] = {}
    evictions = 0
    for event in record_trace(shape):
        if event[0] == "admit":
            _, req, chain, partial = event
            hits: list[int] = []
            for block_hash in chain:
                found = pool.get_cached_block(block_hash)
                ops.append(("get_cached_block", req, block_hash, found is not None))
                if found is None:
                    break
                hits.append(found)
            if hits:
                pool.touch(hits)
                ops.append(("touch", req))
            missing = chain[len(hits) :]
            n = len(missing) + (1 if partial else 0)
            evictions += sum(1 for b in pool.free_block_ids()[:n] if pool.block_hash(b) is not None)
            new = pool.get_new_blocks(n)
            ops.append(("get_new_blocks", req, n))
            table = hits + new
            for index, block_hash in enumerate(missing, start=len(hits)):
                pool.cache_block(table[index], block_hash)
                ops.append(("cache_block", req, index, block_hash))
            tables[req] = table
        else:
            table = tables.pop(event[1])
            pool.free_blocks(table[::-1])
            ops.append(("free_blocks", event[1]))
        if len(ops) >= num_ops:
            break
    if len(ops) < num_ops:
        raise ValueError(
            f"record_ops: the request mix made only {len(ops)} operations; expected {num_ops} "
            "(raise num_requests in the trace shape)"
        )
    return PoolTrace(shape.num_gpu_blocks, tuple(ops[:num_ops]), shape, evictions)


def replay(pool: PoolTarget, ops: Sequence[Op]) -> None:
    """Drive ``pool`` through ``ops`` (the timed loop: no checks, no counting)."""
    tables: dict[int, list[int]] = {}
    pending: dict[int, list[int]] = {}
    get_cached_block, touch = pool.get_cached_block, pool.touch
    get_new_blocks, cache_block, free_blocks = (
        pool.get_new_blocks,
        pool.cache_block,
        pool.free_blocks,
    )
    for op in ops:
        name = op[0]
        if name == "get_cached_block":
            found = get_cached_block(op[2])
            if found is not None:
                pending.setdefault(op[1], []).append(found)
        elif name == "touch":
            hits = pending[op[1]]
            touch(hits)
        elif name == "get_new_blocks":
            req = op[1]
            tables[req] = pending.pop(req, []) + get_new_blocks(op[2])
        elif name == "cache_block":
            cache_block(tables[op[1]][op[2]], op[3])
        else:
            free_blocks(tables.pop(op[1])[::-1])


def replay_checked(pool: PoolTarget, ops: Sequence[Op], num_blocks: int) -> dict[str, object]:
    """Replay once, checking every lookup against the recording; return the end state."""
    tables: dict[int, list[int]] = {}
    pending: dict[int, list[int]] = {}
    for step, op in enumerate(ops):
        name = op[0]
        if name == "get_cached_block":
            found = pool.get_cached_block(op[2])
            if (found is not None) != op[3]:
                raise AssertionError(
                    f"replay_checked: operation {step} get_cached_block({op[2]!r}) "
                    f"{'hit' if found is not None else 'missed'} on {pool!r}, but the "
                    f"recording {'hit' if op[3] else 'missed'}; the pools diverged"
                )
            if found is not None:
                pending.setdefault(op[1], []).append(found)
        elif name == "touch":
            pool.touch(pending[op[1]])
        elif name == "get_new_blocks":
            req = op[1]
            tables[req] = pending.pop(req, []) + pool.get_new_blocks(op[2])
        elif name == "cache_block":
            pool.cache_block(tables[op[1]][op[2]], op[3])
        else:
            pool.free_blocks(tables.pop(op[1])[::-1])
    return {
        "free_block_ids": pool.free_block_ids(),
        "tables": tables,
        "ref_cnt": [pool.ref_cnt(b) for b in range(num_blocks)],
        "block_hash": [pool.block_hash(b) for b in range(num_blocks)],
        "num_free_blocks": pool.get_num_free_blocks(),
    }


# ------------------------------------------------------------------ trace files


def save_trace(trace: PoolTrace, path: Path) -> None:
    """Write ``trace`` as JSON (hashes as latin-1 text, so any bytes round-trip)."""

    def encode(op: Op) -> list:
        return [x.decode("latin-1") if isinstance(x, bytes) else x for x in op]

    data = {
        "format": TRACE_FORMAT,
        "num_gpu_blocks": trace.num_gpu_blocks,
        "shape": None if trace.shape is None else asdict(trace.shape),
        "evictions": trace.evictions,
        "ops": [encode(op) for op in trace.ops],
    }
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def load_trace(path: Path) -> PoolTrace:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != TRACE_FORMAT:
        raise ValueError(
            f"load_trace: {path} has format {data.get('format')!r}; expected {TRACE_FORMAT!r}"
        )
    hash_at = {"get_cached_block": 2, "cache_block": 3}

    def decode(op: list) -> Op:
        at = hash_at.get(op[0])
        if at is not None:
            op[at] = op[at].encode("latin-1")
        return tuple(op)

    shape = data.get("shape")
    if shape is not None:
        shape = TraceShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in shape.items()})
    ops = tuple(decode(op) for op in data["ops"])
    return PoolTrace(int(data["num_gpu_blocks"]), ops, shape, data.get("evictions"))


# ------------------------------------------------------------------ the comparison


@dataclass(frozen=True)
class Comparison:
    trace: PoolTrace
    measurements: dict[str, Measurement]

    @property
    def ratio(self) -> float:
        """kvspec's ops/s over upstream's: above 1.0, kvspec's pool is faster."""
        return self.measurements["impl"].ops_per_s / self.measurements["vllm"].ops_per_s


def contenders() -> dict[str, Callable[..., PoolTarget]]:
    from kvspec.conformance.pool.targets import impl_pool_factory
    from kvspec.conformance.upstream.vllm_pool import vllm_pool_factory

    return {"impl": impl_pool_factory, "vllm": vllm_pool_factory}


def compare(trace: PoolTrace, *, repeats: int = 5, gc_enabled: bool = True) -> Comparison:
    factories = contenders()
    ends = {
        name: replay_checked(factory(trace.num_gpu_blocks), trace.ops, trace.num_gpu_blocks)
        for name, factory in factories.items()
    }
    if ends["impl"] != ends["vllm"]:
        raise AssertionError(
            "compare: kvspec's pool and upstream's ended the trace in different states; "
            "the timed runs would not do the same work (run kvspec check --target vllm)"
        )

    def setup_for(factory: Callable[..., PoolTarget]) -> Callable[[int], Run]:
        def setup(ops: int) -> Run:
            pool = factory(trace.num_gpu_blocks)
            return lambda: replay(pool, trace.ops)

        return setup

    measured = measure_interleaved(
        {name: setup_for(f) for name, f in factories.items()},
        repeats=repeats,
        ops=len(trace.ops),
        gc_enabled=gc_enabled,
    )
    return Comparison(trace, measured)


def format_comparison(result: Comparison) -> str:
    trace, counts = result.trace, result.trace.counts()
    mix = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    lookups = counts["get_cached_block"]
    lines = [
        f"trace: {len(trace.ops):,} pool operations on {trace.num_gpu_blocks:,} blocks "
        + (f"(seed {trace.shape.seed})" if trace.shape else "(loaded)"),
        f"  {mix}; {trace.hits():,} of {lookups:,} lookups hit"
        + ("" if trace.evictions is None else f"; {trace.evictions:,} cached blocks evicted"),
    ]
    labels = {"impl": "kvspec impl.BlockPool", "vllm": "vLLM 0.33.0 BlockPool"}
    rows = []
    for name, m in result.measurements.items():
        per_run = ", ".join(f"{s:.3f}" for s in m.seconds)
        rows.append([labels[name], f"{m.ops_per_s:,.0f}", f"{m.median_s:.4f}", per_run])
    lines.append(format_table(["pool (via PoolTarget)", "ops/s", "median s", "runs (s)"], rows))
    lines.append(f"ratio impl / upstream: {result.ratio:.2f}x (above 1.0: kvspec is faster)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ops",
        type=int,
        default=None,
        help=f"pool operations in the trace (default {DEFAULT_OPS:,})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per pool, interleaved; the median is reported (default 5)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SHAPE.seed, help="seed of the request mix"
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="replay this recorded trace file instead of recording one",
    )
    parser.add_argument(
        "--save-trace", type=Path, default=None, help="write the recorded trace to this file (JSON)"
    )
    parser.add_argument("--no-gc", action="store_true", help="time with the garbage collector off")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_OPS:,} operations, 3 repeats: checks that it runs",
    )


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.upstream.vllm_pool import VllmNotInstalledError

    ops = args.ops or (QUICK_OPS if args.quick else DEFAULT_OPS)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.trace is not None:
        trace = load_trace(args.trace)
    else:
        from kvspec.conformance.pool.targets import impl_pool_factory

        shape = TraceShape(**{**asdict(DEFAULT_SHAPE), "seed": args.seed})
        trace = record_ops(impl_pool_factory, shape, ops)
    if args.save_trace is not None:
        save_trace(trace, args.save_trace)
    print(format_machine_info())
    print(
        f"== upstream: one recorded trace on kvspec's pool and vLLM's, {repeats} runs each, "
        f"interleaved, median; garbage collector {'off' if args.no_gc else 'on'}"
    )
    sys.stdout.flush()
    try:
        result = compare(trace, repeats=repeats, gc_enabled=not args.no_gc)
    except VllmNotInstalledError as exc:
        print(f"kvspec bench upstream: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvspec bench upstream",
        description="kvspec's BlockPool against upstream vLLM 0.33.0's on one recorded trace",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
