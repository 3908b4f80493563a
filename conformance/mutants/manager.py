"""Manager-level mutants: each a ``KVCacheManager`` subclass with one realistic bug.

Every class docstring says what real mistake it models. Bugs in the manager's own logic
override the one method they live in; bugs in block hashing swap in a hasher built by
:func:`_request_block_hasher`, a plain copy of impl's hasher with one knob turned.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from kvspec.conformance.manager.targets import manager_factory_for
from kvspec.conformance.mutants.zoo import Mutant
from kvspec.impl.block import BlockHash, KVCacheBlock
from kvspec.impl.kv_cache_manager import KVCacheManager, cdiv
from kvspec.impl.kv_cache_utils import (
    HashFn,
    generate_block_hash_extra_keys,
    hash_block_tokens,
    sha256,
)
from kvspec.impl.request import Request

ExtraKeys = Callable[[Request, int, int, str], tuple[Any, ...] | None]


def _extra_keys(request: Request, start: int, end: int, profile: str) -> tuple[Any, ...] | None:
    return generate_block_hash_extra_keys(request, start, end, profile=profile)


def _request_block_hasher(
    block_size: int,
    profile: str,
    *,
    hash_fn: HashFn = sha256,
    extra_keys: ExtraKeys = _extra_keys,
    chain: bool = True,
    hash_partial: bool = False,
) -> Callable[[Request], list[BlockHash]]:
    """impl's request block hasher, with the knobs the hashing mutants turn."""

    def hasher(request: Request) -> list[BlockHash]:
        start = len(request.block_hashes) * block_size
        parent = request.block_hashes[-1] if request.block_hashes else None
        tokens = request.all_token_ids
        out: list[BlockHash] = []
        while start + (1 if hash_partial else block_size) <= len(tokens):
            end = min(start + block_size, len(tokens))
            extra = extra_keys(request, start, end, profile)
            parent = hash_block_tokens(hash_fn, parent if chain else None, tokens[start:end],
                                       extra)
            out.append(parent)
            start += block_size
        return out

    return hasher


class _HasherMutant(KVCacheManager):
    """A manager whose block hasher is replaced by ``make_hasher(block_size, profile)``."""

    @staticmethod
    def make_hasher(block_size: int, profile: str) -> Callable[[Request], list[BlockHash]]:
        raise NotImplementedError

    def __init__(self, num_blocks: int, block_size: int, **kwargs: Any) -> None:
        super().__init__(num_blocks, block_size, **kwargs)
        self.block_hasher = self.make_hasher(block_size, self.profile)


# --------------------------------------------------------------------------- lookup


class HitsNotCapped(KVCacheManager):
    """Lookup caps hits at ``num_tokens // block_size`` blocks, not ``(num_tokens - 1) //``.

    A fully cached prompt then hits every block, and the model has no last token to run
    for the logits the next token is sampled from.
    """

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        if not self.enable_caching:
            return [], 0
        blocks: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[: request.num_tokens // self.block_size]:
            cached = self.block_pool.get_cached_block(block_hash, (0,))
            if not cached:
                break
            blocks.append(cached[0])
        self._pending_lookups[request.request_id] = request.num_tokens
        return blocks, len(blocks) * self.block_size


class StatsCountedOnEveryAttempt(KVCacheManager):
    """Statistics recorded in ``get_computed_blocks``, on every scheduling attempt.

    A request that does not fit is looked up again at every step, and each lookup counts
    its queries and hits once more (upstream before the admission-time fix).
    """

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        blocks, num_tokens = super().get_computed_blocks(request)
        self._pending_lookups.pop(request.request_id, None)
        if self.log_stats and self.enable_caching:
            if request.num_preemptions > 0:
                self._stats.preempted_requests += 1
                self._stats.preempted_queries += request.num_tokens
                self._stats.preempted_hits += num_tokens
            else:
                self._stats.requests += 1
                self._stats.queries += request.num_tokens
                self._stats.hits += num_tokens
        return blocks, num_tokens


# --------------------------------------------------------------------------- allocation


class _AllocationMutant(KVCacheManager):
    """``allocate_slots`` written out, with the two steps a mutant may get wrong as hooks."""

    def _num_blocks_needed(self, num_new_blocks: int, hits: list[KVCacheBlock]) -> int:
        return num_new_blocks + sum(1 for b in hits if b.ref_cnt == 0 and not b.is_null)

    def _adopt_then_allocate(
        self, req_id: str, table: list[KVCacheBlock], hits: list[KVCacheBlock],
        num_new_blocks: int,
    ) -> list[KVCacheBlock]:
        if hits:
            self.block_pool.touch(hits)
            table.extend(hits)
            self.num_cached_block[req_id] = len(table)
        new_blocks = self.block_pool.get_new_blocks(num_new_blocks) if num_new_blocks else []
        table.extend(new_blocks)
        return new_blocks

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[KVCacheBlock] | None = None,
        num_lookahead_tokens: int = 0,
    ) -> list[KVCacheBlock] | None:
        req_id = request.request_id
        hits = list(new_computed_blocks) if new_computed_blocks else []
        self._check_allocate_args(
            request, num_new_tokens, num_new_computed_tokens, hits, num_lookahead_tokens)
        table = self.req_to_blocks.get(req_id, [])
        num_tokens_main = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        num_tokens_to_cache = min(num_tokens_main, request.num_tokens)
        self._check_hashes_cover(request, num_tokens_to_cache)
        num_required = cdiv(num_tokens_main + num_lookahead_tokens, self.block_size)
        num_new_blocks = max(num_required - (len(hits) + len(table)), 0)
        if self._num_blocks_needed(num_new_blocks, hits) > self.block_pool.get_num_free_blocks():
            return None
        new_blocks = self._adopt_then_allocate(req_id, table, hits, num_new_blocks)
        self.req_to_blocks[req_id] = table
        if self.enable_caching:
            self.cache_blocks(request, num_tokens_to_cache)
        self._record_admission(req_id, num_new_computed_tokens,
                               preempted=request.num_preemptions > 0)
        return new_blocks


class CapacityIgnoresEvictableHits(_AllocationMutant):
    """The capacity check counts only new blocks, not the hits at ref count 0.

    Touching such a hit takes it out of the free queue, so the pops that follow can run
    dry: the allocation fails halfway, hits touched, instead of returning ``None``.
    """

    def _num_blocks_needed(self, num_new_blocks: int, hits: list[KVCacheBlock]) -> int:
        return num_new_blocks


class NewBlocksBeforeTouch(_AllocationMutant):
    """New blocks are popped before the hits are touched.

    A hit sitting at ref count 0 near the queue front is popped as a "new" block (losing
    its hash), then touched as a hit: one block twice in the table.
    """

    def _adopt_then_allocate(
        self, req_id: str, table: list[KVCacheBlock], hits: list[KVCacheBlock],
        num_new_blocks: int,
    ) -> list[KVCacheBlock]:
        new_blocks = self.block_pool.get_new_blocks(num_new_blocks) if num_new_blocks else []
        if hits:
            self.block_pool.touch(hits)
            table.extend(hits)
            self.num_cached_block[req_id] = len(table)
        table.extend(new_blocks)
        return new_blocks


class FreeKeepsCachedCount(KVCacheManager):
    """``free`` releases the table but forgets to drop the request's cached-block count.

    A preempted request that comes back is then taken for a running one with blocks
    already cached: its hits are refused or its first blocks are never hashed again.
    """

    def free(self, request: Request) -> None:
        req_id = request.request_id
        blocks = self.req_to_blocks.pop(req_id, [])
        self._pending_lookups.pop(req_id, None)
        self.block_pool.free_blocks(list(reversed(blocks)))


class ForwardOrderFree(KVCacheManager):
    """``free`` releases the table head first: the shared prefix is evicted before its tails.

    The natural loop order; every cached tail then outlives the block all its hits need.
    """

    def free(self, request: Request) -> None:
        req_id = request.request_id
        blocks = self.req_to_blocks.pop(req_id, [])
        self.num_cached_block.pop(req_id, None)
        self._pending_lookups.pop(req_id, None)
        self.block_pool.free_blocks(blocks)


# --------------------------------------------------------------------------- hashing


def _salt_everywhere(
    request: Request, start: int, end: int, profile: str
) -> tuple[Any, ...] | None:
    keys = list(_extra_keys(request, start, end, profile) or ())
    if start != 0 and request.cache_salt:
        keys.append(("cache_salt", request.cache_salt) if profile == "current"
                    else request.cache_salt)
    return tuple(keys) or None


def _salt_nowhere(
    request: Request, start: int, end: int, profile: str
) -> tuple[Any, ...] | None:
    keys = list(_extra_keys(request, start, end, profile) or ())
    if start == 0 and request.cache_salt:
        keys.pop()  # the salt is the last key of block 0
    return tuple(keys) or None


class CacheSaltOnEveryBlock(_HasherMutant):
    """The cache salt goes into every block's extra keys, not only block 0's.

    Isolation still holds (chaining already carried the salt), but every key of a salted
    request differs from upstream's, so caches shared across processes never agree.
    """

    @staticmethod
    def make_hasher(block_size: int, profile: str) -> Callable[[Request], list[BlockHash]]:
        return _request_block_hasher(block_size, profile, extra_keys=_salt_everywhere)


class CacheSaltIgnored(_HasherMutant):
    """The cache salt is dropped from the extra keys: tenants share each other's KV."""

    @staticmethod
    def make_hasher(block_size: int, profile: str) -> Callable[[Request], list[BlockHash]]:
        return _request_block_hasher(block_size, profile, extra_keys=_salt_nowhere)


class HashIgnoresParent(_HasherMutant):
    """Each block is hashed from its own tokens only, not chained to its parent's hash.

    Equal blocks after different prefixes share a key, and a lookup returns K/V computed
    for another prefix.
    """

    @staticmethod
    def make_hasher(block_size: int, profile: str) -> Callable[[Request], list[BlockHash]]:
        return _request_block_hasher(block_size, profile, chain=False)


class PartialBlockCached(_HasherMutant):
    """A partly written last block counts as full: it is hashed and cached.

    Ceil for floor, in the hasher and in ``cache_blocks``: the key then names content
    that later tokens change, and the block is never hashed again once it fills.
    """

    @staticmethod
    def make_hasher(block_size: int, profile: str) -> Callable[[Request], list[BlockHash]]:
        return _request_block_hasher(block_size, profile, hash_partial=True)

    def cache_blocks(self, request: Request, num_tokens: int) -> None:
        if not self.enable_caching:
            return
        req_id = request.request_id
        num_cached = self.num_cached_block.get(req_id, 0)
        num_full = min(cdiv(num_tokens, self.block_size), len(request.block_hashes),
                       len(self.req_to_blocks[req_id]))
        if num_cached >= num_full:
            return
        self.block_pool.cache_full_blocks(
            request.block_hashes, self.req_to_blocks[req_id], num_cached, num_full)
        self.num_cached_block[req_id] = num_full


def _untagged_keys(
    request: Request, start: int, end: int, profile: str
) -> tuple[Any, ...] | None:
    return generate_block_hash_extra_keys(request, start, end, profile="classic")


class ExtraKeysUntagged(_HasherMutant):
    """``current`` profile, but extra keys go in bare, as in ``classic``: a LoRA adapter
    named ``x`` and a tenant salted ``x`` give their first blocks the same key.

    Two tenants' prefixes then hit each other (upstream tagged the keys by kind for this).
    """

    @staticmethod
    def make_hasher(block_size: int, profile: str) -> Callable[[Request], list[BlockHash]]:
        return _request_block_hasher(block_size, profile, extra_keys=_untagged_keys)


def _salt_first_keys(
    request: Request, start: int, end: int, profile: str
) -> tuple[Any, ...] | None:
    keys = generate_block_hash_extra_keys(request, start, end, profile=profile)
    if keys is None or start != 0 or not request.cache_salt:
        return keys
    return (keys[-1], *keys[:-1])  # the salt, then the rest


class SaltBeforeLoRA(_HasherMutant):
    """A salted LoRA request's first block puts the cache salt before the LoRA key.

    Each key is still tagged, so no two tenants collide and prefix caching works within
    one process; but the bytes are not the protocol's, so a cache shared across engines
    (a KV connector, disaggregated prefill) never hits between this manager and another.
    Only a request with both an adapter and a salt shows it.
    """

    @staticmethod
    def make_hasher(block_size: int, profile: str) -> Callable[[Request], list[BlockHash]]:
        return _request_block_hasher(block_size, profile, extra_keys=_salt_first_keys)


def weak_hash(obj: Any) -> bytes:
    """One byte of SHA-256: 256 possible keys, so distinct prefixes collide."""
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()[:1]


class WeakHash(KVCacheManager):
    """Block hashes keep 8 bits: distinct prefixes collide.

    Models a truncated digest, or a fast non-cryptographic hash folded to a byte: a
    lookup then returns K/V computed for another prefix.
    """

    def __init__(self, num_blocks: int, block_size: int, **kwargs: Any) -> None:
        super().__init__(num_blocks, block_size, hash_fn=weak_hash, **kwargs)


# --------------------------------------------------------------------------- the zoo


def _mutants() -> list[Mutant]:
    def manager(name: str, cls: type[KVCacheManager]) -> Mutant:
        return Mutant(
            name=name,
            level="manager",
            factory=manager_factory_for(cls),
            summary=(cls.__doc__ or "").strip().splitlines()[0],
        )

    return [
        manager("hits-not-capped", HitsNotCapped),
        manager("capacity-ignores-evictable-hits", CapacityIgnoresEvictableHits),
        manager("new-blocks-before-touch", NewBlocksBeforeTouch),
        manager("manager-forward-free", ForwardOrderFree),
        manager("salt-on-every-block", CacheSaltOnEveryBlock),
        manager("salt-ignored", CacheSaltIgnored),
        manager("hash-ignores-parent", HashIgnoresParent),
        manager("partial-block-cached", PartialBlockCached),
        manager("weak-8-bit-hash", WeakHash),
        manager("stats-every-attempt", StatsCountedOnEveryAttempt),
        manager("free-keeps-cached-count", FreeKeepsCachedCount),
        manager("extra-keys-untagged", ExtraKeysUntagged),
        manager("salt-before-lora", SaltBeforeLoRA),
    ]


MANAGER_MUTANTS = _mutants()
