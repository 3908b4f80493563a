"""The block store: the K/V tensors that a block pool's ids stand for.

A ``BlockPool`` hands out integer block ids and never sees data. Something must hold the
bytes those ids name, and an allocator can agree with its spec on every id yet serve the wrong
bytes: a cached block overwritten while shared, a fork that forgot to copy. ``BlockStore``
holds the real K/V tensors in torch (any float dtype, any device), with the four operations a
serving engine performs on them: write new tokens through a slot mapping, copy blocks (the
copy-on-write step), gather a request's K/V from its block table, and a reference paged
attention over that gather.

Layout decision
    One stacked tensor ``kv`` of shape
    ``[num_layers, 2, num_blocks, block_size, num_kv_heads, head_size]`` (index 0 of the
    second axis is K, 1 is V), rather than vLLM's one ``[2, num_blocks, ...]`` tensor per
    layer. Each per-layer slice ``kv[layer]`` *is* vLLM's layout, so nothing is lost; what is
    gained is that a block id selects the same ``2 * num_layers`` planes everywhere, so
    ``copy_blocks`` is one indexed copy across every layer's K and V, with no Python loop
    over layers or blocks (on CPU it is staged in cache-sized chunks of many blocks, see
    ``_copy_rows_staged``), and a single allocation holds the whole cache. The cost is one
    allocation of the whole cache instead of per-layer tensors a framework can place
    separately; a reference store does not need that freedom.

Copies move words, not numbers
    ``write``, ``copy_blocks`` and ``gather`` view the storage as the widest element type
    that divides a token's (or a block's) bytes, 16-byte ``complex128`` in practice, and
    index that. torch's CPU scatter (``index_copy_``) costs per element, not per byte:
    scattering 256 KiB measured 75 us as float16, 43 us as int64 and 8.5 us as complex128.
    The wide elements are only loaded and stored, never computed with, so every bit
    survives (NaN payloads, signed zeros, subnormals; the tests write random bit patterns).
    This is also why gathers are bit-identical across devices.

The write guard
    A write into a block that another request shares (``ref_cnt > 1``) or that the prefix
    cache indexes (hashed) would change what some other reader sees: copy-on-write must
    happen first. The store does not know any pool class; it takes a *guard*, any object with
    ``ref_cnt(block_id)`` and ``block_hash(block_id)`` (kvspec's pool target protocol), and
    refuses such writes with :class:`CopyOnWriteError`. With no guard, writes are unchecked.
    Every check runs before any tensor changes, so a refused call leaves the store as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from kvspec.impl.errors import KVCacheError

NULL_BLOCK_ID = 0
"""Block 0 is the null block in kvspec's pool protocol: a placeholder that never holds data."""

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

IdsLike = Sequence[int] | torch.Tensor


class BlockStoreError(KVCacheError, ValueError):
    """A block-store call was malformed: an id or slot out of range, a repeated destination,
    a tensor of the wrong shape or dtype."""


class CopyOnWriteError(BlockStoreError):
    """A write (or a copy's destination) targets a block that is not exclusively owned and
    uncached: shared, hashed, free, or the null block. Copy-on-write must happen first."""


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


def _first_repeat(values: list[int]) -> int | None:
    """The first value that occurs a second time, or None when all are distinct."""
    seen: set[int] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


class BlockStore:
    """A paged KV cache: ``num_blocks`` blocks of ``block_size`` token slots, for every layer.

    Slot ``s`` is offset ``s % block_size`` of block ``s // block_size``, as in vLLM's slot
    mapping. See the module docstring for the layout and the write guard. Not thread-safe:
    CPU copies share one staging buffer.
    """

    copy_chunk_bytes: int = 1 << 20
    """Staging-buffer size for CPU ``copy_blocks``: small enough to stay in a core's L2. At
    least one (plane, block) row is staged per chunk however small this is."""

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
        for name, value in (
            ("num_blocks", num_blocks),
            ("block_size", block_size),
            ("num_layers", num_layers),
            ("num_kv_heads", num_kv_heads),
            ("head_size", head_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BlockStoreError(f"BlockStore: {name} must be a positive int, got {value!r}")
        if dtype not in _SUPPORTED_DTYPES:
            raise BlockStoreError(
                f"BlockStore: dtype must be one of {_SUPPORTED_DTYPES}, got {dtype}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.dtype = dtype
        self.device = torch.device(device)
        self.guard = guard
        self.kv = torch.zeros(
            (num_layers, 2, num_blocks, block_size, num_kv_heads, head_size),
            dtype=dtype,
            device=self.device,
        )
        """The whole cache. Read it freely; mutate it only through the store's methods."""

        # Views over the same storage, built once so each call only indexes.
        token_bytes = num_kv_heads * head_size * self.kv.element_size()
        self._token_word = _word_dtype(token_bytes)
        # [num_layers, 2, num_slots, words per token]: a slot picks one row per (layer, K/V).
        self._tokens = (
            self.kv.view(-1).view(self._token_word).view(num_layers, 2, self.num_slots, -1)
        )
        block_word = _word_dtype(block_size * token_bytes)
        # One row per (plane, block), a plane being one layer's K or V: block b of plane p is
        # row p * num_blocks + b, and a block id picks num_layers * 2 rows.
        self._rows = self.kv.view(-1).view(block_word).view(num_layers * 2 * num_blocks, -1)
        self._plane_offsets = (
            torch.arange(num_layers * 2, dtype=torch.int64, device=self.device) * num_blocks
        )
        self._staging: torch.Tensor | None = None  # allocated by the first staged copy

    # ----------------------------------------------------------------------------- sizes

    @property
    def num_slots(self) -> int:
        """Token slots in the whole pool: ``num_blocks * block_size``."""
        return self.num_blocks * self.block_size

    @property
    def block_nbytes(self) -> int:
        """Bytes one block occupies across every layer's K and V: what ``copy_blocks`` moves
        per block."""
        return self.kv[:, :, 0].numel() * self.kv.element_size()

    # ------------------------------------------------------------------------ validation

    def _id_list(self, op: str, what: str, ids: IdsLike, limit: int) -> list[int]:
        """``ids`` as a list of ints in ``[0, limit)``, or a BlockStoreError naming ``op``."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise BlockStoreError(
                    f"{op}: {what} must be a 1-d integer tensor, got shape "
                    f"{tuple(ids.shape)} dtype {ids.dtype}"
                )
            values = ids.tolist()
        else:
            values = list(ids)
        for value in values:
            if not isinstance(value, int) or isinstance(value, bool):
                raise BlockStoreError(f"{op}: {what} must hold ints, got {value!r}")
            if not 0 <= value < limit:
                raise BlockStoreError(
                    f"{op}: {what} entry {value} is out of range; expected 0 <= id < {limit}"
                )
        return values

    def _check_writable(self, op: str, block_ids: set[int] | list[int]) -> None:
        """Refuse, before anything changes, a write into a block the writer does not own alone.

        Exclusive and uncached means ``ref_cnt == 1`` and no hash; the null block is never
        data. Blocks are checked in id order so the error names the smallest offender.
        """
        guard = self.guard
        if guard is None:
            return
        for block_id in sorted(block_ids):
            if block_id == NULL_BLOCK_ID:
                raise CopyOnWriteError(
                    f"{op}: block {block_id} is the null block, a placeholder that never holds "
                    "K/V; expected a block allocated to the writer"
                )
            ref_cnt = guard.ref_cnt(block_id)
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

    def _check_kv_tensor(
        self, op: str, name: str, tensor: torch.Tensor, shape: tuple[int, ...]
    ) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor):
            raise BlockStoreError(f"{op}: {name} must be a torch.Tensor, got {type(tensor)}")
        if tuple(tensor.shape) != shape:
            raise BlockStoreError(f"{op}: {name} has shape {tuple(tensor.shape)}; expected {shape}")
        if tensor.dtype != self.dtype:
            raise BlockStoreError(
                f"{op}: {name} has dtype {tensor.dtype}; expected the store's {self.dtype} "
                "(a silent cast would change the bits)"
            )
        return tensor.to(self.device)

    def _check_layer(self, op: str, layer: int) -> None:
        if (
            not isinstance(layer, int)
            or isinstance(layer, bool)
            or not (0 <= layer < self.num_layers)
        ):
            raise BlockStoreError(
                f"{op}: layer {layer!r} is out of range; expected 0 <= layer < {self.num_layers}"
            )

    def _table_prefix(self, op: str, block_ids: IdsLike, num_tokens: int) -> list[int]:
        """The first ``cdiv(num_tokens, block_size)`` ids of a block table, validated."""
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 0:
            raise BlockStoreError(f"{op}: num_tokens must be an int >= 0, got {num_tokens!r}")
        ids = self._id_list(op, "block_ids", block_ids, self.num_blocks)
        needed = -(-num_tokens // self.block_size)
        if len(ids) < needed:
            raise BlockStoreError(
                f"{op}: {num_tokens} tokens need {needed} blocks of {self.block_size}; "
                f"the block table holds {len(ids)}"
            )
        return ids[:needed]

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
        ``[T, num_kv_heads, head_size]``. Tensors must have the store's dtype; they may live on
        another device. Slots must be distinct (which of two writes to one slot wins is
        unspecified on CUDA). With a guard, every block touched must be exclusively owned and
        uncached; otherwise :class:`CopyOnWriteError` and nothing is written.
        """
        op = "write"
        slots = self._id_list(op, "slot_mapping", slot_mapping, self.num_slots)
        dup = _first_repeat(slots)
        if dup is not None:
            raise BlockStoreError(
                f"{op}: slot {dup} (block {dup // self.block_size}) appears twice in "
                "slot_mapping; expected distinct slots"
            )
        rows = (len(slots), self.num_kv_heads, self.head_size)
        if layer is None:
            shape = (self.num_layers, *rows)
        else:
            self._check_layer(op, layer)
            shape = rows
        key = self._check_kv_tensor(op, "key", key, shape)
        value = self._check_kv_tensor(op, "value", value, shape)
        self._check_writable(op, {s // self.block_size for s in slots})
        if not slots:
            return
        index = torch.tensor(slots, dtype=torch.int64, device=self.device)
        rows = (*shape[:-2], self._tokens.shape[-1])
        key_words = key.contiguous().view(-1).view(self._token_word).view(rows)
        value_words = value.contiguous().view(-1).view(self._token_word).view(rows)
        if layer is None:
            self._tokens[:, 0].index_copy_(1, index, key_words)
            self._tokens[:, 1].index_copy_(1, index, value_words)
        else:
            self._tokens[layer, 0].index_copy_(0, index, key_words)
            self._tokens[layer, 1].index_copy_(0, index, value_words)

    def copy_blocks(self, src_ids: IdsLike, dst_ids: IdsLike) -> None:
        """Copy block ``src_ids[i]`` onto ``dst_ids[i]``, K and V of every layer, in one
        indexed gather and one indexed scatter (no loop over blocks or layers).

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
        dup = _first_repeat(dst)
        if dup is not None:
            raise BlockStoreError(
                f"{op}: destination block {dup} appears twice; expected distinct destinations"
            )
        self._check_writable(op, dst)
        if not src:
            return
        pair = torch.tensor([src, dst], dtype=torch.int64, device=self.device)
        # Row of (plane p, block b) in the [planes * num_blocks, words] view: p * num_blocks + b,
        # block-major, so one block's planes are copied together.
        rows = (pair[:, :, None] + self._plane_offsets).view(2, -1)
        if self.device.type == "cpu" and set(src).isdisjoint(dst):
            self._copy_rows_staged(rows[0], rows[1])
        else:
            self._rows.index_copy_(0, rows[1], self._rows.index_select(0, rows[0]))

    def _copy_rows_staged(self, src_rows: torch.Tensor, dst_rows: torch.Tensor) -> None:
        """CPU copy through a reused staging buffer of at most ``copy_chunk_bytes``.

        A one-pass gather would allocate a staging tensor as large as the whole copy (64 MiB
        for 256 blocks of a small model): past glibc's mmap threshold every call maps and
        faults in fresh pages, and the staged bytes fall out of cache before the scatter reads
        them. Chunks of a few hundred KiB stay in L2 and reuse one buffer; measured about 3x
        faster at 64 MiB. Only used when no destination is also a source, since a later chunk
        would otherwise read a row an earlier chunk already overwrote.
        """
        row_bytes = self._rows.shape[1] * self._rows.element_size()
        step = max(1, self.copy_chunk_bytes // row_bytes)
        if self._staging is None or self._staging.shape[0] != step:
            self._staging = self._rows.new_empty((step, self._rows.shape[1]))
        for start in range(0, src_rows.numel(), step):
            src_part = src_rows[start : start + step]
            staged = self._staging[: src_part.numel()]
            torch.index_select(self._rows, 0, src_part, out=staged)
            self._rows.index_copy_(0, dst_rows[start : start + step], staged)

    def gather(
        self, block_ids: IdsLike, num_tokens: int, *, layer: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A request's K and V as dense tensors, read through its block table.

        ``layer`` int: ``k`` and ``v`` are contiguous ``[num_tokens, num_kv_heads,
        head_size]``. ``layer=None``: ``[num_layers, num_tokens, num_kv_heads, head_size]``
        views of one buffer, each ``k[l]`` contiguous. Only the first
        ``cdiv(num_tokens, block_size)`` ids are read; a longer table is allowed (slots
        reserved ahead). The copy moves bits, so the result is bit-identical on any device.
        """
        op = "gather"
        ids = self._table_prefix(op, block_ids, num_tokens)
        heads = (self.num_kv_heads, self.head_size)
        if layer is not None:
            self._check_layer(op, layer)
        index = torch.tensor(ids, dtype=torch.int64, device=self.device)
        padded = len(ids) * self.block_size  # whole blocks; the tail past num_tokens is cut
        # Rows of the [planes * num_blocks, words] view, plane-major so that each plane's
        # blocks land in table order; dim-0 selection of contiguous rows is a memcpy per row.
        planes = (
            self._plane_offsets if layer is None else self._plane_offsets[2 * layer : 2 * layer + 2]
        )
        words = self._rows.index_select(0, (planes[:, None] + index).view(-1))
        if layer is None:
            dense = words.view(self.dtype).view(self.num_layers, 2, padded, *heads)
            return dense[:, 0, :num_tokens], dense[:, 1, :num_tokens]
        dense = words.view(self.dtype).view(2, padded, *heads)
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
        if not isinstance(query, torch.Tensor) or query.dim() != 3:
            raise BlockStoreError(
                f"{op}: query must be a [q, num_q_heads, head_size] tensor, got "
                f"{getattr(query, 'shape', type(query))}"
            )
        num_queries, num_q_heads, head_size = query.shape
        if head_size != self.head_size:
            raise BlockStoreError(
                f"{op}: query head_size {head_size}; expected the store's {self.head_size}"
            )
        if num_q_heads % self.num_kv_heads != 0:
            raise BlockStoreError(
                f"{op}: {num_q_heads} query heads is not a multiple of the store's "
                f"{self.num_kv_heads} KV heads; expected grouped-query attention"
            )
        if query.dtype != self.dtype:
            raise BlockStoreError(
                f"{op}: query has dtype {query.dtype}; expected the store's {self.dtype}"
            )
        if (
            not isinstance(num_tokens, int)
            or isinstance(num_tokens, bool)
            or not 1 <= num_queries <= num_tokens
        ):
            raise BlockStoreError(
                f"{op}: {num_queries} queries over {num_tokens!r} tokens; expected "
                "1 <= q <= num_tokens (queries are the request's last tokens)"
            )
        self._check_layer(op, layer)
        k, v = self.gather(block_ids, num_tokens, layer=layer)
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
