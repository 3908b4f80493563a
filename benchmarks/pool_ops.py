"""The pool-operation trace of ``kvspec bench upstream``: recorded once, replayed on any pool.

A request mix (``kvspec.benchmarks.pool_trace.record_trace``) is played against kvspec's pool
and every pool call it makes is recorded (:func:`record_ops`), cut at exactly the number of
operations asked for. The operations name requests and table positions, not block ids, so
any pool can replay them. :func:`compile_events` groups each request's operations into one
admission or departure, and :func:`replay` makes those calls on a ``BlockPool`` (kvspec's or
upstream's: both have the same methods) the way a KV-cache manager does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvspec.benchmarks.pool_trace import TraceShape, record_trace
from kvspec.conformance.pool.protocol import PoolTarget

TRACE_FORMAT = "kvspec-pool-ops/1"
#: Both pools are asked about the one KV-cache group a full-attention model has.
GROUP_IDS = [0]

# One recorded operation (a tuple):
#   ("get_cached_block", req, hash, hit)   hit: whether the recording pool found it
#   ("touch", req)                         touch the hits collected for req
#   ("get_new_blocks", req, n)             append n new blocks to req's table
#   ("cache_block", req, index, hash)      cache req's table[index] under hash
#   ("free_blocks", req)                   free req's table in reverse
Op = tuple
OPS_NAMES = ("get_cached_block", "touch", "get_new_blocks", "cache_block", "free_blocks")

# One request-level event of the replay, compiled from the operations:
#   ("admit", req, lookups, touch, num_new, hashes, num_hits, num_cached)
#       lookups: the hashes looked up; touch: whether the hits are touched; num_new: blocks
#       taken (None when the trace ends before); hashes: the request's chained hash list;
#       blocks [num_hits, num_cached) of its table are cached.
#   ("free", req)
Event = tuple


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


def count_calls(events: Sequence[Event], per_block: bool, prefix_lookup: bool = False) -> int:
    """Pool calls :func:`replay` makes: per-block, one per recorded operation; otherwise one
    ``cache_full_blocks`` per admission instead of one per block, and with ``prefix_lookup``
    one lookup per admission instead of one per hash."""
    calls = 0
    for event in events:
        if event[0] == "free":
            calls += 1
            continue
        _, _, lookups, touch, num_new, _, start, end = event
        cache_calls = end - start if per_block else int(end > start)
        lookup_calls = int(bool(lookups)) if prefix_lookup else len(lookups)
        calls += lookup_calls + touch + (num_new is not None) + cache_calls
    return calls


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


def compile_events(ops: Sequence[Op]) -> list[Event]:
    """Group the operations of each request into one admission or departure event.

    The operations of one admission are consecutive (lookups, touch, allocation, caching), so
    each run of operations on one request becomes one event. The last admission may be cut
    short by the end of the trace: its missing steps are left out (``num_new`` is None when
    the allocation is missing), so the replay makes exactly the recorded calls.
    """
    events: list[Event] = []
    i, n = 0, len(ops)
    while i < n:
        op = ops[i]
        req = op[1]
        if op[0] == "free_blocks":
            events.append(("free", req))
            i += 1
            continue
        lookups: list[bytes] = []
        hit_hashes: list[bytes] = []
        while i < n and ops[i][0] == "get_cached_block" and ops[i][1] == req:
            lookups.append(ops[i][2])
            if ops[i][3]:
                hit_hashes.append(ops[i][2])
            i += 1
        touch = i < n and ops[i][0] == "touch" and ops[i][1] == req
        i += touch
        num_new = None
        if i < n and ops[i][0] == "get_new_blocks" and ops[i][1] == req:
            num_new = ops[i][2]
            i += 1
        cached: list[bytes] = []
        while i < n and ops[i][0] == "cache_block" and ops[i][1] == req:
            cached.append(ops[i][3])
            i += 1
        hashes = hit_hashes + cached
        events.append(("admit", req, tuple(lookups), touch, num_new, hashes,
                       len(hit_hashes), len(hashes)))
    return events


def replay(
    pool: Any,
    events: Sequence[Event],
    hash_args: Sequence[Any],
    cache_args: tuple,
    per_block: bool,
    hits_out: list[int] | None = None,
    prefix_lookup: Callable[[Sequence[bytes]], list[Any]] | None = None,
) -> dict[int, list[Any]]:
    """Drive ``pool`` (kvspec's or upstream's ``BlockPool``) through ``events``: the timed loop.

    ``hash_args[req]`` is what ``cache_full_blocks`` takes as its first argument (kvspec: the
    hash list; upstream: a request holding it) and ``cache_args`` its trailing arguments
    (kvspec: the group id; upstream: block size and group id). ``per_block`` caches one block
    per call, else each admission's blocks in one call. ``prefix_lookup`` (kvspec's
    ``get_cached_prefix``) looks up an admission's hashes in one call, else
    ``get_cached_block`` is called per hash until the first miss. With ``hits_out``, the
    number of hits of every admission is appended to it. Returns the tables still held.
    """
    tables: dict[int, list[Any]] = {}
    get_cached_block, touch, get_new_blocks = (
        pool.get_cached_block, pool.touch, pool.get_new_blocks)
    cache_full_blocks, free_blocks = pool.cache_full_blocks, pool.free_blocks
    groups = GROUP_IDS
    for event in events:
        if event[0] == "free":
            free_blocks(tables.pop(event[1])[::-1])
            continue
        _, req, lookups, touched, num_new, _, start, end = event
        if prefix_lookup is not None:
            hits = prefix_lookup(lookups) if lookups else []
        else:
            hits = []
            for block_hash in lookups:
                found = get_cached_block(block_hash, groups)
                if found is None:
                    break
                hits.append(found[0])
        if hits_out is not None:
            hits_out.append(len(hits))
        if touched:
            touch(hits)
        if num_new is None:
            break  # the trace ended inside this admission
        table = hits + get_new_blocks(num_new)
        tables[req] = table
        hashes = hash_args[req]
        if per_block:
            for i in range(start, end):
                cache_full_blocks(hashes, table, i, i + 1, *cache_args)
        elif start < end:
            cache_full_blocks(hashes, table, start, end, *cache_args)
    return tables


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
