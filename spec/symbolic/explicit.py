"""The request-level world run on the executable spec: the ground truth for the z3 model.

Every request operation (:mod:`kvspec.spec.symbolic.model`) is carried out here by calling the
:mod:`kvspec.spec.pool` functions (or a mutant's twins), recording the pool calls it made. Three
things rest on this file:

* the honesty check: z3's transition relation must admit exactly the post-state
  :func:`step` computes, and nothing when :func:`step` refuses;
* the brute-force breadth-first search (:func:`shortest_violation`) whose lengths BMC's
  must equal;
* decoding: a z3 counterexample is re-run through :func:`step`, so every trace kvspec
  writes came out of the executable spec, not out of the solver.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from kvspec.spec import pool as spec_pool
from kvspec.spec.errors import Refused
from kvspec.spec.invariants import INVARIANTS, check_all, snapshot
from kvspec.spec.pool import NULL_BLOCK, PoolState
from kvspec.spec.symbolic.model import OP_MEANING, REQUEST_INVARIANTS, ModelConfig, Op, all_ops
from kvspec.spec.symbolic.twins import SPEC, PoolSemantics

#: One pool call as a trace records it: (operation, args), hashes as ``bytes``.
PoolCall = tuple[str, dict[str, Any]]


@dataclass
class World:
    """The pool plus what the requests know: tables, cached prefix length, last hash."""

    pool: PoolState
    tables: tuple[tuple[int, ...], ...]
    ncached: tuple[int, ...]
    rlast: tuple[int, ...]
    #: Blocks handed out by the step that produced this world, with their prior ref count.
    allocated: tuple[tuple[int, int], ...] = ()
    #: Whether every step so far kept the chain discipline the ``assumes`` of an
    #: invariant states (:data:`kvspec.spec.invariants.CHAIN_DISCIPLINE`).
    disciplined: bool = True

    def key(self) -> tuple:
        return (self.pool.key(), self.tables, self.ncached, self.rlast, self.allocated,
                self.disciplined)


@dataclass
class StepResult:
    world: World
    calls: list[PoolCall] = field(default_factory=list)


def initial_world(cfg: ModelConfig) -> World:
    r = cfg.num_requests
    return World(
        pool=spec_pool.init_pool(cfg.num_blocks, profile=cfg.profile,
                                  enable_caching=cfg.enable_caching),
        tables=((),) * r,
        ncached=(0,) * r,
        rlast=(0,) * r,
    )


def _clone(s: PoolState) -> PoolState:
    """A copy of the pool; ``deepcopy`` would dominate the search's running time."""
    return PoolState(
        num_blocks=s.num_blocks,
        enable_caching=s.enable_caching,
        profile=s.profile,
        ref_cnt=list(s.ref_cnt),
        block_hash=list(s.block_hash),
        free_queue=list(s.free_queue),
        cached={h: list(bs) for h, bs in s.cached.items()},
        parent_of=dict(s.parent_of),
    )


def step(cfg: ModelConfig, w: World, op: Op, sem: PoolSemantics = SPEC) -> StepResult | None:
    """Carry out ``op``; ``None`` when the request cannot do it or the pool refuses.

    The request-side guards (a table has room, a table is empty for a hit, a hash extends
    the request's last hash) are choices of the driver; the pool's guards are the spec's
    :class:`~kvspec.spec.errors.Refused`. A mutant twin may also fail with ``ValueError`` where
    its bug leaves the pool inconsistent; that counts as a refusal too.
    """
    s = _clone(w.pool)
    tables = [list(t) for t in w.tables]
    nc = list(w.ncached)
    rl = list(w.rlast)
    calls: list[PoolCall] = []
    allocated: dict[int, int] = {}
    disciplined = w.disciplined
    r = op.req
    limit = cfg.table_len
    if op.kind not in OP_MEANING:
        raise ValueError(f"step: unknown operation kind {op.kind!r}")
    try:
        if op.kind == "allocate":
            if len(tables[r]) >= limit:
                return None
            before = list(s.ref_cnt)
            calls.append(("get_new_blocks", {"num_blocks": 1}))
            (b,) = sem.get_new_blocks(s, 1)
            allocated = {b: before[b]}
            tables[r].append(b)
        elif op.kind == "allocate2":
            if len(tables[r]) + 2 > limit:
                return None
            before = list(s.ref_cnt)
            calls.append(("get_new_blocks", {"num_blocks": 2}))
            got = sem.get_new_blocks(s, 2)
            allocated = {b: before[b] for b in got}
            tables[r].extend(got)
        elif op.kind == "free_tail":
            if not tables[r]:
                return None
            x = tables[r][-1]
            calls.append(("free_blocks", {"block_ids": [x]}))
            sem.free_blocks(s, [x])
            tables[r].pop()
            if nc[r] > len(tables[r]):
                nc[r] -= 1
                rl[r] = cfg.parent(rl[r])
        elif op.kind == "cache":
            c = nc[r]
            if c >= len(tables[r]) or cfg.parent(op.arg) != rl[r]:
                return None
            x = tables[r][c]
            parent = cfg.hash_bytes(rl[r]) if rl[r] else None
            h = cfg.hash_bytes(op.arg)
            calls.append(("cache_block", {"block_id": x, "block_hash": h, "parent": parent}))
            sem.cache_block(s, x, h, parent)
            nc[r] += 1
            rl[r] = op.arg
        elif op.kind == "hit":
            if tables[r] or cfg.depth(op.arg) > limit:
                return None
            hits: list[int] = []
            for h in cfg.chain(op.arg):
                hb = cfg.hash_bytes(h)
                calls.append(("get_cached_block", {"block_hash": hb}))
                b = spec_pool.get_cached_block(s, hb)
                if b is None:
                    return None
                hits.append(b)
            calls.append(("touch", {"block_ids": list(hits)}))
            sem.touch(s, hits)
            tables[r] = hits
            nc[r] = len(hits)
            rl[r] = op.arg
        elif op.kind == "free":
            if not tables[r]:
                return None
            order = list(reversed(tables[r]))
            calls.append(("free_blocks", {"block_ids": order}))
            sem.free_blocks(s, order)
            tables[r], nc[r], rl[r] = [], 0, 0
        elif op.kind == "fork":
            if not tables[r]:
                return None
            x = tables[r][-1]
            before = list(s.ref_cnt)
            calls.append(("fork_block", {"block_id": x}))
            y = sem.fork_block(s, x)
            if y != x:
                allocated = {y: before[y]}
                tables[r][-1] = y
                if nc[r] == len(tables[r]):
                    nc[r] -= 1
                    rl[r] = cfg.parent(rl[r])
        elif op.kind == "fork_at":
            j = op.arg
            if j >= len(tables[r]) - 1:
                return None
            x = tables[r][j]
            before = list(s.ref_cnt)
            calls.append(("fork_block", {"block_id": x}))
            y = sem.fork_block(s, x)
            if y != x:
                allocated = {y: before[y]}
                tables[r][j] = y
                disciplined = False
                if nc[r] > j:
                    nc[r] = j
                    rl[r] = cfg.chain(rl[r])[j - 1] if j else 0
        elif op.kind == "pad":
            if len(tables[r]) >= limit:
                return None
            calls.append(("touch", {"block_ids": [NULL_BLOCK]}))
            sem.touch(s, [NULL_BLOCK])
            tables[r].append(NULL_BLOCK)
        elif op.kind == "reset":
            calls.append(("reset_prefix_cache", {}))
            sem.reset_prefix_cache(s)
        elif op.kind == "stray_free":
            if any(op.arg in t for t in tables):
                return None
            calls.append(("free_blocks", {"block_ids": [op.arg]}))
            sem.free_blocks(s, [op.arg])
    except (Refused, ValueError):
        return None
    world = World(
        pool=s,
        tables=tuple(tuple(t) for t in tables),
        ncached=tuple(nc),
        rlast=tuple(rl),
        allocated=tuple(sorted(allocated.items())),
        disciplined=disciplined,
    )
    return StepResult(world, calls)


# --------------------------------------------------------------------------- invariants


def table_references(cfg: ModelConfig, w: World) -> list[str]:
    counts = Counter(b for t in w.tables for b in t)
    return [
        f"block {b} has ref_cnt {w.pool.ref_cnt[b]} but {counts[b]} table slot(s) hold it"
        for b in range(1, cfg.num_blocks)
        if w.pool.ref_cnt[b] != counts[b]
    ]


def cached_prefix_chained(cfg: ModelConfig, w: World) -> list[str]:
    out: list[str] = []
    for r, table in enumerate(w.tables):
        chain = cfg.chain(w.rlast[r]) if w.rlast[r] else ()
        if len(chain) != w.ncached[r]:
            out.append(
                f"request {r} has {w.ncached[r]} cached block(s) but its last hash "
                f"h{w.rlast[r]} ends a chain of {len(chain)}"
            )
            continue
        for j, h in enumerate(chain):
            b = table[j]
            if b == NULL_BLOCK or w.pool.block_hash[b] != cfg.hash_bytes(h):
                out.append(
                    f"request {r}'s cached block {j} is block {b} holding "
                    f"{w.pool.block_hash[b]!r}, expected {cfg.hash_bytes(h)!r}"
                )
    return out


_REQUEST_CHECKS = {
    "table-references": table_references,
    "cached-prefix-chained": cached_prefix_chained,
}
assert set(_REQUEST_CHECKS) == set(REQUEST_INVARIANTS)


def check_world(
    cfg: ModelConfig, w: World, sem: PoolSemantics = SPEC, names: list[str] | None = None
) -> dict[str, list[str]]:
    """Every broken invariant (pool and request level) of ``w``, with its violations."""
    snap = replace(snapshot(w.pool, dict(w.allocated)), usage=sem.get_usage(w.pool))
    pool_names = [n for n in INVARIANTS if n not in _REQUEST_CHECKS] if names is None else [
        n for n in names if n not in _REQUEST_CHECKS]
    if not w.disciplined:  # out of scope, as the machines waive it
        pool_names = [n for n in pool_names if INVARIANTS[n].assumes is None]
    out = check_all(snap, pool_names) if pool_names else {}
    for name, fn in _REQUEST_CHECKS.items():
        if names is not None and name not in names:
            continue
        violations = fn(cfg, w)
        if violations:
            out[name] = violations
    return out


# --------------------------------------------------------------------------- search


def successors(
    cfg: ModelConfig, w: World, sem: PoolSemantics = SPEC
) -> Iterator[tuple[Op, StepResult]]:
    for op in all_ops(cfg):
        res = step(cfg, w, op, sem)
        if res is not None:
            yield op, res


def shortest_violation(
    cfg: ModelConfig,
    sem: PoolSemantics = SPEC,
    max_depth: int = 8,
    names: list[str] | None = None,
) -> tuple[int, set[str]] | None:
    """Breadth-first search: the fewest operations reaching a state that breaks one of
    ``names`` (all by default), and every invariant some state at that depth breaks."""
    frontier = [initial_world(cfg)]
    seen = {frontier[0].key()}
    for depth in range(max_depth + 1):
        broken: set[str] = set()
        for w in frontier:
            broken |= set(check_world(cfg, w, sem, names))
        if broken:
            return depth, broken
        if depth == max_depth:
            break
        nxt: list[World] = []
        for w in frontier:
            for _op, res in successors(cfg, w, sem):
                k = res.world.key()
                if k not in seen:
                    seen.add(k)
                    nxt.append(res.world)
        frontier = nxt
    return None


def observation(w: World, sem: PoolSemantics = SPEC) -> tuple:
    """Everything a caller can see of ``w``: the pool's observable state, what the calls
    returned (the tables), the hand-outs, and the usage the pool reports."""
    return (w.key(), sem.get_usage(w.pool))


def differences(a: World, b: World, sem_a: PoolSemantics, sem_b: PoolSemantics) -> list[str]:
    """What differs between two worlds, in words (empty: nothing observable)."""
    out: list[str] = []
    pa, pb = a.pool, b.pool
    if pa.ref_cnt != pb.ref_cnt:
        out.append(f"ref counts {pa.ref_cnt} vs {pb.ref_cnt}")
    if pa.block_hash != pb.block_hash:
        out.append(f"hashes {pa.block_hash} vs {pb.block_hash}")
    if pa.free_queue != pb.free_queue:
        out.append(f"free queue {pa.free_queue} vs {pb.free_queue}")
    if pa.key()[3] != pb.key()[3]:
        out.append(f"index {pa.cached} vs {pb.cached}")
    if (a.tables, a.ncached, a.rlast) != (b.tables, b.ncached, b.rlast):
        out.append(f"tables {list(a.tables)} vs {list(b.tables)}")
    if a.allocated != b.allocated:
        out.append(f"handed out {dict(a.allocated)} vs {dict(b.allocated)}")
    if sem_a.get_usage(pa) != sem_b.get_usage(pb):
        out.append(f"usage {sem_a.get_usage(pa)!r} vs {sem_b.get_usage(pb)!r}")
    return out


def shortest_divergence(
    cfg: ModelConfig, sem: PoolSemantics, max_depth: int = 8
) -> int | None:
    """Breadth-first search: the fewest operations after which a caller can tell ``sem``
    from the spec (a refusal where the other acts, or any observation differing)."""
    w0 = initial_world(cfg)
    if observation(w0, sem) != observation(w0, SPEC):
        return 0
    frontier = [w0]
    seen = {w0.key()}
    ops = all_ops(cfg)
    for depth in range(1, max_depth + 1):
        nxt: list[World] = []
        for w in frontier:
            for op in ops:
                a = step(cfg, w, op, SPEC)
                b = step(cfg, w, op, sem)
                if (a is None) != (b is None):
                    return depth
                if a is None or b is None:
                    continue
                if observation(a.world, SPEC) != observation(b.world, sem):
                    return depth
                k = a.world.key()
                if k not in seen:
                    seen.add(k)
                    nxt.append(a.world)
        frontier = nxt
    return None


def reachable(cfg: ModelConfig, max_depth: int, sem: PoolSemantics = SPEC) -> list[World]:
    """Every world reachable in at most ``max_depth`` operations (for tests and checks)."""
    frontier = [initial_world(cfg)]
    seen = {frontier[0].key()}
    out = list(frontier)
    for _ in range(max_depth):
        nxt: list[World] = []
        for w in frontier:
            for _op, res in successors(cfg, w, sem):
                k = res.world.key()
                if k not in seen:
                    seen.add(k)
                    nxt.append(res.world)
        out += nxt
        frontier = nxt
    return out


def run_ops(
    cfg: ModelConfig, ops: list[Op], sem: PoolSemantics = SPEC
) -> tuple[list[World], list[list[PoolCall]]]:
    """Run ``ops`` from the initial world; raise if the executable model refuses one."""
    worlds = [initial_world(cfg)]
    calls: list[list[PoolCall]] = []
    for i, op in enumerate(ops):
        res = step(cfg, worlds[-1], op, sem)
        if res is None:
            raise RuntimeError(
                f"step {i + 1}: {op.describe()} is refused by the executable model"
            )
        worlds.append(res.world)
        calls.append(res.calls)
    return worlds, calls


# --------------------------------------------------------------------------- symmetry


def _hash_maps(cfg: ModelConfig) -> list[dict[int, int]]:
    """The renamings of hashes that keep the hash tree (and so every operation) intact:
    swapping two sibling hashes whose subtrees have the same shape, in any combination."""

    def shape(h: int, depth: int) -> tuple:
        if h > cfg.num_hashes or depth > cfg.table_len:
            return ()
        return (shape(2 * h, depth + 1), shape(2 * h + 1, depth + 1))

    def subtree(h: int) -> list[int]:
        return [] if h > cfg.num_hashes else [h, *subtree(2 * h), *subtree(2 * h + 1)]

    maps: list[dict[int, int]] = [{h: h for h in range(cfg.num_hashes + 1)}]
    for h in cfg.hashes:
        sib = h + 1
        if h % 2 or sib > cfg.num_hashes or cfg.depth(h) > cfg.table_len:
            continue
        if shape(h, cfg.depth(h)) != shape(sib, cfg.depth(h)):
            continue
        # The subtrees of h and sib are listed in the same (preorder) shape: pair them up.
        swap = dict(zip(subtree(h), subtree(sib), strict=True))
        swap.update({v: k for k, v in swap.items()})
        maps += [{k: swap.get(v, v) for k, v in m.items()} for m in maps]
    return maps


#: Hash bytes -> the model's hash number (``None`` -> 0); the same for every configuration.
_HASH_NUMBER: dict[bytes | None, int] = {None: 0}


def _hash_number(data: bytes | None) -> int:
    try:
        return _HASH_NUMBER[data]
    except KeyError:
        assert data is not None
        number = _HASH_NUMBER[data] = int(data.decode().rsplit(".", 1)[-1])
        return number


def canonical_key(cfg: ModelConfig, w: World, hash_maps: list[dict[int, int]] | None = None
                  ) -> tuple:
    """A key equal for two worlds that differ only by a renaming of blocks, requests or
    interchangeable hashes. No operation tells such worlds apart (blocks are handed out by
    queue position, never by id; requests and sibling hashes are offered alike), so the
    breadth-first search may keep one of each class: what one reaches, the others reach
    renamed, breaking the same invariants at the same depth.

    The key is the least, over every renaming of requests and of hashes, of the world
    written with blocks numbered in order of first appearance (tables, then queue, then
    id). The parts that do not depend on the hash renaming are built once per request
    order."""
    from itertools import permutations

    maps = hash_maps or _hash_maps(cfg)
    p = w.pool
    block_hash = [_hash_number(h) for h in p.block_hash]
    index_raw = [(_hash_number(h), bs) for h, bs in p.cached.items()]
    queue = p.free_queue
    ref_cnt = p.ref_cnt
    best: tuple | None = None
    for perm in permutations(range(cfg.num_requests)):
        tables = [w.tables[q] for q in perm]
        order: dict[int, int] = {0: 0}
        for t in tables:
            for b in t:
                if b not in order:
                    order[b] = len(order)
        for b in queue:
            if b not in order:
                order[b] = len(order)
        for b in range(cfg.num_blocks):
            if b not in order:
                order[b] = len(order)
        inverse = sorted(order, key=order.__getitem__)
        refs = tuple(ref_cnt[b] for b in inverse)
        queued = tuple(order[b] for b in queue)
        held = tuple(tuple(order[b] for b in t) for t in tables)
        ncached = tuple(w.ncached[q] for q in perm)
        allocated = tuple(sorted((order[b], c) for b, c in w.allocated))
        index_blocks = [(h, tuple(order[b] for b in bs)) for h, bs in index_raw]
        raw_hashes = [block_hash[b] for b in inverse]
        for hm in maps:
            key = (
                refs, tuple(hm[h] for h in raw_hashes), queued,
                tuple(sorted((hm[h], bs) for h, bs in index_blocks)),
                held, ncached, tuple(hm[w.rlast[q]] for q in perm), allocated,
                w.disciplined,
            )
            if best is None or key < best:
                best = key
    assert best is not None
    return best


@dataclass
class SearchReport:
    """What a breadth-first search covered: ``depth`` levels fully explored, ``worlds``
    classes of worlds seen, ``complete`` when no new world was left (every reachable
    world, up to renaming, was checked), and the first broken invariants if any."""

    depth: int = -1
    worlds: int = 0
    complete: bool = False
    broken: dict[str, list[str]] = field(default_factory=dict)
    broken_at: int = -1


def search(cfg: ModelConfig, max_depth: int, sem: PoolSemantics = SPEC, *,
           symmetry: bool = True, deadline: float | None = None) -> SearchReport:
    """Breadth-first over the executable model, checking every invariant on every world,
    with symmetry reduction (:func:`canonical_key`) unless ``symmetry`` is off."""
    import time

    maps = _hash_maps(cfg)

    def key(w: World) -> tuple:
        return canonical_key(cfg, w, maps) if symmetry else w.key()

    w0 = initial_world(cfg)
    frontier = [w0]
    seen = {key(w0)}
    report = SearchReport(worlds=1)
    for depth in range(max_depth + 1):
        for w in frontier:
            found = check_world(cfg, w, sem)
            if found:
                report.broken, report.broken_at = found, depth
                return report
        report.depth = depth
        if depth == max_depth:
            break
        nxt: list[World] = []
        for w in frontier:
            if deadline is not None and time.monotonic() > deadline:
                return report
            for _op, res in successors(cfg, w, sem):
                k = key(res.world)
                if k not in seen:
                    seen.add(k)
                    nxt.append(res.world)
        report.worlds = len(seen)
        if not nxt:
            report.complete = True
            return report
        frontier = nxt
    return report
