"""Store-level mutants: each a ``BlockStore`` subclass with one realistic bug in the bytes.

The pool beside them is kvspec's correct allocator, so every id, reference count, hash and
queue position agrees with the spec: the pool-level machine cannot see these bugs. Only the
content machine, which reads the K/V back, can. Each class docstring's first line is the
mutant's summary in the zoo (``kvspec.conformance.mutants``), and says what real mistake it models.

The copy mutants override ``BlockStore._copy_blocks``, the step after the arguments and the
write guard are checked, so each refuses exactly what the real store refuses and differs only
in the bytes it moves.

This module imports torch (through the store); the zoo names these classes by import path
so that listing mutants does not.
"""

from __future__ import annotations

import torch
from kvspec.impl.block_store import BlockStore, IdsLike

PAD_SLOT_ID = -1
"""The slot id vLLM gives the padding tokens of a batch; cache writes must skip it."""


class ForkSharesInsteadOfCopying(BlockStore):
    """Fork hands out a new block but the copy is never issued: the child reads stale K/V.

    Models a scheduler step that builds its copy-on-write list (``fork_block`` returned a
    fresh id, the table was updated) but never hands that list to the cache engine, so the
    copy is skipped. Ids are all correct and the call is validated as usual; the new block
    simply holds whatever its last owner left there, or zeros.
    """

    def _copy_blocks(self, src: list[int], dst: list[int]) -> None:
        return  # the validated pairs are dropped: nothing is copied


class CopyWrongDirection(BlockStore):
    """``copy_blocks`` copies destination onto source: the shared block gets the stale copy.

    Models swapped operands inside the copy kernel (the destinations' views passed as the
    sources), while the argument check still guards the right side. The fresh block keeps
    its old content and the block the parent (and the prefix cache) still reads is
    overwritten with it.
    """

    def _copy_blocks(self, src: list[int], dst: list[int]) -> None:
        super()._copy_blocks(dst, src)


class CopyOnlyKeys(BlockStore):
    """``copy_blocks`` copies the K cache and forgets the V cache.

    Models a copy written over per-layer ``key_caches`` and ``value_caches`` lists (vLLM's
    older cache-engine signature) where the loop over the value caches was dropped: here,
    the copy of each block takes its K half (every layer) and leaves the V half behind.
    Attention over the copy uses the right keys with the wrong values.
    """

    def _copy_blocks(self, src: list[int], dst: list[int]) -> None:
        blocks = self._blocks  # one view per block: [num_layers, 2, block_size, heads, size]
        torch._foreach_copy_([blocks[d][:, 0] for d in dst], [blocks[s][:, 0] for s in src])


class PaddedWriteWrapsPadSlot(BlockStore):
    """Padding slots (-1) wrap to the pool's last slot: a later hit reads overwritten K/V.

    Models a batched cache write that pads the batch to a captured size (a power of two,
    as CUDA graphs do) with slot ``PAD_SLOT_ID = -1`` and zero K/V, and a reshape-and-cache
    that indexes the way Python does instead of skipping negative slots. The write guard
    judges the real tokens only, so the padding lands unguarded in the last slot of the
    last block, which may be cached: the next prefix hit on that block serves zeros where
    another request's K/V should be.
    """

    def write(
        self,
        slot_mapping: IdsLike,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        layer: int | None = None,
    ) -> None:
        super().write(slot_mapping, key, value, layer=layer)
        count = len(slot_mapping)
        padded = 1 << max(0, count - 1).bit_length()
        if count == 0 or padded == count:
            return
        wrapped = PAD_SLOT_ID % self.num_slots
        block, offset = divmod(wrapped, self.block_size)
        planes = self.kv if layer is None else self.kv[layer : layer + 1]
        planes[:, :, block, offset] = 0
