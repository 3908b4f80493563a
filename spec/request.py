"""A request, as the manager sees it: tokens, identity keys, and its block hashes.

A plain record. The scheduler (a test, or the conformance harness) owns it: it appends
output tokens and advances ``num_computed_tokens``; the manager only reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kvspec.spec.hashing import (
    HashFn,
    LoRARequest,
    MultiModalItem,
    block_hashes,
    sha256_hash,
)
from kvspec.spec.profiles import CURRENT, Profile

__all__ = ["LoRARequest", "MultiModalItem", "Request"]


@dataclass
class Request:
    """One request.

    ``block_hashes`` always holds the hash of every *full* block of ``all_token_ids`` and
    nothing else: it is extended on construction and on every append, never rewritten,
    so the keys of earlier blocks stay valid while the request grows.

    ``num_computed_tokens`` is the scheduler's count of tokens whose K/V is (or, after the
    current step, will be) in the request's blocks; preemption resets it to 0.
    ``skip_reading_prefix_cache`` marks requests that must not *read* the cache (upstream:
    prompt-logprob and pooling requests); they still write to it. ``num_preemptions`` is
    counted by the scheduler; a readmitted request's lookup goes to separate statistics.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    block_size: int
    profile: Profile = CURRENT
    lora: LoRARequest | None = None
    cache_salt: str | None = None
    mm_items: tuple[MultiModalItem, ...] = ()
    skip_reading_prefix_cache: bool = False
    hash_fn: HashFn = sha256_hash
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_preemptions: int = 0
    block_hashes: list[bytes] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(
                f"Request {self.request_id!r}: block_size {self.block_size}, expected >= 1"
            )
        self.prompt_token_ids = tuple(self.prompt_token_ids)
        self.mm_items = tuple(sorted(self.mm_items, key=lambda item: item.offset))
        self.update_block_hashes()

    @property
    def all_token_ids(self) -> tuple[int, ...]:
        return self.prompt_token_ids + tuple(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens: a resumed request's outputs can be prefix hits too."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def append_output_token_ids(self, token_ids: int | Iterable[int]) -> None:
        """Append sampled tokens; hash any block they complete."""
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        self.output_token_ids.extend(token_ids)
        self.update_block_hashes()

    def update_block_hashes(self) -> None:
        """Extend ``block_hashes`` with the blocks completed since the last call."""
        self.block_hashes.extend(
            block_hashes(
                self.all_token_ids,
                self.block_size,
                known=self.block_hashes,
                lora=self.lora,
                cache_salt=self.cache_salt,
                mm_items=self.mm_items,
                profile=self.profile,
                hash_fn=self.hash_fn,
            )
        )
