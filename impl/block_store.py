"""The block store: the K/V tensors that a block pool's ids stand for.

A ``BlockPool`` hands out integer block ids and never sees data. Something must hold the
bytes those ids name, and an allocator can agree with its spec on every id yet serve the wrong
bytes: a cached block overwritten while shared, a fork that forgot to copy. ``BlockStore``
holds the real K/V tensors in torch (any float dtype, any device), with the four operations a
serving engine performs on them: write new tokens through a slot mapping, copy blocks (the
copy-on-write step), gather a request's K/V from its block table, and a reference paged
attention over that gather.

Layout decision: block-major storage, vLLM's shape
    ``kv`` has the logical shape ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
    head_size]`` (index 0 of the second axis is K, 1 is V), so ``kv[layer]`` has the shape
    of vLLM's per-layer cache. In memory, though, the block axis comes first: the storage is
    ``[num_blocks, num_layers, 2, block_size, num_kv_heads, head_size]`` and ``kv`` is a
    permuted view of it. One block, K and V of every layer, is then one contiguous span, so
    ``copy_blocks`` of ``n`` blocks is ``n`` memcpy-sized copies issued by one call, each
    reading and writing every byte once. The obvious alternative, an indexed gather and
    scatter (``index_select`` then ``index_copy_``) over a layer-major tensor, must
    materialise the sources and so moves every byte twice; the benchmark keeps it as a
    contender and it stays below half a plain copy's bandwidth. What the layout costs: a
    layer's K plane is no longer one contiguous tensor, which a reference store never needs
    (gather reads block-sized rows either way).

Copies move words, not numbers
    ``write`` and ``gather`` view the storage as the widest element type that divides a
    token's (or a block plane's) bytes, 16-byte ``complex128`` in practice, and index that.
    torch's CPU indexed kernels cost per element, not per byte, and a 16-byte word carries
    eight float16 values. The wide elements are only loaded and stored, never computed with,
    so every bit survives (NaN payloads, signed zeros, subnormals; the tests write random bit
    patterns). This is also why gathers are bit-identical across devices.

The write guard
    A write into a block that another request shares (``ref_cnt > 1``) or that the prefix
    cache indexes (hashed) would change what some other reader sees: copy-on-write must
    happen first. The store does not know any pool class; it takes a *guard*, any object with
    ``ref_cnt(block_id)`` and ``block_hash(block_id)`` (kvspec's pool target protocol), and
    refuses such writes with :class:`CopyOnWriteError`. With no guard, writes are unchecked.

Atomic by construction
    Every argument is checked (:mod:`kvspec.impl.block_store_checks`) and every index and
    source tensor is built before the first byte of the cache changes, so a call that raises
    leaves every layer's K and V exactly as they were.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from kvspec.impl.block_store_checks import (
    BlockStoreError,
    CopyOnWriteError,
    IdsLike,
    check_device,
    check_ids,
    check_int,
    check_kv_tensor,
    check_scale,
    first_repeat,
    is_int,
)

__all__ = [
    "NULL_BLOCK_ID",
    "BlockStateView",
    "BlockStore",
    "BlockStoreError",
    "CopyOnWriteError",
    "IdsLike",
]

NULL_BLOCK_ID = 0
"""Block 0 is the null block in kvspec's pool protocol: a placeholder that never holds data."""

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class BlockStateView(Protocol):
    """What the write guard needs from a pool: the two per-block observations of kvspec's
    pool target protocol (``kvspec.conformance.pool.protocol.PoolTarget`` satisfies it)."""

    def ref_cnt(self, block_id: int) -> int: ...
    def block_hash(self, block_id: int) -> bytes | None: ...


def _word_dtype(nbytes: int) -> torch.dtype:
    """The widest element type whose size divides ``nbytes``: the unit the store's indexed
    copies move (see "Copies move words" in the module docstring)."""
    for dtype in (torch.complex128, torch.float64, torch.int32, torch.int16):
        if nbytes % dtype.itemsize == 0:
            return dtype
    return torch.uint8


class BlockStore:
    """A paged KV cache: ``num_blocks`` blocks of ``block_size`` token slots, for every layer.

    Slot ``s`` is offset ``s % block_size`` of block ``s // block_size``, as in vLLM's slot
    mapping. See the module docstring for the layout, the write guard and atomicity. No
    internal locking: one caller at a time.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        num_layers: int,
        num_kv_heads: int,
        head_size: int,
        dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
        *,
        guard: BlockStateView | None = None,
    ) -> None:
        op = "BlockStore"
        for name, value in (
            ("num_blocks", num_blocks),
            ("block_size", block_size),
            ("num_layers", num_layers),
            ("num_kv_heads", num_kv_heads),
            ("head_size", head_size),
        ):
            check_int(op, name, value, 1)
        if dtype not in _SUPPORTED_DTYPES:
            raise BlockStoreError(f"{op}: dtype {dtype!r}; expected one of {_SUPPORTED_DTYPES}")
        try:
            where = torch.device(device)  # type: ignore[arg-type]
        except (TypeError, RuntimeError, ValueError):
            raise BlockStoreError(
                f"{op}: device {device!r}; expected a torch device such as 'cpu' or 'cuda:0'"
            ) from None
        if where.type == "meta":
            raise BlockStoreError(f"{op}: device {where}; expected a device that holds data")
        self.guard = guard
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.dtype = dtype
        planes = 2 * num_layers
        shape = (num_blocks, num_layers, 2, block_size, num_kv_heads, head_size)
        try:
            storage = torch.zeros(shape, dtype=dtype, device=where)
        except Exception as exc:  # noqa: BLE001 - any allocation failure is a bad size/device
            nbytes = math.prod(shape) * dtype.itemsize
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BlockStoreError(
                f"{op}: cannot allocate {nbytes} bytes on {where} ({reason}); expected sizes "
                "and a device that fit"
            ) from None
        self.device = storage.device  # with its index: "cuda" becomes "cuda:0"
        self.kv = storage.permute(1, 2, 0, 3, 4, 5)
        """The whole cache, ``[num_layers, 2, num_blocks, block_size, num_kv_heads,
        head_size]``: a view of block-major storage. Read it freely; mutate it only through
        the store's methods."""

        flat = storage.view(-1)
        token_bytes = num_kv_heads * head_size * dtype.itemsize
        self._token_word = _word_dtype(token_bytes)
        # One row per (block, layer, K/V, offset): slot s of layer l's K is row
        # (s // bs) * planes * bs + l * 2 * bs + s % bs; its V is bs rows further.
        self._token_rows = flat.view(self._token_word).view(num_blocks * planes * block_size, -1)
        self._layer_rows = torch.arange(num_layers, device=self.device) * (2 * block_size)
        # One row per (block, plane), a plane being one layer's K or V: row b * planes + p.
        self._plane_rows = (
            flat.view(_word_dtype(block_size * token_bytes)).view(num_blocks * planes, -1)
        )
        self._planes = torch.arange(planes, device=self.device)
        # One view per block, K and V of every layer, built once: copy_blocks only picks.
        self._blocks = storage.unbind(0)
        self._storage_ptr = storage.untyped_storage().data_ptr()

    # ----------------------------------------------------------------------------- sizes

    @property
    def num_slots(self) -> int:
        """Token slots in the whole pool: ``num_blocks * block_size``."""
        return self.num_blocks * self.block_size

    @property
    def block_nbytes(self) -> int:
        """Bytes one block occupies across every layer's K and V: what ``copy_blocks`` moves
        per block."""
        return self._blocks[0].numel() * self.dtype.itemsize

    @property
    def guard(self) -> BlockStateView | None:
        """None (writes unchecked), or the pool view that every write is checked against."""
        return self._guard

    @guard.setter
    def guard(self, guard: BlockStateView | None) -> None:
        if guard is not None and not (
            callable(getattr(guard, "ref_cnt", None))
            and callable(getattr(guard, "block_hash", None))
        ):
            raise BlockStoreError(
                f"BlockStore: guard has type {type(guard).__name__}; expected None or an object "
                "with ref_cnt(block_id) and block_hash(block_id)"
            )
        self._guard = guard

    # ------------------------------------------------------------------------ validation

    def _id_list(self, op: str, what: str, ids: IdsLike, limit: int) -> list[int]:
        """``ids`` as a list of ints in ``[0, limit)``, or a BlockStoreError naming ``op``."""
        values = check_ids(op, what, ids, limit, self.device)
        return values if type(values) is list else values.tolist()  # type: ignore[union-attr]

    def _id_tensor(self, op: str, what: str, ids: IdsLike, limit: int) -> torch.Tensor:
        """``ids`` as an int64 tensor on the store's device, each in ``[0, limit)``."""
        values = check_ids(op, what, ids, limit, self.device)
        if isinstance(values, torch.Tensor):
            return values.to(self.device, torch.int64)
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def _check_writable(self, op: str, block_ids: set[int] | list[int]) -> None:
        """Refuse, before anything changes, a write into a block the writer does not own alone.

        Exclusive and uncached means ``ref_cnt == 1`` and no hash; the null block is never
        data. Blocks are checked in id order so the error names the smallest offender.
        """
        guard = self._guard
        if guard is None:
            return
        for block_id in sorted(block_ids):
            if block_id == NULL_BLOCK_ID:
                raise CopyOnWriteError(
                    f"{op}: block {block_id} is the null block, a placeholder that never holds "
                    "K/V; expected a block allocated to the writer"
                )
            ref_cnt = guard.ref_cnt(block_id)
            if not is_int(ref_cnt):
                raise BlockStoreError(
                    f"{op}: the guard's ref_cnt({block_id}) returned {ref_cnt!r}; expected an int"
                )
            if ref_cnt > 1:
                raise CopyOnWriteError(
                    f"{op}: block {block_id} is shared (ref_cnt {ref_cnt}); expected ref_cnt 1: "
                    "copy-on-write must happen first (fork_block, then copy_blocks)"
                )
            if ref_cnt < 1:
                raise CopyOnWriteError(
                    f"{op}: block {block_id} is free (ref_cnt {ref_cnt}); expected a block "
                    "allocated to the writer (ref_cnt 1)"
                )
            if guard.block_hash(block_id) is not None:
                raise CopyOnWriteError(
                    f"{op}: block {block_id} is cached (hashed); a cached block's K/V is "
                    "immutable: copy-on-write must happen first (fork_block, then copy_blocks)"
                )

    def _check_layer(self, op: str, layer: object) -> int:
        return check_int(op, "layer", layer, 0, self.num_layers)

    def _token_words(
        self, op: str, name: str, tensor: object, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """A checked K or V tensor as ``[tokens, words]`` rows on the store's device, in memory
        that no write of this call can change (a source aliasing the cache is copied)."""
        checked = check_kv_tensor(op, name, tensor, shape, self.dtype, self.device)
        words = checked.detach().to(self.device)
        if words.untyped_storage().data_ptr() == self._storage_ptr:
            words = words.clone()
        words = words.contiguous()
        if words.storage_offset() * self.dtype.itemsize % self._token_word.itemsize:
            words = words.clone()  # a word view needs a word-aligned start
        return words.view(-1).view(self._token_word).view(-1, self._token_rows.shape[1])

    # ------------------------------------------------------------------------ operations

    def write(
        self,
        slot_mapping: IdsLike,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        layer: int | None = None,
    ) -> None:
        """Store K/V of ``T`` new tokens at ``slot_mapping`` (slot = block_id * block_size +
        offset), all tokens in one indexed copy per K and V.

        ``layer=None`` writes every layer: ``key``/``value`` are
        ``[num_layers, T, num_kv_heads, head_size]``. An int writes that layer:
        ``[T, num_kv_heads, head_size]``. Tensors must have the store's dtype and live on its
        device or the CPU. Slots must be distinct (which of two writes to one slot wins is
        unspecified on CUDA). With a guard, every block touched must be exclusively owned and
        uncached; otherwise :class:`CopyOnWriteError` and nothing is written.
        """
        op = "write"
        slots = check_ids(op, "slot_mapping", slot_mapping, self.num_slots, self.device)
        dup = first_repeat(slots)
        if dup is not None:
            raise BlockStoreError(
                f"{op}: slot {dup} (block {dup // self.block_size}) appears twice in "
                "slot_mapping; expected distinct slots"
            )
        shape: tuple[int, ...] = (len(slots), self.num_kv_heads, self.head_size)
        if layer is None:
            shape = (self.num_layers, *shape)
        else:
            self._check_layer(op, layer)
        key_words = self._token_words(op, "key", key, shape)
        value_words = self._token_words(op, "value", value, shape)
        bs = self.block_size
        if isinstance(slots, torch.Tensor):
            index = slots.to(self.device, torch.int64)
            blocks = set(torch.unique(index // bs).tolist())
        else:
            index = torch.tensor(slots, dtype=torch.int64, device=self.device)
            blocks = {s // bs for s in slots}
        self._check_writable(op, blocks)
        if not len(slots):
            return
        rows = (index // bs) * (2 * self.num_layers * bs) + index % bs  # layer 0's K rows
        if layer is None:
            rows = (self._layer_rows[:, None] + rows).view(-1)  # layer-major, as key is
        else:
            rows = rows + self._layer_rows[layer]
        self._token_rows.index_copy_(0, rows, key_words)
        self._token_rows.index_copy_(0, rows + bs, value_words)

    def copy_blocks(self, src_ids: IdsLike, dst_ids: IdsLike) -> None:
        """Copy block ``src_ids[i]`` onto ``dst_ids[i]``, K and V of every layer, in one call
        that copies each block as one contiguous span (no loop over layers, no staging).

        The copy-on-write step: after ``fork_block`` hands a request a fresh block, this gives
        it the shared block's content before the request's first divergent write. Every
        destination receives its source's content as it was *before* the call, so sources may
        also appear as destinations. Destinations must be distinct; with a guard they must be
        exclusively owned and uncached (a copy is a write). Refused calls change nothing.
        """
        op = "copy_blocks"
        src = self._id_list(op, "src_ids", src_ids, self.num_blocks)
        dst = self._id_list(op, "dst_ids", dst_ids, self.num_blocks)
        if len(src) != len(dst):
            raise BlockStoreError(
                f"{op}: {len(src)} source ids but {len(dst)} destination ids; expected equal "
                "lengths"
            )
        dup = first_repeat(dst)
        if dup is not None:
            raise BlockStoreError(
                f"{op}: destination block {dup} appears twice; expected distinct destinations"
            )
        self._check_writable(op, dst)
        if src:
            self._copy_blocks(src, dst)

    def _copy_blocks(self, src: list[int], dst: list[int]) -> None:
        """The copy itself, on validated ids: one ``_foreach_copy_`` over whole-block views.

        ``torch._foreach_copy_`` (torch >= 2.1) copies a list of tensor pairs in one call (a
        C++ loop of contiguous copies on CPU, torch's multi-tensor kernel on CUDA), with no
        Python per block beyond picking two views and no buffer allocated. A source that is
        also a destination is cloned first (the only allocation, and only then): a pool never
        forks into a block it is copying from, but a swap must still read old content.
        """
        blocks = self._blocks
        written = set(dst)
        if written.isdisjoint(src):
            sources = [blocks[s] for s in src]
        else:
            sources = [blocks[s].clone() if s in written else blocks[s] for s in src]
        torch._foreach_copy_([blocks[d] for d in dst], sources)

    def gather(
        self, block_ids: IdsLike, num_tokens: int, *, layer: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A request's K and V as dense tensors, read through its block table.

        ``layer`` int: ``k`` and ``v`` are contiguous ``[num_tokens, num_kv_heads,
        head_size]``. ``layer=None``: ``[num_layers, num_tokens, num_kv_heads, head_size]``
        views of one buffer, each ``k[l]`` contiguous. Only the first
        ``cdiv(num_tokens, block_size)`` ids are read; a longer table is allowed (slots
        reserved ahead). Ids may repeat (a read is unambiguous). The copy moves bits, so the
        result is bit-identical on any device.
        """
        op = "gather"
        table = self._table(op, block_ids, num_tokens)
        if layer is not None:
            self._check_layer(op, layer)
        return self._gather(table, num_tokens, layer)

    def _table(self, op: str, block_ids: IdsLike, num_tokens: int) -> torch.Tensor:
        """The first ``cdiv(num_tokens, block_size)`` ids of a block table, validated."""
        check_int(op, "num_tokens", num_tokens, 0)
        table = self._id_tensor(op, "block_ids", block_ids, self.num_blocks)
        needed = -(-num_tokens // self.block_size)
        if table.numel() < needed:
            raise BlockStoreError(
                f"{op}: {num_tokens} tokens need {needed} blocks of {self.block_size}; "
                f"the block table holds {table.numel()}"
            )
        return table[:needed]

    def _gather(
        self, table: torch.Tensor, num_tokens: int, layer: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        planes = self._planes if layer is None else self._planes[2 * layer : 2 * layer + 2]
        # Plane-major rows, so that each plane's blocks land in table order; dim-0 selection
        # of contiguous rows is one memcpy per row.
        rows = (table * len(self._planes) + planes[:, None]).view(-1)
        words = self._plane_rows.index_select(0, rows)
        padded = table.numel() * self.block_size  # whole blocks; the tail past num_tokens is cut
        dense = words.view(self.dtype).view(len(planes), padded, self.num_kv_heads, self.head_size)
        if layer is None:
            dense = dense.view(self.num_layers, 2, *dense.shape[1:])
            return dense[:, 0, :num_tokens], dense[:, 1, :num_tokens]
        return dense[0, :num_tokens], dense[1, :num_tokens]

    def paged_attention(
        self,
        query: torch.Tensor,
        block_ids: IdsLike,
        num_tokens: int,
        layer: int,
        *,
        scale: float | None = None,
    ) -> torch.Tensor:
        """Reference paged attention: gather, then torch's scaled_dot_product_attention.

        ``query`` is ``[q, num_q_heads, head_size]``: the last ``q`` of the request's
        ``num_tokens`` tokens, so query ``i`` sits at position ``num_tokens - q + i`` and
        attends to keys ``0 ..= num_tokens - q + i``. That bottom-right causal alignment is
        built as an explicit mask, because SDPA's ``is_causal`` aligns top-left and is only
        right when ``q == num_tokens``. Grouped-query attention: ``num_q_heads`` must be a
        multiple of ``num_kv_heads``; query head ``h`` reads KV head ``h // group``, as in
        vLLM. ``scale`` defaults to ``1 / sqrt(head_size)``. Returns
        ``[q, num_q_heads, head_size]`` in the store's dtype.
        """
        op = "paged_attention"
        if not isinstance(query, torch.Tensor):
            raise BlockStoreError(
                f"{op}: query has type {type(query).__name__}; expected a tensor"
            )
        if query.layout is not torch.strided or query.dim() != 3:
            raise BlockStoreError(
                f"{op}: query is a {query.layout} tensor of shape {tuple(query.shape)}; "
                "expected a dense [q, num_q_heads, head_size] tensor"
            )
        num_queries, num_q_heads, head_size = query.shape
        if head_size != self.head_size:
            raise BlockStoreError(
                f"{op}: query head_size {head_size}; expected the store's {self.head_size}"
            )
        if num_q_heads == 0 or num_q_heads % self.num_kv_heads != 0:
            raise BlockStoreError(
                f"{op}: {num_q_heads} query heads is not a multiple of the store's "
                f"{self.num_kv_heads} KV heads; expected grouped-query attention"
            )
        if query.dtype != self.dtype:
            raise BlockStoreError(
                f"{op}: query has dtype {query.dtype}; expected the store's {self.dtype}"
            )
        check_device(op, "query", query, self.device)
        table = self._table(op, block_ids, num_tokens)
        if not 1 <= num_queries <= num_tokens:
            raise BlockStoreError(
                f"{op}: {num_queries} queries over {num_tokens} tokens; expected "
                "1 <= q <= num_tokens (queries are the request's last tokens)"
            )
        self._check_layer(op, layer)
        scale = check_scale(op, scale)
        k, v = self._gather(table, num_tokens, layer)
        group = num_q_heads // self.num_kv_heads
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        positions = torch.arange(num_tokens, device=self.device)
        query_positions = positions[num_tokens - num_queries :, None]
        mask = positions[None, :] <= query_positions  # [q, num_tokens], True = attend
        out = F.scaled_dot_product_attention(
            query.to(self.device).transpose(0, 1),  # [heads, q, head_size]
            k.transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=mask,
            scale=scale if scale is not None else 1.0 / math.sqrt(self.head_size),
        )
        return out.transpose(0, 1)
