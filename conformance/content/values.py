"""What a correct block store holds: K/V as a function of the token prefix, and block hashes
that name their prefix.

The content machine needs to know, for any token sequence, the exact bits a correct store
holds for it, without trusting the store. So K/V are not computed by a model but derived:

* the K/V written for token ``i`` is a function of ``tokens[: i + 1]`` (a sha256 stream of
  the prefix), as a model's K/V depend on the whole prefix. A legitimate prefix hit
  therefore holds exactly the values the request would have computed itself;
* each value is ``(byte - 128) / 16``: at most 8 significant bits, exact in float16,
  bfloat16 and float32, so expected and stored values compare bit for bit in any dtype
  and on any device;
* a block's hash is its whole token prefix (``b"0.1.1.0"``): hashes chain, as upstream's
  do, and the expected content of any cached block can be recomputed from its hash alone.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype | str) -> str:
    """The config name of a store dtype (``"float32"``...), validated."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unsupported store dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return name


@functools.lru_cache(maxsize=1 << 16)
def _prefix_bytes(prefix: tuple[int, ...], nbytes: int) -> bytes:
    seed = ("kvspec-kv:" + ".".join(map(str, prefix))).encode()
    out = bytearray()
    counter = 0
    while len(out) < nbytes:
        out += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    return bytes(out[:nbytes])


def token_kv(
    prefix: Sequence[int], num_layers: int, num_kv_heads: int, head_size: int
) -> torch.Tensor:
    """K/V of the last token of ``prefix``: float32 ``[num_layers, 2, num_kv_heads,
    head_size]`` (axis 1: K, V), each value ``(byte - 128) / 16`` of a sha256 stream.

    Values have at most 8 significant bits, so they survive a cast to float16 or bfloat16
    unchanged: the same bits wherever they are computed.
    """
    n = num_layers * 2 * num_kv_heads * head_size
    raw = torch.frombuffer(bytearray(_prefix_bytes(tuple(prefix), n)), dtype=torch.uint8)
    return ((raw.to(torch.float32) - 128.0) / 16.0).view(num_layers, 2, num_kv_heads, head_size)


def chain_hash(tokens: Sequence[int], block_index: int, block_size: int) -> bytes:
    """The hash of block ``block_index``: its whole token prefix, so hashes chain (a hit on
    block k implies blocks 0..k match) and a cached block's content can be recomputed from
    its hash alone."""
    return ".".join(map(str, tokens[: (block_index + 1) * block_size])).encode()


def tokens_of_hash(block_hash: bytes) -> list[int]:
    """Inverse of :func:`chain_hash`: the token prefix a block hash names."""
    return [int(t) for t in block_hash.decode().split(".")]


class ExpectedKV:
    """The K/V a correct store holds for given tokens, in the store's dtype, on the CPU."""

    def __init__(
        self, num_layers: int, num_kv_heads: int, head_size: int, dtype: torch.dtype
    ) -> None:
        self.shape = (num_layers, num_kv_heads, head_size)
        self.dtype = dtype
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    def token(self, prefix: Sequence[int]) -> torch.Tensor:
        key = tuple(prefix)
        found = self._cache.get(key)
        if found is None:
            found = token_kv(key, *self.shape).to(self.dtype)
            self._cache[key] = found
        return found

    def span(
        self, tokens: Sequence[int], start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of positions ``start..stop-1``: ``[num_layers, stop - start, heads, size]``,
        the layout of :meth:`BlockStore.write` and :meth:`BlockStore.gather`."""
        if stop <= start:
            layers, heads, size = self.shape
            empty = torch.empty((layers, 0, heads, size), dtype=self.dtype)
            return empty, empty
        stacked = torch.stack([self.token(tokens[: i + 1]) for i in range(start, stop)], dim=1)
        return stacked[:, :, 0].contiguous(), stacked[:, :, 1].contiguous()


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` reinterpreted as integers of the same width, for bit-exact comparison (float
    ``==`` would call -0.0 equal to 0.0 and a NaN unequal to itself)."""
    word = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(word)
