"""The contract a *hybrid* KV-cache manager implements so that kvspec can drive it.

The manager protocol (:mod:`kvspec.conformance.manager.protocol`) with one block table per
KV-cache group wherever it has one table, and a KV connector's external computed tokens on
``allocate_slots``. Requests are named by string ids, blocks by integer ids ``0 ..
num_blocks - 1`` (block 0 is the null block, which sliding-window tables hold at positions
before the window). A target refuses an operation by raising; a refusal must change no
observation.

Groups
    A factory is called ``factory(num_blocks, groups, *, enable_caching=True,
    profile="current")`` where ``groups`` is a tuple of ``(kind, block_size,
    sliding_window)``: ``("full", 4, None)`` or ``("sliding", 2, 3)``. All groups share the
    one pool. Requests are hashed at the gcd of the block sizes; group ``g`` reads block
    ``i``'s hash through its coarse view, and caches it under that hash followed by ``g``
    as 4 big-endian bytes (``block_hash`` reports that whole key).

Operations (semantics: :mod:`kvspec.spec.hybrid`)
    ``add_request(request_id, prompt_token_ids)``, ``append_output_tokens(request_id,
    token_ids)``, ``set_num_computed_tokens(request_id, n)``: the scheduler's bookkeeping,
    as at the manager level.
    ``get_computed_blocks(request_id) -> (blocks_per_group, num_tokens)``: the longest hit
    every group serves, lcm aligned, capped at ``num_tokens - 1``; pure.
    ``allocate_slots(request_id, num_new_tokens, num_new_computed_tokens=0,
    new_computed_blocks=(), num_lookahead_tokens=0, num_external_computed_tokens=0) ->
    blocks_per_group | None``: ``new_computed_blocks`` is the per-group hit that
    ``get_computed_blocks`` returned (or empty); returns per group the blocks taken for
    the new tokens (not the hit, not the external tokens' blocks).
    ``free(request_id)``, ``preempt(request_id)``, ``reset_prefix_cache() -> bool``.
Observations
    ``get_usage()``, ``get_num_free_blocks()``, ``ref_cnt(block_id)``, ``block_hash(block_id)
    -> bytes | None`` (the whole key, group id included), ``free_block_ids()`` (next evicted
    first), ``get_block_ids(request_id) -> list[list[int]]`` (one table per group),
    ``request_block_hashes(request_id)`` (the fine hashes).

A factory whose targets hash another way sets ``opaque_hashes = True``: no hash bytes are
compared, and the content record alone judges every hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

#: ``(kind, block_size, sliding_window)``: one KV-cache group as a factory receives it.
GroupTuple = tuple[str, int, int | None]


@runtime_checkable
class HybridTarget(Protocol):
    """A hybrid KV-cache manager kvspec can drive; see the module docstring."""

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int]) -> None: ...
    def append_output_tokens(self, request_id: str, token_ids: Sequence[int]) -> None: ...
    def set_num_computed_tokens(self, request_id: str, num_computed_tokens: int) -> None: ...
    def get_computed_blocks(self, request_id: str) -> tuple[list[list[int]], int]: ...
    def allocate_slots(
        self, request_id: str, num_new_tokens: int, num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[Sequence[int]] = (), num_lookahead_tokens: int = 0,
        num_external_computed_tokens: int = 0,
    ) -> list[list[int]] | None: ...
    def free(self, request_id: str) -> None: ...
    def preempt(self, request_id: str) -> None: ...
    def reset_prefix_cache(self) -> bool: ...
    def get_usage(self) -> float: ...
    def get_num_free_blocks(self) -> int: ...
    def ref_cnt(self, block_id: int) -> int: ...
    def block_hash(self, block_id: int) -> bytes | None: ...
    def free_block_ids(self) -> list[int]: ...
    def get_block_ids(self, request_id: str) -> list[list[int]]: ...
    def request_block_hashes(self, request_id: str) -> list[bytes]: ...


class HybridFactory(Protocol):
    def __call__(self, num_blocks: int, groups: Sequence[GroupTuple], *,
                 enable_caching: bool = True, profile: str = "current") -> HybridTarget: ...
