"""The pool protocol's small vocabulary: what the exhaustive engine enumerates.

Every operation of the pool protocol, each with every value of a small argument set:

* ``get_new_blocks(n)`` for n in -1..2 (the negative count and, in a pool with fewer free
  blocks, over-allocation are the bad inputs);
* ``touch`` and ``free_blocks`` of one block (every id, the null block, and the ids -1 and
  N just outside the pool); ``touch`` of every ordered pair of non-null blocks, and
  ``free_blocks`` of every ordered pair of held blocks (a pair listing one block twice
  included);
* ``cache_block(b, h)`` of every block that may be cached (held, not cached yet) with every
  hash of a four-hash chain family (``a``, ``b``, ``a.a``, ``a.b``: two roots, two children
  of one root, so duplicates and shared prefixes are one step away), its parent given as the
  hash it extends; of every other id (refused whatever the hash) with ``a``;
* ``get_cached_block`` of the two roots; ``reset_prefix_cache``; ``fork_block`` of every id.

No bookkeeping: a state is the spec's state and the target's observations. These are
arbitrary protocol sequences, so any sequence the minimizer can reach by deleting steps of
one found here is enumerated here too. A sequence that leaves the usage discipline
``eviction-order`` assumes (a forward free of a chain, say) is judged like any other, with
that invariant waived from then on (:mod:`kvspec.conformance.pool.driver`).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from kvspec.conformance.level import Domain, Harness, Recorder, RunOptions, move
from kvspec.conformance.pool.driver import PoolConfig, PoolDriver, start_driver

HASHES: tuple[bytes, ...] = (b"a", b"b", b"a.a", b"a.b")
LOOKUPS: tuple[bytes, ...] = (b"a", b"b")


def parent_of(block_hash: bytes) -> bytes | None:
    """The hash a chained hash extends (``a.b`` extends ``a``; a root extends nothing)."""
    return block_hash.rpartition(b".")[0] or None


def _ids(v: PoolVocabulary) -> range:
    return range(-1, v.num_blocks + 1)


def _touch_lists(v: PoolVocabulary) -> list[list[int]]:
    usable = range(1, v.num_blocks)
    return [[b] for b in _ids(v)] + [[b, c] for b in usable for c in usable]


def _free_lists(v: PoolVocabulary) -> list[list[int]]:
    held = [b for b in range(1, v.num_blocks) if v.driver.spec.ref_cnt[b] > 0]
    return [[b] for b in _ids(v)] + [[b, c] for b in held for c in held]


def _cache_args(v: PoolVocabulary) -> list[tuple[int, bytes]]:
    """Every hash for a block that may be cached (held, not cached yet); one hash for the
    rest, whose refusal does not depend on it."""
    s = v.driver.spec
    out: list[tuple[int, bytes]] = []
    for b in _ids(v):
        cacheable = 0 < b < v.num_blocks and s.ref_cnt[b] > 0 and s.block_hash[b] is None
        out += [(b, h) for h in (HASHES if cacheable else HASHES[:1])]
    return out


class PoolVocabulary(Harness):
    """The pool protocol's operations, with small arguments; see the module docstring."""

    driver: PoolDriver

    def __init__(self, driver: PoolDriver, recorder: Recorder, *, can_fork: bool) -> None:
        super().__init__(driver, recorder)
        self.can_fork = can_fork

    @property
    def num_blocks(self) -> int:
        return self.driver.config.num_blocks

    def key(self) -> Hashable:
        return ()

    def copy_bookkeeping(self) -> PoolVocabulary:
        return self.shallow_copy()  # type: ignore[return-value]

    @move(num_blocks=Domain(values=(-1, 0, 1, 2)))
    def get_new_blocks(self, num_blocks: int) -> None:
        self.do("get_new_blocks", num_blocks=num_blocks)

    @move(block_ids=Domain(values=_touch_lists))
    def touch(self, block_ids: list[int]) -> None:
        self.do("touch", block_ids=block_ids)

    @move(block_ids=Domain(values=_free_lists))
    def free_blocks(self, block_ids: list[int]) -> None:
        self.do("free_blocks", block_ids=block_ids)

    @move(block=Domain(values=_cache_args))
    def cache_block(self, block: tuple[int, bytes]) -> None:
        block_id, block_hash = block
        self.do("cache_block", block_id=block_id, block_hash=block_hash,
                parent=parent_of(block_hash))

    @move(block_hash=Domain(values=LOOKUPS))
    def get_cached_block(self, block_hash: bytes) -> None:
        self.do("get_cached_block", block_hash=block_hash)

    @move()
    def reset_prefix_cache(self) -> None:
        self.do("reset_prefix_cache")

    @move(block_id=Domain(values=_ids), enabled=lambda v: v.can_fork)
    def fork_block(self, block_id: int) -> None:
        self.do("fork_block", block_id=block_id)


def start_vocabulary(factory: Any, config: PoolConfig, options: RunOptions,
                     recorder: Recorder) -> PoolVocabulary:
    """The vocabulary over a fresh target, the fresh state judged."""
    from kvspec.conformance.pool.targets import unsupported_operations

    driver = start_driver(factory, config, judge_bad_input=options.checks_bad_input)
    return PoolVocabulary(driver, recorder,
                          can_fork="fork_block" not in unsupported_operations(factory))
