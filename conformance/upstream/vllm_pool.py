"""Upstream vLLM 0.33.0's ``BlockPool`` as a kvspec pool target (``--target vllm``).

The adapter is deliberately thin. The point of driving upstream is to see what *it* does,
including with bad input, so the adapter adds no checks of its own: it only translates
between the protocol's integer ids and bytes hashes and upstream's ``KVCacheBlock`` objects
and group-tagged keys. The one check it cannot avoid is on ids: upstream takes block
objects, not ids, so an id outside ``0 .. num_blocks - 1`` has no block to hand over (and a
negative one would silently index from the end of ``BlockPool.blocks``). Such an id is
refused with :class:`BlockIdError` before upstream is called.

What maps to what
    * ``get_new_blocks``, ``touch``, ``free_blocks``, ``reset_prefix_cache``,
      ``get_num_free_blocks``, ``get_usage``: the ``BlockPool`` methods of the same names,
      with ids translated to ``BlockPool.blocks[i]`` and back.
    * ``cache_block(b, h)``: ``cache_full_blocks`` with a one-block request-like object whose
      ``block_hashes`` is ``[h]``, ``num_cached_blocks=0``, ``num_full_blocks=1``, group 0 and
      ``block_size == hash_block_size`` (so upstream uses ``h`` as is, with no coarse view).
      Upstream builds the key ``h + group id (4 bytes)``; with KV events off (as here) it reads
      nothing else from the request.
    * ``get_cached_block(h)``: ``get_cached_block(h, [0])``, first block's id.
    * ``block_hash(b)``: the block's key with the 4-byte group id stripped.
    * ``free_block_ids()``: ``free_block_queue.get_all_free_blocks()``, as ids.
    * ``fork_block``: upstream has no pool-level copy-on-write; the factory declares it
      unsupported and the adapter raises :class:`NotImplementedError`.

Profiles
    vLLM 0.33.0 *is* the ``current`` profile; it cannot behave as ``classic`` (0.22.x), so
    asking for that is an error rather than a silent mismatch.

vLLM is imported inside the factory, so this module imports without it; installing it is
``scripts/install-vllm-target.sh``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

#: Tokens per block. Any positive value works: the adapter hands upstream ready-made hashes.
HASH_BLOCK_SIZE = 16
#: The only upstream version the adapter is written against.
VLLM_VERSION = "0.33.0"
#: The adapter uses a single KV-cache group, as a one-group full-attention model does.
GROUP_ID = 0

INSTALL_HINT = (
    "the 'vllm' target needs upstream vLLM 0.33.0 in this environment: run "
    "scripts/install-vllm-target.sh inside the active virtual environment"
)


class VllmNotInstalledError(ImportError):
    """vLLM (or one of the modules its ``v1.core`` imports) is missing."""


class BlockIdError(IndexError):
    """An id that names no block of the pool: upstream has no block object to pass."""


class _OneBlockRequest:
    """The part of ``vllm.v1.request.Request`` that ``cache_full_blocks`` reads with events off.

    A real ``Request`` needs token ids, sampling parameters and a block hasher; the pool only
    reads ``block_hashes``. A minimal stand-in keeps the adapter about the pool alone.
    """

    __slots__ = ("block_hashes",)

    def __init__(self, block_hash: bytes) -> None:
        self.block_hashes = [block_hash]


def _import_vllm() -> tuple[Any, Any]:
    """``(vllm.v1.core.block_pool, vllm.v1.core.kv_cache_utils)``, or a clear error."""
    try:
        import vllm
        from vllm.v1.core import block_pool, kv_cache_utils
    except ImportError as exc:
        raise VllmNotInstalledError(f"{INSTALL_HINT} (import failed: {exc})") from exc
    if vllm.__version__ != VLLM_VERSION:
        raise VllmNotInstalledError(
            f"the 'vllm' target is written against vLLM {VLLM_VERSION}, found "
            f"{vllm.__version__}; {INSTALL_HINT}"
        )
    # Upstream logs a warning on every refused reset; the verdict reaches kvspec through the
    # return value, so the log lines would only interleave with kvspec's report.
    logging.getLogger(block_pool.__name__).setLevel(logging.ERROR)
    return block_pool, kv_cache_utils


class VllmPool:
    """:class:`~kvspec.conformance.pool.protocol.PoolTarget` over upstream's ``BlockPool``, by
    integer id."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        block_pool, kv_cache_utils = _import_vllm()
        self._get_block_hash = kv_cache_utils.get_block_hash
        self.pool = block_pool.BlockPool(
            num_blocks, enable_caching, hash_block_size=HASH_BLOCK_SIZE
        )
        self._blocks = self.pool.blocks

    # ------------------------------------------------------------------ id translation

    def _block(self, block_id: int, op: str):
        if not 0 <= block_id < len(self._blocks):
            raise BlockIdError(
                f"{op}: block {block_id} is not in 0..{len(self._blocks) - 1}; "
                "upstream takes block objects, so an id outside the pool has none"
            )
        return self._blocks[block_id]

    def _block_list(self, block_ids: Sequence[int], op: str) -> list:
        # All ids are translated before upstream sees any, so a bad id changes nothing.
        return [self._block(b, op) for b in block_ids]

    # ------------------------------------------------------------------ actions

    def get_new_blocks(self, num_blocks: int) -> list[int]:
        return [block.block_id for block in self.pool.get_new_blocks(num_blocks)]

    def touch(self, block_ids: Sequence[int]) -> None:
        self.pool.touch(self._block_list(block_ids, "touch"))

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        self.pool.free_blocks(self._block_list(block_ids, "free_blocks"))

    def cache_block(self, block_id: int, block_hash: bytes) -> None:
        block = self._block(block_id, "cache_block")
        self.pool.cache_full_blocks(
            request=_OneBlockRequest(block_hash),
            blocks=[block],
            num_cached_blocks=0,
            num_full_blocks=1,
            block_size=HASH_BLOCK_SIZE,
            kv_cache_group_id=GROUP_ID,
        )

    def get_cached_block(self, block_hash: bytes) -> int | None:
        hit = self.pool.get_cached_block(block_hash, [GROUP_ID])
        return None if hit is None else hit[0].block_id

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()

    def fork_block(self, block_id: int) -> int:
        raise NotImplementedError(
            f"fork_block: block {block_id}: vLLM {VLLM_VERSION}'s BlockPool has no pool-level "
            "copy-on-write (vllm_pool_factory.unsupported names it)"
        )

    # ------------------------------------------------------------------ observations

    def get_num_free_blocks(self) -> int:
        return self.pool.get_num_free_blocks()

    def get_usage(self) -> float:
        # Upstream returns the int 0 for a one-block pool; the value is what is compared.
        return float(self.pool.get_usage())

    def ref_cnt(self, block_id: int) -> int:
        return self._block(block_id, "ref_cnt").ref_cnt

    def block_hash(self, block_id: int) -> bytes | None:
        key = self._block(block_id, "block_hash").block_hash
        return None if key is None else bytes(self._get_block_hash(key))

    def free_block_ids(self) -> list[int]:
        return [block.block_id for block in self.pool.free_block_queue.get_all_free_blocks()]

    def __repr__(self) -> str:
        return (
            f"VllmPool(vllm {VLLM_VERSION} BlockPool, num_blocks={self.pool.num_gpu_blocks}, "
            f"enable_caching={self.pool.enable_caching})"
        )


def vllm_pool_factory(
    num_blocks: int, *, enable_caching: bool = True, profile: str = "current"
) -> VllmPool:
    """Factory for upstream vLLM 0.33.0's ``BlockPool`` (``--target vllm``).

    Only ``profile="current"`` is accepted: 0.33.0 is the reference of that profile and has
    no switch to behave as ``classic`` (0.22.x).
    """
    if profile != "current":
        raise ValueError(
            f"vllm_pool_factory: profile {profile!r} is not available; vLLM {VLLM_VERSION} "
            "implements only the 'current' profile ('classic' is vLLM 0.22.x behaviour)"
        )
    return VllmPool(num_blocks, enable_caching=enable_caching)


# Upstream has no pool-level fork; the suite switches those rules off and says so.
vllm_pool_factory.unsupported = frozenset({"fork_block"})  # type: ignore[attr-defined]
