"""KVCacheManager: where requests meet the block pool (one full-attention group).

The pool knows blocks; the manager knows requests. It keeps each request's block table
(``req_to_blocks``), how many of its leading blocks are already in the prefix cache
(``num_cached_block``), looks up prefix hits and turns a scheduling decision ("run N more
tokens of this request") into blocks.

Three orderings carry the correctness argument, and each has a test named after it:

* ``get_computed_blocks`` is pure. Hits it returns may sit in the free queue at ref count
  0; they are protected only when ``allocate_slots`` touches them.
* ``allocate_slots`` checks capacity before any mutation, counting zero-ref hits as
  consuming free blocks (touching one takes it out of the free queue). On failure it
  returns None and nothing has changed; on success it touches the hits *before* popping
  new blocks, so a pop can never evict a hit it is about to hand out.
* ``free`` releases a table tail first, so a request's longest (least shared) prefixes
  become evictable before the short ones every hit needs.

Profiles (``docs/manager.md``): ``current`` accepts ``num_new_tokens == 0`` when hits are
being adopted, ``classic`` refuses it; the profile is also passed to the pool and to the
block hasher (:attr:`KVCacheManager.block_hasher`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvspec.impl.block import KVCacheBlock, group_id_suffix
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.errors import InvalidArgumentError, KVCacheError
from kvspec.impl.kv_cache_utils import HashFn, get_request_block_hasher, sha256
from kvspec.impl.request import Request
from kvspec.impl.validate import (
    as_list,
    check_bool,
    check_callable,
    check_int,
    check_optional_int,
    check_str,
    show,
)

KV_CACHE_GROUP_ID = 0
"""The one group this manager serves; keys are built with it (``kvspec.impl.block``)."""


class AllocationError(KVCacheError, ValueError):
    """``allocate_slots`` was called with arguments no scheduler can produce: hits for a
    request that already has blocks, a hit count that disagrees with its token count,
    or a request whose block hashes do not cover the blocks to be cached."""


@dataclass
class PrefixCacheStats:
    """Prefix-cache hit statistics since the manager was built.

    One record per *admitted* request (a lookup followed by a successful
    ``allocate_slots``): a request whose allocation fails is looked up again at the
    next step, and counting every attempt would inflate both queries and hits.

    ``queries`` sums the looked-up requests' token counts, ``hits`` the computed tokens
    they actually adopted. A request readmitted after preemption
    (``request.num_preemptions > 0``) is counted in the ``preempted_`` fields instead:
    its hits are mostly its own blocks coming back, which says little about how well
    the cache serves new traffic. ``reset`` records that the prefix cache was reset.
    """

    requests: int = 0
    queries: int = 0
    hits: int = 0
    preempted_requests: int = 0
    preempted_queries: int = 0
    preempted_hits: int = 0
    reset: bool = False

    @property
    def hit_rate(self) -> float:
        """Hits over queries of first admissions (0.0 before any)."""
        return self.hits / self.queries if self.queries else 0.0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_request(op: str, request: object) -> Request:
    """``request`` if it is a :class:`Request` whose scheduler-owned counters are counts."""
    if not isinstance(request, Request):
        raise InvalidArgumentError(f"{op}: request={show(request)}; expected a Request")
    computed, preemptions = request.num_computed_tokens, request.num_preemptions
    if (computed.__class__ is not int or preemptions.__class__ is not int or computed < 0
            or preemptions < 0):
        where = f"{op}({request.request_id!r})"
        check_int(where, "request.num_computed_tokens", computed)
        check_int(where, "request.num_preemptions", preemptions)
    return request


class KVCacheManager:
    """Block tables and prefix caching for requests over one :class:`BlockPool`.

    ``num_blocks`` includes the null block (block 0), so ``num_blocks - 1`` are usable.
    ``max_model_len`` (None: unbounded) caps the tokens one request can hold.

    Every public method checks its arguments (and the request's scheduler-owned counters)
    before it changes anything, so a refused call leaves the pool, the tables and the
    statistics as they were.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_caching: bool = True,
        profile: str = "current",
        log_stats: bool = True,
        max_model_len: int | None = None,
        hash_fn: HashFn = sha256,
    ) -> None:
        op = "KVCacheManager"
        self.block_size = check_int(op, "block_size", block_size, minimum=1)
        self.max_model_len = check_optional_int(op, "max_model_len", max_model_len, 1)
        self.log_stats = check_bool(op, "log_stats", log_stats)
        check_callable(op, "hash_fn", hash_fn)
        self.block_hasher = get_request_block_hasher(block_size, hash_fn, profile=profile)
        """Pass as ``Request(..., block_hasher=manager.block_hasher)``."""
        self.block_pool = BlockPool(num_blocks, enable_caching=enable_caching, profile=profile)
        self.enable_caching = self.block_pool.enable_caching
        self.profile = profile

        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # A request is "running" once it has an entry here: set when hits are adopted, or
        # when a cache_blocks call caches at least one block (SEMANTICS 5.6.4).
        self.num_cached_block: dict[str, int] = {}
        self._stats = PrefixCacheStats()
        # Lookups awaiting admission: request id -> tokens queried.
        self._pending_lookups: dict[str, int] = {}
        self._key_suffix = group_id_suffix(op, KV_CACHE_GROUP_ID)

    # -- lookup ---------------------------------------------------------------------------

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """The longest cached prefix of ``request``: ``(blocks, num_computed_tokens)``.

        At most ``(num_tokens - 1) // block_size`` blocks: with every token cached the
        model must still run the last one to get logits to sample from, and hits are
        whole blocks, so a 48-token prompt at block size 16 hits 2 blocks (32 tokens) and
        recomputes the third. The scan stops at the first miss: hashes are chained, so
        every later block would miss too.

        Pure: no ref count or queue changes. Caching off: always ``([], 0)``.
        """
        if request.__class__ is not Request:
            check_request("get_computed_blocks", request)
        if not self.enable_caching:
            return [], 0
        blocks = self.block_pool.get_cached_prefix(
            request.block_hashes[:self._max_hit_blocks(request)], KV_CACHE_GROUP_ID)
        self._pending_lookups[request.request_id] = request.num_tokens
        return blocks, len(blocks) * self.block_size

    def _max_hit_blocks(self, request: Request) -> int:
        return max(request.num_tokens - 1, 0) // self.block_size

    # -- allocation -----------------------------------------------------------------------

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[KVCacheBlock] | None = None,
        num_lookahead_tokens: int = 0,
    ) -> list[KVCacheBlock] | None:
        """Give ``request`` slots for ``num_new_tokens`` more tokens; None if they do not fit.

        ``new_computed_blocks`` / ``num_new_computed_tokens`` are the hits from
        :meth:`get_computed_blocks` being adopted now (only for a request without
        blocks). ``num_lookahead_tokens`` are speculative slots: allocated, never cached.
        Returns only the newly allocated blocks, not the adopted hits.
        """
        hits = (as_list("allocate_slots", "new_computed_blocks", new_computed_blocks)
                if new_computed_blocks else [])
        self._check_allocate_args(
            request, num_new_tokens, num_new_computed_tokens, hits, num_lookahead_tokens)
        req_id = request.request_id
        table = self.req_to_blocks.get(req_id)
        if table is None:
            table = []

        num_tokens_main = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        num_tokens_need_slot = num_tokens_main + num_lookahead_tokens
        if self.max_model_len is not None and num_tokens_need_slot > self.max_model_len:
            num_tokens_need_slot = self.max_model_len
        num_tokens = request.num_tokens
        num_tokens_to_cache = num_tokens_main if num_tokens_main < num_tokens else num_tokens
        self._check_hashes_cover(request, num_tokens_to_cache)
        preempted = request.num_preemptions > 0

        # Capacity first: nothing below may run unless all of it can.
        num_new_blocks = (-(-num_tokens_need_slot // self.block_size)
                          - len(hits) - len(table))
        num_needed = num_new_blocks if num_new_blocks > 0 else 0
        if hits:  # a hit at ref_cnt 0 leaves the free queue when touched
            num_needed += sum(1 for b in hits if b.ref_cnt == 0 and not b.is_null)
        if num_needed > self.block_pool.free_block_queue.num_free_blocks:
            return None

        # Touch hits before popping: a popped zero-ref hit would lose its hash and be
        # handed out twice (once as a hit, once as a new block).
        if hits:
            self.block_pool.touch(hits)
            table.extend(hits)
            self.num_cached_block[req_id] = len(table)
        if num_new_blocks > 0:
            new_blocks = self.block_pool.get_new_blocks(num_new_blocks)
            table.extend(new_blocks)
        else:
            new_blocks = []
        self.req_to_blocks[req_id] = table

        if self.enable_caching:
            self.cache_blocks(request, num_tokens_to_cache)
        if req_id in self._pending_lookups:
            self._record_admission(req_id, num_new_computed_tokens, preempted=preempted)
        return new_blocks

    def cache_blocks(self, request: Request, num_tokens: int) -> None:
        """Enter the request's newly full blocks below ``num_tokens`` into the prefix cache.

        Blocks ``[num_cached_block, num_tokens // block_size)``. Callers cap
        ``num_tokens`` at ``request.num_tokens``, so lookahead (draft) slots, whose
        tokens may be rejected, are never cached. Refused when the request does not hold
        that many blocks.
        """
        if request.__class__ is not Request:
            check_request("cache_blocks", request)
        if num_tokens.__class__ is not int or num_tokens < 0:
            num_tokens = check_int(f"cache_blocks({request.request_id!r})", "num_tokens",
                                   num_tokens)
        if not self.enable_caching:
            return
        req_id = request.request_id
        block_size = self.block_size
        num_cached = self.num_cached_block.get(req_id, 0)
        num_full = num_tokens // block_size
        if num_full > len(request.block_hashes):
            num_full = len(request.block_hashes)
        if num_cached >= num_full:
            return
        table = self.req_to_blocks.get(req_id, ())
        if len(table) < num_full:
            raise AllocationError(
                f"cache_blocks({req_id!r}): {num_full} full blocks to cache but the request "
                f"holds {len(table)}; expected num_tokens within its allocated slots")
        self.block_pool.cache_full_blocks(
            request.block_hashes, table, num_cached, num_full, KV_CACHE_GROUP_ID)
        self.num_cached_block[req_id] = num_full

    def _check_allocate_args(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int,
        hits: list[KVCacheBlock],
        num_lookahead_tokens: int,
    ) -> None:
        """Every refusal of ``allocate_slots``, made before anything changes."""
        check_request("allocate_slots", request)
        if (num_new_tokens.__class__ is not int or num_new_computed_tokens.__class__ is not int
                or num_lookahead_tokens.__class__ is not int or num_new_tokens < 0
                or num_new_computed_tokens < 0 or num_lookahead_tokens < 0):
            op = f"allocate_slots({request.request_id!r})"
            check_int(op, "num_new_tokens", num_new_tokens)
            check_int(op, "num_new_computed_tokens", num_new_computed_tokens)
            check_int(op, "num_lookahead_tokens", num_lookahead_tokens)
        if num_new_tokens == 0 and (self.profile == "classic" or num_new_computed_tokens == 0):
            expected = ("num_new_tokens > 0" if self.profile == "classic"
                        else "num_new_tokens > 0 or computed tokens to adopt")
            raise InvalidArgumentError(
                f"allocate_slots({request.request_id!r}): nothing to allocate "
                f"(num_new_tokens=0, num_new_computed_tokens={num_new_computed_tokens}); "
                f"expected {expected}")
        if num_new_computed_tokens != len(hits) * self.block_size:
            raise AllocationError(
                f"allocate_slots({request.request_id!r}): num_new_computed_tokens="
                f"{num_new_computed_tokens} but {len(hits)} hit blocks of {self.block_size} "
                "tokens; expected the pair returned by get_computed_blocks")
        if self.max_model_len is not None:
            num_tokens_main = (request.num_computed_tokens + num_new_computed_tokens
                               + num_new_tokens)
            if num_tokens_main > self.max_model_len:
                raise AllocationError(
                    f"allocate_slots({request.request_id!r}): {num_tokens_main} tokens after "
                    f"this step; expected at most max_model_len={self.max_model_len}")
        if hits:
            self._check_hits(request, hits)

    def _check_hits(self, request: Request, hits: list[KVCacheBlock]) -> None:
        """Hits are adopted only at admission, and only as ``get_computed_blocks`` found them:
        this pool's blocks, each still cached under the request's hash at its position."""
        req_id = request.request_id
        op = f"allocate_slots({req_id!r})"
        if not self.enable_caching:
            raise AllocationError(
                f"{op}: {len(hits)} hit blocks with prefix caching disabled; expected none")
        if (req_id in self.num_cached_block or self.req_to_blocks.get(req_id)
                or request.num_computed_tokens):
            raise AllocationError(
                f"{op}: hits adopted by a request that already holds blocks "
                f"{self.get_block_ids(req_id)} or {request.num_computed_tokens} computed "
                "tokens; expected hits only at admission")
        if len(hits) > self._max_hit_blocks(request):
            raise AllocationError(
                f"{op}: {len(hits)} hit blocks for {request.num_tokens} tokens; expected at "
                f"most {self._max_hit_blocks(request)} (a hit never covers the last token)")
        self.block_pool.check_blocks(op, hits)
        suffix = self._key_suffix
        for block, block_hash in zip(hits, request.block_hashes, strict=False):
            key = block.block_hash
            if key is None or not isinstance(block_hash, bytes) or key != block_hash + suffix:
                raise AllocationError(
                    f"{op}: hit block {block.block_id} is not cached under the request's hash "
                    f"at its position; expected the blocks get_computed_blocks returned")

    def _check_hashes_cover(self, request: Request, num_tokens_to_cache: int) -> None:
        # A request built without this manager's hasher (or with another block size)
        # cannot be cached; say so before anything is allocated.
        num_full = num_tokens_to_cache // self.block_size
        if len(request.block_hashes) < num_full and self.enable_caching:
            raise AllocationError(
                f"allocate_slots({request.request_id!r}): {num_full} full blocks to cache but "
                f"only {len(request.block_hashes)} block hashes; expected a request built "
                "with block_hasher=manager.block_hasher")

    # -- release --------------------------------------------------------------------------

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first. Unknown request: no-op.

        ``free_blocks`` queues its first argument nearest the eviction end, so passing
        the table reversed makes the longest prefixes (least shared) evictable first
        and keeps the short prefixes, which every hit starts from, cached longest.
        The pool frees first, so a refusal leaves the request's bookkeeping in place.
        """
        if request.__class__ is not Request:
            check_request("free", request)
        req_id = request.request_id
        blocks = self.req_to_blocks.get(req_id)
        if blocks:
            self.block_pool.free_blocks(blocks[::-1])
        self.req_to_blocks.pop(req_id, None)
        self.num_cached_block.pop(req_id, None)
        self._pending_lookups.pop(req_id, None)

    def reset_prefix_cache(self) -> bool:
        """Drop every cached hash; refused (False) while any request holds a block."""
        if not self.block_pool.reset_prefix_cache():
            return False
        if self.log_stats:
            self._stats.reset = True
        return True

    # -- observation ----------------------------------------------------------------------

    @property
    def usage(self) -> float:
        """Fraction of non-null blocks referenced by some request (evictable ones are free)."""
        return self.block_pool.get_usage()

    def get_blocks(self, request_id: str) -> list[KVCacheBlock]:
        """The request's block table (a copy); empty for an unknown request."""
        return list(self.req_to_blocks.get(check_str("get_blocks", "request_id", request_id),
                                           ()))

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table as ids; empty for an unknown request."""
        check_str("get_block_ids", "request_id", request_id)
        return [b.block_id for b in self.req_to_blocks.get(request_id, ())]

    def get_prefix_cache_stats(self) -> PrefixCacheStats | None:
        """A snapshot of the hit statistics, or None when built with ``log_stats=False``."""
        if not self.log_stats:
            return None
        s = self._stats  # field by field: dataclasses.replace costs more than the call
        return PrefixCacheStats(s.requests, s.queries, s.hits, s.preempted_requests,
                                s.preempted_queries, s.preempted_hits, s.reset)

    def _record_admission(self, req_id: str, num_hits: int, *, preempted: bool = False) -> None:
        num_queried = self._pending_lookups.pop(req_id, None)
        if num_queried is None or not self.log_stats:
            return
        if preempted:
            self._stats.preempted_requests += 1
            self._stats.preempted_queries += num_queried
            self._stats.preempted_hits += num_hits
        else:
            self._stats.requests += 1
            self._stats.queries += num_queried
            self._stats.hits += num_hits
