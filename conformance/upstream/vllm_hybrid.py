"""Upstream vLLM's ``KVCacheManager`` with several KV-cache groups, as a hybrid target.

``kvspec check --level hybrid --target vllm`` drives this adapter. It builds a
``KVCacheConfig`` on CPU with one ``KVCacheGroupSpec`` per protocol group (a
``FullAttentionSpec`` or a ``SlidingWindowSpec`` of the group's block size and window, one
KV head of size 1, float16: the manager never touches tensors, so no model and no weights
are needed), and ``KVCacheManager`` picks upstream's ``HybridKVCacheCoordinator`` for it.
Hashes are taken at the gcd of the block sizes (the lcm without prefix caching) and the
scheduler aligns to the lcm, as ``resolve_kv_cache_block_sizes`` decides for such groups.

Versions
    Written against 0.33.0 (the ``current`` profile) and 0.22.1 (``classic``), installed by
    ``scripts/install-vllm-target.sh [VERSION]``; the installed version decides which
    profile the factory accepts. The two differ here only in the constructor
    (0.33.0 adds ``scheduler_block_size``) and in ``get_computed_blocks``' result (0.33.0
    adds a third value).

The scheduler's side
    As at the manager level (:mod:`kvspec.conformance.upstream.vllm_manager`), the adapter
    keeps the ``Request`` objects, sets ``num_computed_tokens`` when told, and on
    ``preempt`` frees the request, zeroes the count and marks it ``PREEMPTED``. Hits are
    passed as upstream's ``KVCacheBlocks`` (``None`` when there are none, since upstream
    tells "no hits" by identity), and external computed tokens as
    ``num_external_computed_tokens``, as a scheduler with a KV connector does after the
    connector's ``get_num_new_matched_tokens`` (the load is synchronous: the blocks are
    cached in the same call). Statistics are not part of the hybrid protocol.

vLLM is imported inside the factory, so this module imports without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from kvspec.conformance.hybrid.protocol import GroupTuple
from kvspec.conformance.manager.protocol import RequestRegistry
from kvspec.conformance.upstream.vllm_pool import BlockIdError, VllmNotInstalledError

#: Versions this adapter is written against, and the profile each implements.
PROFILE_OF_VERSION = {"0.33.0": "current", "0.22.1": "classic"}
INSTALL_HINT = ("install it with scripts/install-vllm-target.sh 0.33.0 (or 0.22.1) in the "
                "active virtual environment")
#: Far beyond any sequence the suite builds: upstream caps slots at ``max_model_len``.
MAX_MODEL_LEN = 1 << 20


def installed_version() -> str:
    """The installed vLLM's version, refused unless this adapter is written against it."""
    try:
        import vllm
    except ImportError as exc:
        raise VllmNotInstalledError(f"the 'vllm' target needs vLLM; {INSTALL_HINT} ({exc})"
                                    ) from exc
    if vllm.__version__ not in PROFILE_OF_VERSION:
        raise VllmNotInstalledError(
            f"the hybrid 'vllm' target is written against vLLM "
            f"{' or '.join(PROFILE_OF_VERSION)}, found {vllm.__version__}; {INSTALL_HINT}")
    return str(vllm.__version__)


class VllmHybrid(RequestRegistry):
    """:class:`~kvspec.conformance.hybrid.protocol.HybridTarget` over upstream's
    ``KVCacheManager`` with one KV-cache group per protocol group."""

    def __init__(self, num_blocks: int, groups: Sequence[GroupTuple], *,
                 enable_caching: bool = True) -> None:
        self.version = installed_version()
        import torch
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import sha256
        from vllm.v1.core import kv_cache_utils
        from vllm.v1.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
        from vllm.v1.kv_cache_interface import (
            FullAttentionSpec,
            KVCacheConfig,
            KVCacheGroupSpec,
            SlidingWindowSpec,
        )
        from vllm.v1.request import Request, RequestStatus

        kv_cache_utils.init_none_hash(sha256)
        # A refused reset is logged as a warning; its verdict reaches kvspec as the result.
        for name in ("vllm.v1.core.block_pool", "vllm.v1.core.kv_cache_manager"):
            logging.getLogger(name).setLevel(logging.ERROR)
        specs = []
        for i, (kind, block_size, window) in enumerate(groups):
            common = {"block_size": block_size, "num_kv_heads": 1, "head_size": 1,
                      "dtype": torch.float16}
            spec = (FullAttentionSpec(**common) if kind == "full"
                    else SlidingWindowSpec(**common, sliding_window=window))
            specs.append(KVCacheGroupSpec([f"layer.{i}"], spec))
        config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                               kv_cache_groups=specs)
        sizes = [bs for _k, bs, _w in groups]
        scheduler_block_size = math.lcm(*sizes)
        hash_block_size = math.gcd(*sizes) if enable_caching else scheduler_block_size
        extra = ({"scheduler_block_size": scheduler_block_size}
                 if self.version == "0.33.0" else {})
        self.manager = KVCacheManager(config, max_model_len=MAX_MODEL_LEN,
                                      hash_block_size=hash_block_size,
                                      enable_caching=enable_caching, **extra)
        self.block_hasher = kv_cache_utils.get_request_block_hasher(hash_block_size, sha256)
        self._Request, self._SamplingParams = Request, SamplingParams
        self._KVCacheBlocks, self._RequestStatus = KVCacheBlocks, RequestStatus
        self._blocks = self.manager.block_pool.blocks
        self.requests: dict[str, Any] = {}

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int]) -> None:
        self._require_new(request_id)
        self.requests[request_id] = self._Request(
            request_id, list(prompt_token_ids), self._SamplingParams(max_tokens=MAX_MODEL_LEN),
            None, block_hasher=self.block_hasher)

    def get_computed_blocks(self, request_id: str) -> tuple[list[list[int]], int]:
        result = self.manager.get_computed_blocks(
            self._request(request_id, "get_computed_blocks"))
        blocks, num_tokens = result[0], result[1]
        return [[b.block_id for b in g] for g in blocks.blocks], int(num_tokens)

    def _hits(self, new_computed_blocks: Sequence[Sequence[int]]) -> Any:
        if not any(new_computed_blocks):
            return None
        groups = []
        for ids in new_computed_blocks:
            for b in ids:
                if not 0 <= b < len(self._blocks):
                    raise BlockIdError(f"allocate_slots: hit block {b} is not in "
                                       f"0..{len(self._blocks) - 1}")
            groups.append([self._blocks[b] for b in ids])
        return self._KVCacheBlocks(tuple(groups))

    def allocate_slots(
        self, request_id: str, num_new_tokens: int, num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[Sequence[int]] = (), num_lookahead_tokens: int = 0,
        num_external_computed_tokens: int = 0,
    ) -> list[list[int]] | None:
        request = self._request(request_id, "allocate_slots")
        new = self.manager.allocate_slots(
            request, num_new_tokens, num_new_computed_tokens, self._hits(new_computed_blocks),
            num_lookahead_tokens, num_external_computed_tokens)
        if new is None:
            return None
        request.status = self._RequestStatus.RUNNING
        return [[b.block_id for b in g] for g in new.blocks]

    def free(self, request_id: str) -> None:
        self.manager.free(self._request(request_id, "free"))

    def preempt(self, request_id: str) -> None:
        request = self._request(request_id, "preempt")
        self.manager.free(request)
        request.status = self._RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1

    def reset_prefix_cache(self) -> bool:
        return bool(self.manager.reset_prefix_cache())

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
        return None if key is None else bytes(key)

    def free_block_ids(self) -> list[int]:
        return [b.block_id for b in
                self.manager.block_pool.free_block_queue.get_all_free_blocks()]

    def get_block_ids(self, request_id: str) -> list[list[int]]:
        self._request(request_id, "get_block_ids")
        return [list(g) for g in self.manager.get_block_ids(request_id)]

    def request_block_hashes(self, request_id: str) -> list[bytes]:
        return [bytes(h) for h in
                self._request(request_id, "request_block_hashes").block_hashes]

    def __repr__(self) -> str:
        return (f"VllmHybrid(vllm {self.version} KVCacheManager, "
                f"{len(self.manager.kv_cache_config.kv_cache_groups)} groups)")


class _VllmHybridFactory:
    """Factory for upstream's hybrid ``KVCacheManager`` (``--level hybrid --target vllm``).

    The installed version decides the profile: 0.33.0 is ``current``, 0.22.1 ``classic``
    (run it with ``--profile classic``). 0.22.1's block hashes are other bytes than the
    spec's (its request hasher serializes differently), so for it no hash bytes are
    compared (``opaque_hashes``) and the content record alone judges every hit."""

    level = "hybrid"
    __name__ = "vllm_hybrid_factory"

    @property
    def opaque_hashes(self) -> bool:
        return installed_version() != "0.33.0"

    def __call__(self, num_blocks: int, groups: Sequence[GroupTuple], *,
                 enable_caching: bool = True, profile: str = "current") -> VllmHybrid:
        version = installed_version()
        if PROFILE_OF_VERSION[version] != profile:
            raise ValueError(
                f"vllm_hybrid_factory: vLLM {version} implements the "
                f"{PROFILE_OF_VERSION[version]!r} profile, not {profile!r}; run with "
                f"--profile {PROFILE_OF_VERSION[version]}")
        return VllmHybrid(num_blocks, groups, enable_caching=enable_caching)

    def __repr__(self) -> str:
        return "vllm_hybrid_factory"


vllm_hybrid_factory = _VllmHybridFactory()
