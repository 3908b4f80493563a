"""The contract a target KV-cache *manager* implements so that kvspec can drive it.

The pool protocol (:mod:`kvspec.conformance.pool.protocol`) checks blocks; this one checks where
requests meet blocks: prefix hits, the ``num_tokens - 1`` cap, capacity checks that count
evictable hits, reverse-order free, preemption and hit statistics. A *manager target* is
any object with the methods of :class:`ManagerTarget`; kvspec drives it only through
them, so a user's manager, kvspec's ``impl.KVCacheManager`` (through
:mod:`kvspec.conformance.manager.targets`) and any other are judged the same way.

Who owns what
    The target owns the requests' token lists, their block hashes, the block tables, the
    pool and the statistics. kvspec plays the *scheduler*: it decides what runs, tells the
    target how many tokens of a request have been computed (``set_num_computed_tokens``)
    and which tokens were sampled (``append_output_tokens``), exactly as a scheduler
    updates ``request.num_computed_tokens`` and appends outputs. Requests are named by
    string ids, blocks by integer ids ``0 .. num_blocks - 1``, block 0 being the null
    block. Hashes are ``bytes``.

Refusals
    A target refuses an operation by raising any exception; a refused operation must
    leave every observation below unchanged (kvspec checks this). ``allocate_slots``
    has a second, non-error failure: it returns ``None`` ("cannot schedule now"), and
    that too must change nothing. Every operation that names a request id never passed
    to ``add_request`` is refused.

Semantics of each method (``current`` profile unless noted; SEMANTICS.md section 5):

``add_request(request_id, prompt_token_ids, *, lora_name=None, cache_salt=None)``
    A new waiting request: no blocks, 0 computed tokens, 0 preemptions. Its block hashes
    are computed now for every *full* block of the prompt (see ``request_block_hashes``).
    ``lora_name`` identifies a LoRA adapter (its hash key is ``("lora", name, "")`` in
    ``current``, the bare name in ``classic``); ``cache_salt`` isolates a tenant (only
    the first block's key carries it, and only when non-empty). Refused for an id already
    added.
``append_output_tokens(request_id, token_ids)``
    The scheduler appends sampled tokens; the block hashes grow by every block they
    complete, chained from the last one. A trailing partial block is never hashed.
``set_num_computed_tokens(request_id, num_computed_tokens)``
    The scheduler's count of tokens whose K/V is in the request's blocks, set after each
    successful ``allocate_slots`` (as upstream's scheduler advances it when it schedules
    the step). Refused outside ``0 .. num_tokens``.
``get_computed_blocks(request_id) -> (block_ids, num_computed_tokens)``
    The longest cached prefix of the request: scan its block hashes from block 0, stop at
    the first miss, look at no more than ``(num_tokens - 1) // block_size`` of them (the
    last token is always recomputed, to get logits). Returns the hit block ids and
    ``len(block_ids) * block_size``. With caching off: ``([], 0)``. **Pure**: no ref
    count, queue or statistics change. kvspec calls it only for requests without blocks
    (waiting or preempted), as a scheduler does.
``allocate_slots(request_id, num_new_tokens, num_new_computed_tokens=0,``
``new_computed_blocks=(), num_lookahead_tokens=0) -> list[int] | None``
    Slots for ``num_new_tokens`` more tokens (plus ``num_lookahead_tokens`` speculative
    slots), adopting ``new_computed_blocks`` (hits from ``get_computed_blocks``, worth
    ``num_new_computed_tokens`` tokens). Refused when: a count is negative;
    ``num_new_tokens == 0`` and there is nothing to adopt (``classic``: whenever
    ``num_new_tokens == 0``); ``num_new_computed_tokens != len(new_computed_blocks) *
    block_size``; hits are passed with caching off, or to a request that already holds
    blocks. Then, with ``slots = num_computed + num_new_computed + num_new +
    num_lookahead``, the capacity check, before any change: new blocks
    ``max(cdiv(slots, block_size) - len(table) - len(hits), 0)`` *plus every hit at ref
    count 0* (touching it takes it out of the free queue) must not exceed the free count,
    else return ``None``. On success: touch the hits and append them to the table
    *first*, then pop the new blocks from the free queue front, then cache the blocks
    that became full, ``[num_cached, min(num_computed + num_new_computed + num_new,
    num_tokens) // block_size)``, under the request's block hashes (lookahead slots and
    partial blocks never). ``num_cached`` is how many leading blocks of the table are
    already cached: the adopted hits, then every block an earlier allocation cached
    (0 again after ``free`` or ``preempt``). Returns only the newly popped block ids. A
    request's first successful allocation while it has no blocks and 0 computed tokens is
    its *admission*: statistics count it once (below).
``free(request_id)``
    The request finished or was aborted: release its table *reversed* (tail first, so its
    longest, least shared prefixes are evicted before the head every hit needs) and
    forget it as running. A request without blocks: no change.
``preempt(request_id)``
    What a scheduler does to make room: ``free`` the request, set its computed tokens to
    0 and count one preemption; its tokens, outputs included, stay, and it is admitted
    again later through ``get_computed_blocks`` and ``allocate_slots``.
``reset_prefix_cache() -> bool``
    Drop every cached hash when no block is referenced and return ``True``; otherwise
    change nothing and return ``False``.
``get_usage()``, ``get_num_free_blocks()``, ``ref_cnt(block_id)``,
``block_hash(block_id)``, ``free_block_ids()``
    The pool's observations, exactly as in :mod:`kvspec.conformance.pool.protocol`: usage excludes
    the null block, the free queue is listed next-evicted first, ``block_hash`` is
    ``None`` for an uncached block.
``get_block_ids(request_id) -> list[int]``
    The request's block table (``[]`` when it holds none).
``request_block_hashes(request_id) -> list[bytes]``
    The request's chained hashes, one per full block: block ``i`` is
    ``sha256(pickle((parent, tuple(tokens), extra_keys)))``, pickle protocol 5, where
    ``parent`` is block ``i - 1``'s hash or, for block 0, the root
    ``sha256(pickle(seed))`` with ``seed`` the value of ``PYTHONHASHSEED`` when it is set,
    else ``"vllm-none-hash"``. ``extra_keys`` is ``None`` for a block without keys, else
    the tuple of its keys in the order LoRA (every block), then cache salt (block 0 only):
    ``(("lora", name, ""), ("cache_salt", salt))`` in ``current``, ``(name, salt)`` in
    ``classic``. Pickle writes a repeated *object* as a back-reference but a repeated
    *equal* string in full, so pickle with every equal ``str`` shared as one object (a
    LoRA name equal to the salt then gives the same bytes whatever the objects'
    identity). kvspec compares these bytes with the spec's, since other processes (KV
    events, connectors, offline tools) read them, unless the factory says
    ``opaque_hashes = True`` (it hashes another way): then no hash bytes are compared,
    and the harness's record of what each block holds judges every hit.
``get_prefix_cache_stats() -> (requests, queries, hits, preempted_requests,``
``preempted_queries, preempted_hits) | None``
    Cumulative since construction. Each admission adds 1 request, the request's
    ``num_tokens`` queries and the hit tokens it adopted; admissions of a request
    preempted before go to the ``preempted_`` fields instead (upstream 0.33.0). Failed or
    repeated lookups count nothing, and with caching off nothing is counted (no lookup
    happens). ``None``: the target keeps no statistics, and they are
    not checked.

Trusted inputs
    kvspec passes ``allocate_slots`` only hits that the target's own
    ``get_computed_blocks`` returned for the request. The spec also refuses hits beyond
    the cap, out-of-range ids and stale hits (a block no longer holding the request's
    hash); the suite does not send those, so a target need not check them.

A target that trusts its scheduler with some of the mistakes above (upstream's manager
accepts negative counts, for one) lists the machine's bad-input kinds it does not refuse
in ``factory.unsupported_bad_input`` (names from
:data:`kvspec.conformance.manager.machine.BAD_INPUTS`); those are never sent, and ``kvspec check``
reports them as switched off.

A *factory* builds a fresh target: ``factory(num_blocks, block_size, *,
enable_caching=True, profile="current")``. ``kvspec check --level manager --target
module.path:factory`` loads one; a factory is recognised as a manager factory by its
``block_size`` parameter (or an attribute ``level = "manager"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

#: The six statistics counters, in the order ``get_prefix_cache_stats`` returns them.
STATS_FIELDS = (
    "requests",
    "queries",
    "hits",
    "preempted_requests",
    "preempted_queries",
    "preempted_hits",
)


@runtime_checkable
class ManagerTarget(Protocol):
    """A KV-cache manager that kvspec can drive. See the module docstring for semantics."""

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        *,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> None: ...
    def append_output_tokens(self, request_id: str, token_ids: Sequence[int]) -> None: ...
    def set_num_computed_tokens(self, request_id: str, num_computed_tokens: int) -> None: ...
    def get_computed_blocks(self, request_id: str) -> tuple[list[int], int]: ...
    def allocate_slots(
        self,
        request_id: str,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[int] = (),
        num_lookahead_tokens: int = 0,
    ) -> list[int] | None: ...
    def free(self, request_id: str) -> None: ...
    def preempt(self, request_id: str) -> None: ...
    def reset_prefix_cache(self) -> bool: ...
    def get_usage(self) -> float: ...
    def get_num_free_blocks(self) -> int: ...
    def ref_cnt(self, block_id: int) -> int: ...
    def block_hash(self, block_id: int) -> bytes | None: ...
    def free_block_ids(self) -> list[int]: ...
    def get_block_ids(self, request_id: str) -> list[int]: ...
    def request_block_hashes(self, request_id: str) -> list[bytes]: ...
    def get_prefix_cache_stats(self) -> Sequence[int] | None: ...


class ManagerFactory(Protocol):
    """Builds a fresh manager target."""

    def __call__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_caching: bool = True,
        profile: str = "current",
    ) -> ManagerTarget: ...


class UnknownRequestError(KeyError):
    """An operation named a request id that was never added."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown request"


class RequestRegistry:
    """The scheduler's bookkeeping an adapter needs: requests by id, refusing unknown and
    duplicate ids, and the two scheduler updates of a request. Upstream managers leave this
    to their scheduler; adapters inherit it. A request object needs
    ``append_output_token_ids``, ``num_tokens`` and ``num_computed_tokens`` (kvspec's and
    upstream's ``Request`` both have them)."""

    requests: dict[str, Any]

    def _request(self, request_id: str, op: str) -> Any:
        try:
            return self.requests[request_id]
        except KeyError:
            raise UnknownRequestError(
                f"{op}: request {request_id!r} was never added; expected one of "
                f"{sorted(self.requests)}"
            ) from None

    def _require_new(self, request_id: str) -> None:
        if request_id in self.requests:
            raise ValueError(f"add_request: request {request_id!r} already exists")

    def append_output_tokens(self, request_id: str, token_ids: Sequence[int]) -> None:
        self._request(request_id, "append_output_tokens").append_output_token_ids(
            list(token_ids)
        )

    def set_num_computed_tokens(self, request_id: str, num_computed_tokens: int) -> None:
        request = self._request(request_id, "set_num_computed_tokens")
        if not 0 <= num_computed_tokens <= request.num_tokens:
            raise ValueError(
                f"set_num_computed_tokens({request_id!r}): {num_computed_tokens}; expected "
                f"0..{request.num_tokens}"
            )
        request.num_computed_tokens = num_computed_tokens
