"""The spec itself as a pool target (``--target spec``): the reference model as a test double.

Driven against the spec, it agrees by construction, so what a run checks is the *spec's*
invariants on every state the moves reach (the driver checks the spec's own state first).
That is how the test suite shows the invariant set is true of the spec under every machine
move, and a quick way to check a harness change: a failure here is the harness's or the
spec's, never a target's.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvspec.spec import errors
from kvspec.spec import pool as sp
from kvspec.spec.errors import Refused
from kvspec.spec.profiles import get_profile


class SpecPool:
    """:class:`~kvspec.conformance.pool.protocol.PoolTarget` over :mod:`kvspec.spec.pool`.
    A refusal raises the spec's :class:`~kvspec.spec.errors.Refused`."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True,
                 profile: str = "current") -> None:
        self.state = sp.init_pool(num_blocks, enable_caching=enable_caching,
                                  profile=get_profile(profile))

    def get_new_blocks(self, num_blocks: int) -> list[int]:
        return sp.get_new_blocks(self.state, num_blocks)

    def touch(self, block_ids: Sequence[int]) -> None:
        sp.touch(self.state, block_ids)

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        sp.free_blocks(self.state, block_ids)

    def cache_block(self, block_id: int, block_hash: bytes) -> None:
        sp.cache_block(self.state, block_id, block_hash)

    def get_cached_block(self, block_hash: bytes) -> int | None:
        return sp.get_cached_block(self.state, block_hash)

    def reset_prefix_cache(self) -> bool:
        return sp.reset_prefix_cache(self.state)

    def fork_block(self, block_id: int) -> int:
        return sp.fork_block(self.state, block_id)

    def get_num_free_blocks(self) -> int:
        return sp.get_num_free_blocks(self.state)

    def get_usage(self) -> float:
        return sp.get_usage(self.state)

    def _require(self, block_id: int) -> None:
        if not 0 <= block_id < self.state.num_blocks:
            raise Refused(errors.BLOCK_OUT_OF_RANGE, f"block {block_id} is not in the pool")

    def ref_cnt(self, block_id: int) -> int:
        self._require(block_id)
        return self.state.ref_cnt[block_id]

    def block_hash(self, block_id: int) -> bytes | None:
        self._require(block_id)
        return self.state.block_hash[block_id]

    def free_block_ids(self) -> list[int]:
        return list(self.state.free_queue)


def spec_pool_factory(num_blocks: int, *, enable_caching: bool = True,
                      profile: str = "current") -> SpecPool:
    """Factory for the spec as a target (``--target spec``)."""
    return SpecPool(num_blocks, enable_caching=enable_caching, profile=profile)
