"""The pool-level Hypothesis state machine.

The machine plays the part of the requests that use a pool. It keeps *tables*: the
ordered block lists that requests hold, each with the content ("a", "b", ...) written in
its blocks, so hashes are real prefix chains (``a``, ``a.b``, ``a.b.a``...) and the
eviction-order invariant has parents to reason about. Tables are mirrored on the machine
rather than kept in Bundles because preconditions and invariants need to read them.

Why the arguments look the way they do (see HARNESS.md):

* tiny pools (2-8 blocks): eviction, reuse and exhaustion only happen under pressure;
* a two-letter alphabet: few distinct hashes, so duplicates and re-hits are common;
* tables can be held twice (``share``) and forked, so counting code is exercised;
* bad input is a family of rules: the target must refuse, and change nothing;
* rules are listed simplest first and take arguments that do not depend on step
  numbers (a table is picked by ``index % len(tables)``), so shrinking deletes steps
  and lowers values into a short readable sequence.

Every step goes through :class:`~kvspec.conformance.pool.driver.PoolDriver`, which judges it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from hypothesis import strategies as st
from hypothesis import target as hypothesis_target
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from kvspec.conformance.pool.driver import Divergence, Outcome, PoolConfig, PoolDriver
from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.trace import Step

T = TypeVar("T")

ALPHABET = "ab"
BAD_INPUTS = [
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
]
MAX_TABLE = 4
NULL_BLOCK = 0


def chain_hash(content: list[str], index: int) -> bytes:
    """The content hash of block ``index`` of a table: its whole prefix, so chains nest."""
    return ".".join(content[: index + 1]).encode()


def _maybe(block: int | None, make: Callable[[int], Step]) -> Step | None:
    return None if block is None else make(block)


@dataclass
class Table:
    """Blocks a request holds, in order, and the content written in each."""

    blocks: list[int]
    content: list[str]
    num_cached: int = 0


@dataclass
class RunStats:
    """Counts for the summary line: what the machine did and checked."""

    examples: int = 0
    steps: int = 0
    rules: Counter = field(default_factory=Counter)
    invariant_checks: Counter = field(default_factory=Counter)

    def step(
        self,
        rule_name: str,
        action: Callable[[], T],
        *,
        on_step: Callable[[], None] | None,
        on_failure: Callable[[Divergence], None] | None,
    ) -> T:
        """Count one step of ``rule_name``, run it, and report a divergence it raises.

        Every level's machine takes its steps through here, so counting, progress and the
        capture of the (finally shrunk) failure work the same way everywhere.
        """
        self.steps += 1
        self.rules[rule_name] += 1
        if on_step:
            on_step()
        try:
            return action()
        except Divergence as failure:
            if on_failure:
                on_failure(failure)
            raise


def make_pool_machine(
    factory: Callable[..., PoolTarget],
    *,
    profile: str = "current",
    mode: str = "strict",
    min_blocks: int = 2,
    max_blocks: int = 8,
    bad_input: bool = True,
    unsupported: frozenset[str] = frozenset(),
    stats: RunStats | None = None,
    on_failure: Callable[[Divergence], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> type[RuleBasedStateMachine]:
    """A machine class that drives targets built by ``factory`` against the spec."""
    stats = stats if stats is not None else RunStats()
    can_fork = "fork_block" not in unsupported

    class PoolMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.driver: PoolDriver | None = None
            self.tables: list[Table] = []
            self.peak_pressure = 0.0
            stats.examples += 1

        # -------------------------------------------------------------- plumbing

        def do(self, rule_name: str, op: str, **args: object) -> Outcome:
            driver = self.driver
            assert driver is not None
            return stats.step(rule_name, lambda: driver.apply(Step(op, dict(args))),
                              on_step=on_step, on_failure=on_failure)

        @property
        def spec(self):
            assert self.driver is not None
            return self.driver.spec

        def table(self, index: int) -> Table:
            return self.tables[index % len(self.tables)]

        def has_tables(self) -> bool:
            return bool(self.tables)

        def free_count(self) -> int:
            return len(self.spec.free_queue)

        # -------------------------------------------------------------- setup

        @initialize(
            num_blocks=st.integers(min_blocks, max_blocks),
            enable_caching=st.sampled_from([True, True, True, False]),
        )
        def make_pool(self, num_blocks: int, enable_caching: bool) -> None:
            config = PoolConfig(num_blocks, enable_caching, profile, mode)

            def count(name: str) -> None:
                stats.invariant_checks[name] += 1

            try:
                self.driver = PoolDriver(factory, config, on_check=count)
                self.driver.check()
            except Divergence as failure:
                if on_failure:
                    on_failure(failure)
                raise

        # -------------------------------------------------------------- requests

        @rule(n=st.integers(0, MAX_TABLE), content=st.lists(st.sampled_from(ALPHABET),
                                                            min_size=MAX_TABLE,
                                                            max_size=MAX_TABLE))
        def allocate(self, n: int, content: list[str]) -> None:
            """A new request takes ``n`` fresh blocks (refused when fewer are free)."""
            out = self.do("allocate", "get_new_blocks", num_blocks=n)
            if out.refused is None:
                self.tables.append(Table(list(out.result), content[:n]))

        @precondition(has_tables)
        @rule(index=st.integers(0, 7), n=st.integers(1, 2),
              symbol=st.sampled_from(ALPHABET))
        def grow(self, index: int, n: int, symbol: str) -> None:
            """A running request needs ``n`` more blocks for new tokens."""
            t = self.table(index)
            out = self.do("grow", "get_new_blocks", num_blocks=n)
            if out.refused is None:
                t.blocks += list(out.result)
                t.content += [symbol] * n

        @precondition(has_tables)
        @rule(index=st.integers(0, 7), count=st.integers(1, MAX_TABLE))
        def cache_full(self, index: int, count: int) -> None:
            """Up to ``count`` more full blocks of a request enter the prefix cache.

            Block ``i`` is cached under the hash of the table's content up to ``i``, with
            the hash of content up to ``i - 1`` as its parent. Null placeholders and blocks
            already cached under this content (hits) are skipped, as upstream skips them.
            """
            t = self.table(index)
            if not self.spec.enable_caching:
                return
            for _ in range(count):
                i = t.num_cached
                if i >= len(t.blocks):
                    return
                block = t.blocks[i]
                t.num_cached += 1
                if block == NULL_BLOCK or self.spec.block_hash[block] is not None:
                    continue
                # A chain starts after a null placeholder: there is no parent block to keep.
                has_parent = i > 0 and t.blocks[i - 1] != NULL_BLOCK
                parent = chain_hash(t.content, i - 1) if has_parent else None
                self.do("cache_full", "cache_block", block_id=block,
                        block_hash=chain_hash(t.content, i), parent=parent)

        @rule(n=st.integers(0, 2), content=st.lists(st.sampled_from(ALPHABET),
                                                     min_size=MAX_TABLE, max_size=MAX_TABLE))
        def allocate_behind_null(self, n: int, content: list[str]) -> None:
            """A request whose first slot is the null placeholder (a skipped window prefix).

            Upstream pads a table with the null block without touching it; freeing the
            table then passes the null block to ``free_blocks``, which ``current`` skips and
            ``classic`` decrements (its count drifts, and it is never queued).
            """
            out = self.do("allocate_behind_null", "get_new_blocks", num_blocks=n)
            if out.refused is None:
                self.tables.append(Table([NULL_BLOCK, *out.result], ["_", *content[:n]]))

        @rule(content=st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=MAX_TABLE))
        def hit(self, content: list[str]) -> None:
            """A new request looks its prefix up block by block and adopts the hits."""
            found: list[int] = []
            for i in range(len(content)):
                out = self.do("hit", "get_cached_block", block_hash=chain_hash(content, i))
                if out.result is None:
                    break
                found.append(out.result)
            if found:
                self.do("hit", "touch", block_ids=found)
                self.tables.append(Table(found, content[: len(found)], len(found)))

        @precondition(has_tables)
        @rule(index=st.integers(0, 7))
        def share(self, index: int) -> None:
            """A second request holds the same blocks (every block gains a reference)."""
            t = self.table(index)
            self.do("share", "touch", block_ids=list(t.blocks))
            self.tables.append(Table(list(t.blocks), list(t.content), t.num_cached))

        @precondition(has_tables)
        @rule(index=st.integers(0, 7))
        def free(self, index: int) -> None:
            """A request finishes: its table is freed in reverse, tail evicted first."""
            t = self.tables.pop(index % len(self.tables))
            self.do("free", "free_blocks", block_ids=list(reversed(t.blocks)))

        @precondition(lambda self: len(self.tables) >= 2)
        @rule(first=st.integers(0, 7), second=st.integers(0, 7))
        def free_two(self, first: int, second: int) -> None:
            """Two requests finish in one call: a block they share is listed twice.

            Legal, since each listing drops one of its references; the block becomes free
            at its last listing and is queued once, there. An allocator that decrements
            everything first and then queues "every listed block now at 0" queues it twice.
            """
            i, j = first % len(self.tables), second % len(self.tables)
            if i == j:
                return
            a, b = self.tables[i], self.tables[j]
            self.tables = [t for k, t in enumerate(self.tables) if k not in (i, j)]
            ids = list(reversed(a.blocks)) + list(reversed(b.blocks))
            self.do("free_two", "free_blocks", block_ids=ids)

        @precondition(has_tables)
        @rule(index=st.integers(0, 7))
        def free_tail(self, index: int) -> None:
            """A request drops its last block (e.g. a speculative block it did not use)."""
            t = self.table(index)
            if not t.blocks:
                return
            block = t.blocks.pop()
            t.content.pop()
            t.num_cached = min(t.num_cached, len(t.blocks))
            self.do("free_tail", "free_blocks", block_ids=[block])

        @precondition(lambda self: can_fork and self.has_tables())
        @rule(index=st.integers(0, 7), slot=st.integers(0, MAX_TABLE - 1))
        def fork(self, index: int, slot: int) -> None:
            """Copy-on-write before a request writes into a block it may share."""
            t = self.table(index)
            if not t.blocks:
                return
            slot %= len(t.blocks)
            out = self.do("fork", "fork_block", block_id=t.blocks[slot])
            if out.refused is None and out.result != t.blocks[slot]:
                t.blocks[slot] = out.result
                t.num_cached = min(t.num_cached, slot)

        @rule()
        def reset(self) -> None:
            """Reset the prefix cache (refused with False while any block is held)."""
            self.do("reset", "reset_prefix_cache")

        @rule(content=st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=MAX_TABLE))
        def lookup(self, content: list[str]) -> None:
            """A pure lookup of some prefix: no reference taken."""
            self.do("lookup", "get_cached_block", block_hash=chain_hash(content, len(content) - 1))

        # -------------------------------------------------------------- bad input

        @precondition(lambda self: bad_input)
        @rule(kind=st.sampled_from(BAD_INPUTS), pick=st.integers(0, 7),
              extra=st.integers(1, 3))
        def bad(self, kind: str, pick: int, extra: int) -> None:
            """An operation the spec refuses: the target must raise and change nothing.

            One rule with a ``kind`` rather than one rule each, so that bad input is one
            choice among the rules instead of crowding out the legal operations.
            """
            step = self.bad_step(kind, pick, extra)
            if step is not None:
                self.do(f"bad:{kind}", step.op, **step.args)

        def bad_step(self, kind: str, pick: int, extra: int) -> Step | None:
            s = self.spec

            def choose(candidates: list[int]) -> int | None:
                return candidates[pick % len(candidates)] if candidates else None

            out_of_range = [-1, s.num_blocks, s.num_blocks + 1][pick % 3]
            held_once = [b for t in self.tables for b in t.blocks if b and s.ref_cnt[b] == 1]
            hashed = [b for b, h in enumerate(s.block_hash) if h is not None]
            steps: dict[str, Step | None] = {
                # asking for more blocks than are free
                "over_allocate": Step("get_new_blocks", {"num_blocks": self.free_count() + extra}),
                "negative_count": Step("get_new_blocks", {"num_blocks": -extra}),
                # ids outside the pool, including -1, which Python lists accept
                "free_unknown_id": Step("free_blocks", {"block_ids": [out_of_range]}),
                "touch_unknown_id": Step("touch", {"block_ids": [out_of_range]}),
                "cache_unknown_id": Step(
                    "cache_block", {"block_id": out_of_range, "block_hash": b"z"}
                ),
                # a double free: the block has no reference left to drop
                "free_unreferenced": _maybe(
                    choose(list(s.free_queue)), lambda b: Step("free_blocks", {"block_ids": [b]})
                ),
                # one call listing a block more often than it is referenced
                "double_free_in_one_call": _maybe(
                    choose(held_once), lambda b: Step("free_blocks", {"block_ids": [b, b]})
                ),
                "cache_null_block": Step("cache_block", {"block_id": NULL_BLOCK,
                                                         "block_hash": b"z"}),
                "cache_unheld_block": _maybe(
                    choose(list(s.free_queue)),
                    lambda b: Step("cache_block", {"block_id": b, "block_hash": b"z"}),
                ),
                "cache_hashed_block": _maybe(
                    choose(hashed), lambda b: Step("cache_block", {"block_id": b,
                                                                   "block_hash": b"z"})
                ),
            }
            if can_fork:
                steps["fork_null_block"] = Step("fork_block", {"block_id": NULL_BLOCK})
                steps["fork_free_block"] = _maybe(
                    choose(list(s.free_queue)), lambda b: Step("fork_block", {"block_id": b})
                )
                steps["fork_unknown_id"] = Step("fork_block", {"block_id": out_of_range})
            return steps.get(kind)

        # -------------------------------------------------------------- checks

        @invariant()
        def track_pressure(self) -> None:
            """Remember the fullest the pool got; ``teardown`` reports it to Hypothesis."""
            if self.driver is not None:
                used = 1.0 - self.free_count() / max(1, self.spec.num_blocks - 1)
                self.peak_pressure = max(self.peak_pressure, used)

        def teardown(self) -> None:
            # Steer generation toward full pools, where eviction and reuse bugs live.
            hypothesis_target(self.peak_pressure, label="peak pool usage")

        @invariant()
        def tables_match_ref_counts(self) -> None:
            """The machine's own bookkeeping: each block is referenced once per table slot."""
            if self.driver is None:
                return
            held = Counter(b for t in self.tables for b in t.blocks)
            for b in range(1, self.spec.num_blocks):
                assert self.spec.ref_cnt[b] == held[b], (
                    f"harness bookkeeping: block {b} ref_cnt {self.spec.ref_cnt[b]} "
                    f"but held {held[b]} times"
                )

    PoolMachine.__name__ = "PoolMachine"
    PoolMachine.__qualname__ = "PoolMachine"
    return PoolMachine
