"""Upstream vLLM 0.33.0's ``KVCacheManager`` as a kvspec manager target.

``kvspec check --level manager --target conformance.upstream.vllm_manager:vllm_manager_factory``
drives this adapter. Like the pool adapter
(:mod:`kvspec.conformance.upstream.vllm_pool`) it is thin on purpose: the point is to see what
upstream's
manager does, so it adds no check that upstream lacks. What it does add is what upstream's
*scheduler* would do around the manager, because the manager protocol makes kvspec the
scheduler and upstream's manager leans on the scheduler for it:

* it keeps the ``vllm.v1.request.Request`` of every request id, and refuses ids it never
  saw, duplicates, and a computed count outside ``0 .. num_tokens``;
* it sets ``request.num_computed_tokens`` when told, and on ``preempt`` frees the request,
  zeroes the count, counts a preemption and marks it ``PREEMPTED``, as
  ``Scheduler._preempt_request`` does;
* it records prefix-cache statistics at admission (``record_prefix_cache_stats`` with the
  hit tokens adopted), which upstream's scheduler does after a successful
  ``allocate_slots`` for a request taken from the waiting queue, so that lookups that were
  never scheduled are not counted. ``KVCacheManager.get_computed_blocks`` itself counts
  nothing in 0.33.0.

The manager under test
    One KV-cache group of full attention (``FullAttentionSpec``) whose block size is the
    protocol's ``block_size``; the scheduler's block size and the hash block size are the
    same, so hashes are per block with no coarse view. ``max_model_len`` is far beyond any
    sequence the suite builds, since upstream caps slots at it and the spec has no such
    cap. Everything else is ``KVCacheManager``'s defaults (no EAGLE, no watermark, no KV
    events, no connector), with ``log_stats=True``.

Hashing
    Requests are built with upstream's own block hasher,
    ``get_request_block_hasher(block_size, sha256)``, so the hash bytes kvspec compares
    are upstream's. The root every chain starts from is ``NONE_HASH``, a module global of
    ``vllm.v1.core.kv_cache_utils`` that the engine sets once at start-up with
    ``init_none_hash``; the adapter calls it with sha256 whenever it builds a target. For a
    cryptographic hash it is deterministic: the hash of ``PYTHONHASHSEED`` when that is set,
    else of ``"vllm-none-hash"`` (only non-cryptographic hashes get random bytes), which is
    the spec's rule too.

Identity
    ``lora_name`` becomes a ``LoRARequest`` named so, with ``lora_int_id`` numbered from 1
    in order of first use per target (upstream requires ``>= 1`` and keys the cache by name
    and path only) and ``lora_path = ""``, so that upstream's hash key for it is the
    protocol's ``("lora", name, "")``. ``LoRARequest``'s constructor asserts a non-empty
    path (a check of adapter loading, not of the KV cache), so the adapter builds it
    with a placeholder path and then sets the path to ``""``; the block hasher only reads
    the attribute. ``cache_salt`` is passed to ``Request`` as is (upstream, like the spec,
    keys only the first block by it, and only when it is non-empty).

What upstream does not check
    Upstream's manager checks one bad ``allocate_slots`` call: ``num_new_tokens == 0``
    with nothing to adopt raises ``ValueError``. It accepts negative counts and a hit
    length that does not match the hit blocks. Hits passed to a request that already holds
    blocks fail an ``assert`` before anything changes, but only when the capacity check
    passes first (with caching off and a full pool the call returns ``None``) and only
    without ``python -O``. The factory names those bad-input families
    (:data:`UNCHECKED_BAD_INPUT`), so the suite can switch them off and say so. Every
    operation of the protocol is supported.

vLLM is imported inside the factory, so this module imports without it; installing it is
``scripts/install-vllm-target.sh``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvspec.conformance.manager.protocol import STATS_FIELDS, RequestRegistry
from kvspec.conformance.upstream.vllm_pool import (
    INSTALL_HINT,
    VLLM_VERSION,
    BlockIdError,
    VllmNotInstalledError,
    _import_vllm,
)

#: Far beyond any sequence the suite builds: upstream caps slots at ``max_model_len``.
MAX_MODEL_LEN = 1 << 20
#: Passes ``LoRARequest``'s non-empty-path assertion; replaced by ``""`` right after.
LORA_PLACEHOLDER_PATH = "unused"
#: The one KV-cache group of the manager under test.
GROUP_ID = 0

#: Bad-input families of the manager machine that upstream does not refuse, or refuses
#: only by an ``assert`` in some states (see the module docstring). ``zero_new_tokens`` is
#: not here: upstream raises ``ValueError``.
UNCHECKED_BAD_INPUT = frozenset({
    "negative_new_tokens",
    "negative_lookahead",
    "hit_length_mismatch",
    "hits_into_running_request",
})


class _Upstream:
    """The vLLM names the adapter uses, imported once per target (and checked for version)."""

    def __init__(self) -> None:
        _, kv_cache_utils = _import_vllm()
        try:
            import torch
            from vllm.lora.request import LoRARequest
            from vllm.sampling_params import SamplingParams
            from vllm.utils.hashing import sha256
            from vllm.v1.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
            from vllm.v1.kv_cache_interface import (
                FullAttentionSpec,
                KVCacheConfig,
                KVCacheGroupSpec,
            )
            from vllm.v1.request import Request, RequestStatus
        except ImportError as exc:
            raise VllmNotInstalledError(f"{INSTALL_HINT} (import failed: {exc})") from exc
        self.torch = torch
        self.kv_cache_utils = kv_cache_utils
        self.LoRARequest = LoRARequest
        self.SamplingParams = SamplingParams
        self.sha256 = sha256
        self.KVCacheBlocks = KVCacheBlocks
        self.KVCacheManager = KVCacheManager
        self.FullAttentionSpec = FullAttentionSpec
        self.KVCacheConfig = KVCacheConfig
        self.KVCacheGroupSpec = KVCacheGroupSpec
        self.Request = Request
        self.RequestStatus = RequestStatus

    def init_none_hash(self) -> None:
        """Set ``NONE_HASH`` as the engine does at start-up, for sha256 (see the module
        docstring): from ``PYTHONHASHSEED`` when set, else from ``"vllm-none-hash"``."""
        self.kv_cache_utils.init_none_hash(self.sha256)


class VllmManager(RequestRegistry):
    """:class:`~kvspec.conformance.manager.protocol.ManagerTarget` over upstream's
    ``KVCacheManager``."""

    def __init__(self, num_blocks: int, block_size: int, *, enable_caching: bool = True) -> None:
        up = _Upstream()
        up.init_none_hash()
        self._up = up
        config = up.KVCacheConfig(
            num_blocks=num_blocks,
            kv_cache_tensors=[],
            kv_cache_groups=[
                up.KVCacheGroupSpec(
                    ["layer.0"],
                    up.FullAttentionSpec(
                        block_size=block_size, num_kv_heads=1, head_size=1,
                        dtype=up.torch.float16,
                    ),
                )
            ],
        )
        self.manager = up.KVCacheManager(
            config,
            max_model_len=MAX_MODEL_LEN,
            scheduler_block_size=block_size,
            hash_block_size=block_size,
            enable_caching=enable_caching,
            log_stats=True,
        )
        self.block_size = block_size
        self.block_hasher = up.kv_cache_utils.get_request_block_hasher(block_size, up.sha256)
        self._blocks = self.manager.block_pool.blocks
        self.requests: dict[str, Any] = {}
        self.running: set[str] = set()
        self.lora_ids: dict[str, int] = {}

    # -- requests (the scheduler's side) ---------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        *,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> None:
        self._require_new(request_id)
        up = self._up
        lora = None
        if lora_name is not None:
            lora_id = self.lora_ids.setdefault(lora_name, len(self.lora_ids) + 1)
            # The constructor asserts a non-empty path; the protocol's key has path "".
            lora = up.LoRARequest(lora_name, lora_id, LORA_PLACEHOLDER_PATH)
            lora.lora_path = ""
        self.requests[request_id] = up.Request(
            request_id,
            list(prompt_token_ids),
            up.SamplingParams(max_tokens=MAX_MODEL_LEN),
            None,
            lora_request=lora,
            cache_salt=cache_salt,
            block_hasher=self.block_hasher,
        )

    # -- the manager -----------------------------------------------------------------------

    def get_computed_blocks(self, request_id: str) -> tuple[list[int], int]:
        request = self._request(request_id, "get_computed_blocks")
        blocks, num_tokens, _ = self.manager.get_computed_blocks(request)
        return [b.block_id for b in blocks.blocks[GROUP_ID]], num_tokens

    def _hit_blocks(self, block_ids: Sequence[int]) -> Any:
        """Hit ids as upstream's ``KVCacheBlocks``; ``None`` for none, as the scheduler
        passes ``get_computed_blocks``' empty result (upstream tells "no hits" by identity)."""
        if not block_ids:
            return None
        blocks = []
        for b in block_ids:
            if not 0 <= b < len(self._blocks):
                raise BlockIdError(
                    f"allocate_slots: hit block {b} is not in 0..{len(self._blocks) - 1}; "
                    "upstream takes block objects, so an id outside the pool has none"
                )
            blocks.append(self._blocks[b])
        return self._up.KVCacheBlocks((blocks,))

    def allocate_slots(
        self,
        request_id: str,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[int] = (),
        num_lookahead_tokens: int = 0,
    ) -> list[int] | None:
        request = self._request(request_id, "allocate_slots")
        hits = self._hit_blocks(new_computed_blocks)
        admission = request_id not in self.running and request.num_computed_tokens == 0
        new = self.manager.allocate_slots(
            request, num_new_tokens, num_new_computed_tokens, hits, num_lookahead_tokens,
        )
        if new is None:
            return None
        if admission:
            # The scheduler's bookkeeping after a successful admission.
            self.manager.record_prefix_cache_stats(request, num_new_computed_tokens)
            request.status = self._up.RequestStatus.RUNNING
        self.running.add(request_id)
        return [b.block_id for b in new.blocks[GROUP_ID]]

    def free(self, request_id: str) -> None:
        self.manager.free(self._request(request_id, "free"))
        self.running.discard(request_id)

    def preempt(self, request_id: str) -> None:
        request = self._request(request_id, "preempt")
        self.manager.free(request)
        self.running.discard(request_id)
        request.status = self._up.RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1

    def reset_prefix_cache(self) -> bool:
        return self.manager.reset_prefix_cache()

    # -- observations ----------------------------------------------------------------------

    def _block(self, block_id: int, op: str) -> Any:
        if not 0 <= block_id < len(self._blocks):
            raise BlockIdError(f"{op}: block {block_id} is not in 0..{len(self._blocks) - 1}")
        return self._blocks[block_id]

    def get_usage(self) -> float:
        return float(self.manager.usage)

    def get_num_free_blocks(self) -> int:
        return self.manager.block_pool.get_num_free_blocks()

    def ref_cnt(self, block_id: int) -> int:
        return self._block(block_id, "ref_cnt").ref_cnt

    def block_hash(self, block_id: int) -> bytes | None:
        key = self._block(block_id, "block_hash").block_hash
        return None if key is None else bytes(self._up.kv_cache_utils.get_block_hash(key))

    def free_block_ids(self) -> list[int]:
        queue = self.manager.block_pool.free_block_queue
        return [b.block_id for b in queue.get_all_free_blocks()]

    def get_block_ids(self, request_id: str) -> list[int]:
        self._request(request_id, "get_block_ids")
        return list(self.manager.get_block_ids(request_id)[GROUP_ID])

    def request_block_hashes(self, request_id: str) -> list[bytes]:
        return [bytes(h) for h in self._request(request_id, "request_block_hashes").block_hashes]

    def get_prefix_cache_stats(self) -> tuple[int, ...] | None:
        # Read in place: ``make_prefix_cache_stats`` would hand over and restart the counts,
        # and the protocol's are cumulative since construction.
        stats = self.manager.prefix_cache_stats
        if stats is None:
            return None
        return tuple(int(getattr(stats, name)) for name in STATS_FIELDS)

    def __repr__(self) -> str:
        m = self.manager
        return (
            f"VllmManager(vllm {VLLM_VERSION} KVCacheManager, "
            f"num_blocks={m.block_pool.num_gpu_blocks}, block_size={self.block_size}, "
            f"enable_caching={m.enable_caching})"
        )


def vllm_manager_factory(
    num_blocks: int, block_size: int, *, enable_caching: bool = True, profile: str = "current"
) -> VllmManager:
    """Factory for upstream vLLM 0.33.0's ``KVCacheManager`` (``--target vllm --level manager``).

    Only ``profile="current"`` is accepted: 0.33.0 is the reference of that profile and has
    no switch to behave as ``classic`` (0.22.x).
    """
    if profile != "current":
        raise ValueError(
            f"vllm_manager_factory: profile {profile!r} is not available; vLLM "
            f"{VLLM_VERSION} implements only the 'current' profile ('classic' is vLLM 0.22.x "
            "behaviour)"
        )
    return VllmManager(num_blocks, block_size, enable_caching=enable_caching)


vllm_manager_factory.level = "manager"  # type: ignore[attr-defined]
# Every protocol operation exists upstream; what it lacks is checks on some bad input.
vllm_manager_factory.unsupported = frozenset()  # type: ignore[attr-defined]
vllm_manager_factory.unsupported_bad_input = UNCHECKED_BAD_INPUT  # type: ignore[attr-defined]
