"""The pool level's harness: the requests that use a pool, and the moves they make.

The harness keeps *tables*: the ordered block lists that requests hold, each with the
content ("a", "b", ...) written in its blocks, so hashes are real prefix chains (``a``,
``a.b``, ``a.b.a``...) and the eviction-order invariant has parents to reason about. Each
move takes one pool operation (composite moves, for random runs only, take several).

Why the moves look the way they do (see HARNESS.md):

* tiny pools (2-8 blocks): eviction, reuse and exhaustion only happen under pressure;
* a two-letter alphabet: few distinct hashes, so duplicates (several blocks under one hash)
  and re-hits are common;
* tables can be held twice (``share``) and forked, so counting code is exercised;
* the usage discipline the spec's ``eviction-order`` assumes is kept by construction:
  tables are cached in order with their parent hashes, freed tail first, and forked only
  at their last block (copy-on-write before the next token is written there);
* bad input is one move with a ``kind``: the target must refuse, and change nothing;
* moves are listed simplest first and pick tables by ``index % len(tables)``, so shrinking
  deletes steps and lowers values into a short readable sequence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from itertools import product
from typing import Any

from kvspec.conformance.level import (
    Domain,
    Harness,
    Recorder,
    RunOptions,
    integers,
    move,
    one_of,
    sequences,
)
from kvspec.conformance.pool.driver import PoolConfig, PoolDriver, start_driver
from kvspec.conformance.pool.targets import unsupported_operations
from kvspec.conformance.trace import Step
from kvspec.spec import pool as sp

ALPHABET = "ab"
MAX_TABLE = 4
MAX_TABLES = 6
NULL_BLOCK = 0

BAD_INPUTS = (
    "over_allocate",
    "negative_count",
    "free_unknown_id",
    "touch_unknown_id",
    "cache_unknown_id",
    "free_unreferenced",
    "double_free_in_one_call",
    "cache_null_block",
    "cache_unheld_block",
    "cache_hashed_block",
    "fork_null_block",
    "fork_free_block",
    "fork_unknown_id",
)
FORK_BAD_INPUTS = frozenset({"fork_null_block", "fork_free_block", "fork_unknown_id"})

#: Named situations the harness reports reaching; ``kvspec check`` prints their counts.
SITUATIONS = (
    "duplicate-hash",
    "evict-one-of-duplicates",
    "hit-on-evictable-block",
    "fork-of-cached-block",
    "shared-prefix",
    "long-chain",
    "pool-exhausted",
)


def chain_hash(content: list[str] | tuple[str, ...], index: int) -> bytes:
    """The content hash of block ``index`` of a table: its whole prefix, so chains nest."""
    return ".".join(content[: index + 1]).encode()


@dataclass
class Table:
    """Blocks a request holds, in order, the content written in each, and how many of the
    leading blocks the request has cached (or found cached)."""

    blocks: list[int]
    content: list[str]
    num_cached: int = 0

    def key(self) -> tuple:
        return tuple(self.blocks), tuple(self.content), self.num_cached


# --------------------------------------------------------------------------- argument domains


# Each domain: the random engine's strategy, and the small values with which the test suite
# explores the moves exhaustively on the spec (every invariant must hold on every state the
# moves reach: they keep the usage discipline the invariants assume).


def _contents(max_len: int, min_len: int = 0) -> tuple[tuple[str, ...], ...]:
    return tuple(c for n in range(min_len, max_len + 1) for c in product(ALPHABET, repeat=n))


INDEX = Domain(integers(0, 7), lambda h: range(len(h.tables)))
NEW_CONTENT = Domain(sequences(ALPHABET, 0, MAX_TABLE), _contents(2))
GROWTH = Domain(sequences(ALPHABET, 1, 2), _contents(1, 1))
PREFIX = Domain(sequences(ALPHABET, 1, MAX_TABLE), _contents(2, 1))


class PoolHarness(Harness):
    """Tables over a :class:`PoolDriver`; see the module docstring (random engine)."""

    driver: PoolDriver

    def __init__(self, driver: PoolDriver, recorder: Recorder, options: RunOptions,
                 unsupported: frozenset[str] = frozenset()) -> None:
        super().__init__(driver, recorder)
        self.tables: list[Table] = []
        self.bad_input = options.checks_bad_input
        self.can_fork = "fork_block" not in unsupported

    # -------------------------------------------------------------- plumbing

    @property
    def spec(self) -> sp.PoolState:
        return self.driver.spec

    def key(self) -> Hashable:
        # Sorted: the moves reach every table by index, so the order of tables is no state.
        return tuple(sorted(t.key() for t in self.tables))

    def copy_bookkeeping(self) -> PoolHarness:
        twin = self.shallow_copy()
        twin.tables = [Table(list(t.blocks), list(t.content), t.num_cached) for t in self.tables]
        return twin

    def table(self, index: int) -> Table:
        return self.tables[index % len(self.tables)]

    def has_tables(self) -> bool:
        return bool(self.tables)

    def has_room(self) -> bool:
        return len(self.tables) < MAX_TABLES

    def free_count(self) -> int:
        return len(self.spec.free_queue)

    def take(self, n: int) -> list[int] | None:
        """``get_new_blocks(n)``; the ids, or None when refused."""
        hashes = list(self.spec.block_hash)
        out = self.do("get_new_blocks", num_blocks=n)
        if out.refused is not None:
            return None
        for b in out.result:  # reusing a cached block evicts it; note when it had twins
            if hashes[b] is not None and hashes.count(hashes[b]) > 1:
                self.note("evict-one-of-duplicates")
        if self.free_count() == 0:
            self.note("pool-exhausted")
        return list(out.result)

    # -------------------------------------------------------------- moves

    @move(content=NEW_CONTENT, weight=2, enabled=has_room)
    def allocate(self, content: tuple[str, ...]) -> None:
        """A new request takes one fresh block per symbol of ``content`` (refused when fewer
        are free); the symbols are what it writes into them."""
        got = self.take(len(content))
        if got is not None:
            self.tables.append(Table(got, list(content)))

    @move(index=INDEX, content=GROWTH, weight=3, enabled=has_tables)
    def grow(self, index: int, content: tuple[str, ...]) -> None:
        """A running request needs one more block per symbol of ``content``."""
        t = self.table(index)
        got = self.take(len(content))
        if got is not None:
            t.blocks += got
            t.content += content

    @move(index=INDEX, weight=2, enabled=has_tables)
    def cache_next(self, index: int) -> None:
        """A request's next full block enters the prefix cache.

        Block ``i`` is cached under the hash of the table's content up to ``i``, with the
        hash of content up to ``i - 1`` as its parent. Null placeholders and blocks already
        cached (hits, shared blocks) are passed over, as upstream passes over them.
        """
        if not self.spec.enable_caching:
            return
        t = self.table(index)
        while t.num_cached < len(t.blocks):
            i = t.num_cached
            block = t.blocks[i]
            t.num_cached += 1
            if block == NULL_BLOCK or self.spec.block_hash[block] is not None:
                continue
            # A chain starts after a null placeholder: there is no parent block to keep.
            has_parent = i > 0 and t.blocks[i - 1] != NULL_BLOCK
            parent = chain_hash(t.content, i - 1) if has_parent else None
            h = chain_hash(t.content, i)
            if h in self.spec.cached:
                self.note("duplicate-hash")
            if i >= 2:
                self.note("long-chain")
            self.do("cache_block", block_id=block, block_hash=h, parent=parent)
            return

    @move(index=INDEX, count=Domain(integers(1, MAX_TABLE)), weight=2, enabled=has_tables)
    def cache_full(self, index: int, count: int) -> None:
        """Up to ``count`` more full blocks of a request enter the prefix cache, in order."""
        for _ in range(count):
            self.cache_next(index)

    @move(content=PREFIX, weight=2, enabled=has_room)
    def hit(self, content: tuple[str, ...]) -> None:
        """A new request finds its prefix cached block by block and adopts the hits: one
        ``touch`` of every block of the longest cached chain."""
        found: list[int] = []
        for i in range(len(content)):
            b = sp.get_cached_block(self.spec, chain_hash(content, i))
            if b is None:
                break
            found.append(b)
        if not found:
            return
        if any(self.spec.ref_cnt[b] == 0 for b in found):
            self.note("hit-on-evictable-block")
        if any(self.spec.ref_cnt[b] > 0 for b in found):
            self.note("shared-prefix")
        self.do("touch", block_ids=found)
        self.tables.append(Table(found, list(content[: len(found)]), len(found)))

    @move(content=PREFIX, weight=5, enabled=has_room)
    def request(self, content: tuple[str, ...]) -> None:
        """A request's whole prefill, as a scheduler runs it: adopt the longest cached
        prefix of ``content``, take fresh blocks for the rest, and cache every block (all
        are full). Recomputing content that is cached under a block it could not adopt
        caches a duplicate."""
        before = len(self.tables)
        self.hit(content)
        if len(self.tables) == before:  # no hit: a fresh request
            self.allocate(content)
            if len(self.tables) == before:
                return
        else:
            t = self.tables[-1]
            rest = content[len(t.blocks):]
            if rest:
                self.grow(len(self.tables) - 1, rest)
        for _ in content:
            self.cache_next(len(self.tables) - 1)

    @move(content=Domain(sequences(ALPHABET, 1, 3)), weight=3, enabled=has_room)
    def recompute(self, content: tuple[str, ...]) -> None:
        """A request that does not read the prefix cache (upstream: prompt logprobs) still
        writes to it: its blocks are fresh and cached, duplicates of any cached copy."""
        before = len(self.tables)
        self.allocate(content)
        if len(self.tables) > before:
            for _ in content:
                self.cache_next(len(self.tables) - 1)

    @move(leave=Domain(integers(0, 2)), symbol=Domain(one_of(ALPHABET)), weight=2,
          enabled=has_room)
    def fill(self, leave: int, symbol: str) -> None:
        """A request takes every free block but ``leave`` and caches them: the pool is then
        at the edge, and the next allocation evicts the least recently freed cached block
        (one of several copies of a hash, often)."""
        n = self.free_count() - leave
        if n > 0:
            self.request((symbol,) * min(n, MAX_TABLE))

    @move(index=INDEX, weight=2, enabled=lambda h: h.has_tables() and h.has_room())
    def share(self, index: int) -> None:
        """A second request holds the same blocks (every block gains a reference)."""
        t = self.table(index)
        if t.blocks:
            self.note("shared-prefix")
        self.do("touch", block_ids=list(t.blocks))
        self.tables.append(Table(list(t.blocks), list(t.content), t.num_cached))

    @move(index=INDEX, weight=3, enabled=has_tables)
    def free(self, index: int) -> None:
        """A request finishes: its table is freed in reverse, tail evicted first."""
        t = self.tables.pop(index % len(self.tables))
        self.do("free_blocks", block_ids=list(reversed(t.blocks)))

    @move(first=INDEX, second=INDEX, enabled=lambda h: len(h.tables) >= 2)
    def free_two(self, first: int, second: int) -> None:
        """Two requests finish in one call: a block they share is listed twice.

        Legal, since each listing drops one of its references; the block becomes free at
        its last listing and is queued once, there. An allocator that decrements everything
        first and then queues "every listed block now at 0" queues it twice.
        """
        i, j = first % len(self.tables), second % len(self.tables)
        if i == j:
            return
        a, b = self.tables[i], self.tables[j]
        self.tables = [t for k, t in enumerate(self.tables) if k not in (i, j)]
        self.do("free_blocks", block_ids=list(reversed(a.blocks)) + list(reversed(b.blocks)))

    @move(index=INDEX, weight=2, enabled=has_tables)
    def free_tail(self, index: int) -> None:
        """A request drops its last block (e.g. a speculative block it did not use)."""
        t = self.table(index)
        if not t.blocks:
            return
        block = t.blocks.pop()
        t.content.pop()
        t.num_cached = min(t.num_cached, len(t.blocks))
        self.do("free_blocks", block_ids=[block])

    @move(index=INDEX, weight=3, enabled=lambda h: h.can_fork and h.has_tables())
    def fork(self, index: int) -> None:
        """Copy-on-write before the next token is written into a request's last block."""
        t = self.table(index)
        if not t.blocks or t.blocks[-1] == NULL_BLOCK:
            return
        slot = len(t.blocks) - 1
        block = t.blocks[slot]
        if self.spec.block_hash[block] is not None and self.spec.ref_cnt[block] > 1:
            self.note("fork-of-cached-block")
        out = self.do("fork_block", block_id=block)
        if out.refused is None and out.result != block:
            t.blocks[slot] = out.result
            t.num_cached = min(t.num_cached, slot)

    @move(content=Domain(sequences(ALPHABET, 0, 2), (("a",),)), enabled=has_room)
    def allocate_behind_null(self, content: tuple[str, ...]) -> None:
        """A request whose first slot is the null placeholder (a skipped window prefix).

        Upstream pads a table with the null block without touching it; freeing the table
        then passes the null block to ``free_blocks``, which ``current`` skips and
        ``classic`` decrements (its count drifts, and it is never queued).
        """
        got = self.take(len(content))
        if got is not None:
            self.tables.append(Table([NULL_BLOCK, *got], ["_", *content]))

    @move(content=PREFIX, weight=2)
    def lookup(self, content: tuple[str, ...]) -> None:
        """A pure lookup of some prefix: no reference taken."""
        self.do("get_cached_block", block_hash=chain_hash(content, len(content) - 1))

    @move(enabled=lambda h: any(x is not None for x in h.spec.block_hash))
    def reset(self) -> None:
        """Reset the prefix cache (refused with False while any block is held)."""
        self.do("reset_prefix_cache")

    # -------------------------------------------------------------- bad input

    @move(kind=Domain(one_of(BAD_INPUTS), BAD_INPUTS), pick=Domain(integers(0, 7), (0,)),
          extra=Domain(integers(1, 3), (1,)),
          weight=2, enabled=lambda h: h.bad_input)
    def bad(self, kind: str, pick: int, extra: int) -> None:
        """An operation the spec refuses: the target must raise and change nothing.

        One move with a ``kind`` rather than one move each, so that bad input is one choice
        among the moves instead of crowding out the legal operations.
        """
        step = self.bad_step(kind, pick, extra)
        if step is not None:
            self.current_move = f"bad:{kind}"
            self.do(step.op, **step.args)

    def bad_step(self, kind: str, pick: int, extra: int) -> Step | None:
        s = self.spec

        def choose(candidates: list[int]) -> int | None:
            return candidates[pick % len(candidates)] if candidates else None

        out_of_range = [-1, s.num_blocks, s.num_blocks + 1][pick % 3]
        held_once = [b for t in self.tables for b in t.blocks if b and s.ref_cnt[b] == 1]
        hashed = [b for b, h in enumerate(s.block_hash) if h is not None]
        free = choose(list(s.free_queue))
        if kind == "over_allocate":
            return Step("get_new_blocks", {"num_blocks": self.free_count() + extra})
        if kind == "negative_count":
            return Step("get_new_blocks", {"num_blocks": -extra})
        # ids outside the pool, including -1, which Python lists accept
        if kind == "free_unknown_id":
            return Step("free_blocks", {"block_ids": [out_of_range]})
        if kind == "touch_unknown_id":
            return Step("touch", {"block_ids": [out_of_range]})
        if kind == "cache_unknown_id":
            return Step("cache_block", {"block_id": out_of_range, "block_hash": b"z"})
        # a double free: the block has no reference left to drop
        if kind == "free_unreferenced" and free is not None:
            return Step("free_blocks", {"block_ids": [free]})
        # one call listing a block more often than it is referenced
        once = choose(held_once)
        if kind == "double_free_in_one_call" and once is not None:
            return Step("free_blocks", {"block_ids": [once, once]})
        if kind == "cache_null_block":
            return Step("cache_block", {"block_id": NULL_BLOCK, "block_hash": b"z"})
        if kind == "cache_unheld_block" and free is not None:
            return Step("cache_block", {"block_id": free, "block_hash": b"z"})
        cached = choose(hashed)
        if kind == "cache_hashed_block" and cached is not None:
            return Step("cache_block", {"block_id": cached, "block_hash": b"z"})
        if kind == "fork_null_block" and self.can_fork:
            return Step("fork_block", {"block_id": NULL_BLOCK})
        if kind == "fork_free_block" and self.can_fork and free is not None:
            return Step("fork_block", {"block_id": free})
        if kind == "fork_unknown_id" and self.can_fork:
            return Step("fork_block", {"block_id": out_of_range})
        return None

    # -------------------------------------------------------------- own bookkeeping

    def check_bookkeeping(self) -> None:
        """The harness's tables account for every reference the spec counts."""
        ref_cnt = self.spec.ref_cnt
        counts = [0] * len(ref_cnt)
        for t in self.tables:
            for b in t.blocks:
                if 0 <= b < len(counts):
                    counts[b] += 1
        if counts[1:] == ref_cnt[1:]:
            return
        held = Counter(b for t in self.tables for b in t.blocks)
        for b in range(1, self.spec.num_blocks):
            assert ref_cnt[b] == held[b], (
                f"harness bookkeeping: block {b} ref_cnt {ref_cnt[b]} but held {held[b]} times"
            )


def start(factory: Any, config: PoolConfig, options: RunOptions, recorder: Recorder
          ) -> PoolHarness:
    """A pool harness over a fresh target, the fresh state judged."""
    driver = start_driver(factory, config, on_check=recorder.count_check,
                          judge_bad_input=options.checks_bad_input)
    return PoolHarness(driver, recorder, options, unsupported_operations(factory))


def simplify(step: Step) -> Iterator[Step]:
    """Simpler versions of a pool step, simplest first (for the minimizer)."""
    a = step.args
    if step.op == "get_new_blocks" and isinstance(a.get("num_blocks"), int):
        n = a["num_blocks"]
        for smaller in range(0 if n > 0 else n + 1, abs(n)):
            if abs(smaller) < abs(n):
                yield Step(step.op, {**a, "num_blocks": smaller if n > 0 else -smaller})
    if step.op in ("touch", "free_blocks") and isinstance(a.get("block_ids"), list):
        ids = a["block_ids"]
        for i in range(len(ids)):
            yield Step(step.op, {**a, "block_ids": ids[:i] + ids[i + 1:]})
    if step.op == "cache_block" and a.get("parent") is not None:
        yield Step(step.op, {**a, "parent": None})
