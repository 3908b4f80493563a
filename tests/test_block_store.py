"""The block store: where K/V written through a slot mapping lands, what copy_blocks moves,
paged attention against dense attention, the copy-on-write write guard, and bit-exact gathers
across stores and devices."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from kvspec.conformance.pool.targets import ImplPool
from kvspec.impl.block_store import BlockStore, BlockStoreError, CopyOnWriteError
from kvspec.impl.errors import KVCacheError

LAYERS, HEADS, HEAD_SIZE, BLOCK_SIZE = 2, 2, 4, 4


def small_store(dtype: torch.dtype = torch.float32, **kwargs: object) -> BlockStore:
    return BlockStore(8, BLOCK_SIZE, LAYERS, HEADS, HEAD_SIZE, dtype=dtype, **kwargs)


def values(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(dtype)


def slots_for(block_table: list[int], num_tokens: int) -> list[int]:
    """Slot of each token position of a request, as a scheduler computes it."""
    return [block_table[t // BLOCK_SIZE] * BLOCK_SIZE + t % BLOCK_SIZE for t in range(num_tokens)]


# ----------------------------------------------------------------------------- layout


def test_kv_has_vllm_per_layer_shape_and_each_block_is_one_contiguous_span() -> None:
    store = small_store(torch.bfloat16)
    assert store.kv.shape == (LAYERS, 2, 8, BLOCK_SIZE, HEADS, HEAD_SIZE)
    assert store.kv.dtype == torch.bfloat16
    assert store.kv[1].shape == (2, 8, BLOCK_SIZE, HEADS, HEAD_SIZE)  # vLLM's per-layer tensor
    assert store.block_nbytes == LAYERS * 2 * BLOCK_SIZE * HEADS * HEAD_SIZE * 2
    # Block-major storage: block b, K and V of every layer, is one span of block_nbytes
    # right after block b - 1: what lets copy_blocks move a block in one memcpy.
    for block in range(8):
        assert store.kv[:, :, block].is_contiguous()
        offset = store.kv[:, :, block].data_ptr() - store.kv[:, :, 0].data_ptr()
        assert offset == block * store.block_nbytes


def test_store_rejects_an_unsupported_dtype_and_a_zero_size() -> None:
    with pytest.raises(BlockStoreError, match="dtype"):
        BlockStore(4, 4, 1, 1, 4, dtype=torch.int32)
    with pytest.raises(BlockStoreError, match="num_blocks"):
        BlockStore(0, 4, 1, 1, 4)


# ------------------------------------------------------------------------------ write


def test_write_through_slot_mapping_lands_at_block_and_offset() -> None:
    store = small_store()
    key, value = values(3, HEADS, HEAD_SIZE, seed=1), values(3, HEADS, HEAD_SIZE, seed=2)
    # slot 22 = block 5 offset 2; slot 3 = block 0 offset 3; slot 9 = block 2 offset 1
    store.write([22, 3, 9], key, value, layer=1)
    for token, (block, offset) in enumerate([(5, 2), (0, 3), (2, 1)]):
        assert torch.equal(store.kv[1, 0, block, offset], key[token])
        assert torch.equal(store.kv[1, 1, block, offset], value[token])
    assert store.kv[0].abs().sum() == 0  # the other layer is untouched
    assert store.kv.ne(0).sum() == 2 * 3 * HEADS * HEAD_SIZE  # nothing else was written


def test_write_without_layer_writes_every_layer_in_one_call() -> None:
    store = small_store()
    key = values(LAYERS, 2, HEADS, HEAD_SIZE, seed=3)
    value = values(LAYERS, 2, HEADS, HEAD_SIZE, seed=4)
    store.write(torch.tensor([17, 18]), key, value)
    for layer in range(LAYERS):
        assert torch.equal(store.kv[layer, 0, 4, 1:3], key[layer])
        assert torch.equal(store.kv[layer, 1, 4, 1:3], value[layer])


@pytest.mark.parametrize(
    ("slots", "key_shape", "dtype", "message"),
    [
        ([1, 99], (2, HEADS, HEAD_SIZE), torch.float32, "slot_mapping entry 99 is out of range"),
        ([5, 5], (2, HEADS, HEAD_SIZE), torch.float32, "slot 5 .block 1. appears twice"),
        ([1, 2], (3, HEADS, HEAD_SIZE), torch.float32, "key has shape"),
        ([1, 2], (2, HEADS, HEAD_SIZE), torch.float16, "key has dtype"),
    ],
)
def test_malformed_write_is_refused_and_writes_nothing(
    slots: list[int], key_shape: tuple[int, ...], dtype: torch.dtype, message: str
) -> None:
    store = small_store()
    store.write(
        [0, 1], values(2, HEADS, HEAD_SIZE, seed=5), values(2, HEADS, HEAD_SIZE, seed=6), layer=0
    )
    before = store.kv.clone()
    key = values(*key_shape, seed=7, dtype=dtype)
    with pytest.raises(BlockStoreError, match=message):
        store.write(slots, key, key.clone(), layer=0)
    assert torch.equal(store.kv, before)


# ------------------------------------------------------------------------------ gather


def test_gather_follows_the_block_table_not_id_order_and_cuts_the_partial_last_block() -> None:
    store = small_store()
    table, num_tokens = [6, 2, 7], 10  # 4 + 4 + 2 tokens; block 7 is partly filled
    key = values(LAYERS, num_tokens, HEADS, HEAD_SIZE, seed=8)
    value = values(LAYERS, num_tokens, HEADS, HEAD_SIZE, seed=9)
    store.write(slots_for(table, num_tokens), key, value)

    k, v = store.gather(table, num_tokens, layer=1)
    assert k.shape == (num_tokens, HEADS, HEAD_SIZE) and k.is_contiguous()
    assert torch.equal(k, key[1]) and torch.equal(v, value[1])

    k_all, v_all = store.gather(table, num_tokens)
    assert torch.equal(k_all, key) and torch.equal(v_all, value)


def test_gather_reads_only_the_blocks_the_tokens_need() -> None:
    store = small_store()
    key = values(LAYERS, 4, HEADS, HEAD_SIZE, seed=10)
    store.write(slots_for([3], 4), key, key)
    k, _ = store.gather([3, 5, 6], 4, layer=0)  # slots reserved ahead are not read
    assert torch.equal(k, key[0])
    k, v = store.gather([3], 0)  # an empty request gathers to empty tensors
    assert k.shape == v.shape == (LAYERS, 0, HEADS, HEAD_SIZE)
    with pytest.raises(
        BlockStoreError, match="5 tokens need 2 blocks of 4; the block table holds 1"
    ):
        store.gather([3], 5, layer=0)


# --------------------------------------------------------------------- paged attention


def dense_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Attention written out position by position in float64, independent of SDPA: query i
    is token ``n - q + i`` and sees keys ``0..n-q+i``; query head h reads KV head
    ``h // group``."""
    q, num_q_heads, head_size = query.shape
    n, num_kv_heads, _ = key.shape
    group = num_q_heads // num_kv_heads
    out = torch.empty(q, num_q_heads, head_size, dtype=torch.float64)
    for i in range(q):
        visible = n - q + i + 1
        for h in range(num_q_heads):
            keys = key[:visible, h // group].double()
            scores = keys @ query[i, h].double() / math.sqrt(head_size)
            out[i, h] = torch.softmax(scores, dim=0) @ value[:visible, h // group].double()
    return out


TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_queries", [1, 3, 11])
def test_paged_attention_equals_dense_attention_over_contiguous_kv(
    dtype: torch.dtype, num_queries: int
) -> None:
    # Block table out of id order, 11 tokens (last block 3 of 4 full), 4 query heads over 2
    # KV heads (grouped-query), and queries that are the sequence's last 1, 3 or 11 tokens.
    store = small_store(dtype)
    table, num_tokens = [5, 1, 6], 11
    key = values(LAYERS, num_tokens, HEADS, HEAD_SIZE, seed=11, dtype=dtype)
    value = values(LAYERS, num_tokens, HEADS, HEAD_SIZE, seed=12, dtype=dtype)
    store.write(slots_for(table, num_tokens), key, value)
    query = values(num_queries, 2 * HEADS, HEAD_SIZE, seed=13, dtype=dtype)

    out = store.paged_attention(query, table, num_tokens, layer=1)

    assert out.shape == (num_queries, 2 * HEADS, HEAD_SIZE) and out.dtype == dtype
    expected = dense_attention(query, key[1], value[1])
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


def test_paged_attention_aligns_the_causal_mask_to_the_last_token() -> None:
    # With one query over 6 tokens the query is token 5 and sees all six values; a top-left
    # aligned mask would let it see only value 0.
    store = BlockStore(4, 2, 1, 1, 1, dtype=torch.float32)
    key = torch.zeros(1, 6, 1, 1)  # equal scores: the output is the mean of visible values
    value = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1)
    store.write([2, 3, 6, 7, 4, 5], key, value)  # table [1, 3, 2]
    out = store.paged_attention(torch.ones(1, 1, 1), [1, 3, 2], 6, layer=0)
    assert out.item() == pytest.approx(2.5)


def test_paged_attention_rejects_heads_that_are_not_a_multiple_of_kv_heads() -> None:
    store = small_store()
    with pytest.raises(BlockStoreError, match="3 query heads is not a multiple"):
        store.paged_attention(torch.zeros(1, 3, HEAD_SIZE), [1], 1, layer=0)


# ------------------------------------------------------------------------- copy_blocks


def filled_store(dtype: torch.dtype = torch.float32, **kwargs: object) -> BlockStore:
    """Every slot of every layer holds distinct values (block 0 included)."""
    store = small_store(dtype, **kwargs)
    n = store.num_slots
    store.write(
        range(n),
        values(LAYERS, n, HEADS, HEAD_SIZE, seed=20, dtype=dtype),
        values(LAYERS, n, HEADS, HEAD_SIZE, seed=21, dtype=dtype),
    )
    return store


def test_copy_blocks_copies_k_and_v_of_every_layer_and_leaves_sources_unchanged() -> None:
    store = filled_store()
    before = store.kv.clone()
    store.copy_blocks([3, 1], [6, 2])
    for src, dst in ((3, 6), (1, 2)):
        for layer in range(LAYERS):
            for kv in (0, 1):
                assert torch.equal(store.kv[layer, kv, dst], before[layer, kv, src])
    untouched = [b for b in range(8) if b not in (6, 2)]
    assert torch.equal(store.kv[:, :, untouched], before[:, :, untouched])


def test_copy_blocks_reads_every_source_before_writing_any_destination() -> None:
    store = filled_store()
    before = store.kv.clone()
    store.copy_blocks([1, 2], [2, 1])  # a swap: 2 receives 1's old content, not its new one
    assert torch.equal(store.kv[:, :, 2], before[:, :, 1])
    assert torch.equal(store.kv[:, :, 1], before[:, :, 2])


def test_copy_blocks_along_a_chain_moves_each_block_one_step() -> None:
    store = filled_store()
    before = store.kv.clone()
    store.copy_blocks([1, 2, 3], [2, 3, 4])  # every destination but the last is a source
    for src, dst in ((1, 2), (2, 3), (3, 4)):
        assert torch.equal(store.kv[:, :, dst], before[:, :, src])
    assert torch.equal(store.kv[:, :, 1], before[:, :, 1])


def test_copy_blocks_fans_one_source_out_to_several_children() -> None:
    # Parallel sampling: three children fork the parent's last block in one call.
    store = filled_store()
    before = store.kv.clone()
    store.copy_blocks(torch.tensor([5, 5, 5], dtype=torch.int32), (1, 2, 3))
    for dst in (1, 2, 3):
        assert torch.equal(store.kv[:, :, dst], before[:, :, 5])


def test_write_may_read_its_key_from_the_cache_itself() -> None:
    # Moving a token's K/V between slots through the store's own view: the source is read
    # in full before any slot is written, even where the two overlap.
    store = filled_store()
    before = store.kv.clone()
    key = store.kv[0, 0, 2, :2]  # slots 8, 9 of layer 0's K: a view into the cache
    value = store.kv[0, 1, 2, :2]
    store.write([9, 8], key, value, layer=0)  # swap the two tokens
    assert torch.equal(store.kv[0, 0, 2, 0], before[0, 0, 2, 1])
    assert torch.equal(store.kv[0, 0, 2, 1], before[0, 0, 2, 0])
    assert torch.equal(store.kv[0, 1, 2, 0], before[0, 1, 2, 1])


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ([1, 2], [3], "2 source ids but 1 destination ids"),
        ([1, 8], [3, 4], "src_ids entry 8 is out of range"),
        ([1, 2], [3, -1], "dst_ids entry -1 is out of range"),
        ([1, 2], [3, 3], "destination block 3 appears twice"),
    ],
)
def test_malformed_copy_blocks_is_refused_and_copies_nothing(
    src: list[int], dst: list[int], message: str
) -> None:
    store = filled_store()
    before = store.kv.clone()
    with pytest.raises(BlockStoreError, match=message):
        store.copy_blocks(src, dst)
    assert torch.equal(store.kv, before)


# ------------------------------------------------------------------------- write guard


def guarded() -> tuple[BlockStore, ImplPool]:
    pool = ImplPool(8)
    store = filled_store()
    store.guard = pool  # from here on, writes must respect the pool's ownership
    return store, pool


def test_write_into_a_shared_block_is_refused_until_copy_on_write() -> None:
    store, pool = guarded()
    (block,) = pool.get_new_blocks(1)
    pool.touch([block])  # a second request shares it: ref_cnt 2
    before = store.kv.clone()
    token = values(1, HEADS, HEAD_SIZE, seed=30)
    with pytest.raises(
        CopyOnWriteError,
        match=f"block {block} is shared .ref_cnt 2.*copy-on-write must happen first",
    ):
        store.write([block * BLOCK_SIZE + 3], token, token, layer=0)
    assert torch.equal(store.kv, before)

    # The child forks, copies the shared content, then writes its divergent token.
    child_block = pool.fork_block(block)
    store.copy_blocks([block], [child_block])
    store.write([child_block * BLOCK_SIZE + 3], token, token, layer=0)
    # The parent's view is unchanged; the child sees the shared prefix plus its own token.
    assert torch.equal(store.kv[:, :, block], before[:, :, block])
    assert torch.equal(store.kv[0, 0, child_block, :3], before[0, 0, block, :3])
    assert torch.equal(store.kv[0, 0, child_block, 3], token[0])


def test_write_into_a_cached_block_is_refused_and_writes_nothing() -> None:
    store, pool = guarded()
    blocks = pool.get_new_blocks(2)
    pool.cache_block(blocks[0], b"prefix-0")
    before = store.kv.clone()
    token = values(2, HEADS, HEAD_SIZE, seed=31)
    # One legitimate slot and one in the cached block: the whole write is refused.
    slots = [blocks[1] * BLOCK_SIZE, blocks[0] * BLOCK_SIZE + 1]
    with pytest.raises(CopyOnWriteError, match=f"block {blocks[0]} is cached"):
        store.write(slots, token, token, layer=1)
    assert torch.equal(store.kv, before)


def test_write_into_a_free_block_or_the_null_block_is_refused() -> None:
    store, pool = guarded()
    token = values(1, HEADS, HEAD_SIZE, seed=32)
    free_block = pool.free_block_ids()[0]
    with pytest.raises(CopyOnWriteError, match=f"block {free_block} is free .ref_cnt 0."):
        store.write([free_block * BLOCK_SIZE], token, token, layer=0)
    with pytest.raises(CopyOnWriteError, match="block 0 is the null block"):
        store.write([1], token, token, layer=0)


def test_copy_blocks_into_a_shared_destination_is_refused_and_copies_nothing() -> None:
    store, pool = guarded()
    src, dst = pool.get_new_blocks(2)
    pool.touch([dst])
    before = store.kv.clone()
    with pytest.raises(CopyOnWriteError, match=f"copy_blocks: block {dst} is shared"):
        store.copy_blocks([src], [dst])
    assert torch.equal(store.kv, before)


def test_without_a_guard_writes_are_unchecked() -> None:
    store = filled_store()
    token = values(1, HEADS, HEAD_SIZE, seed=33)
    store.write([0], token, token, layer=0)  # even the null block: nothing to consult
    assert torch.equal(store.kv[0, 0, 0, 0], token[0])


def test_the_fork_example_in_the_guide_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    guide = Path(__file__).resolve().parent.parent / "docs" / "block_store.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.DOTALL)
    (example,) = [b for b in blocks if "ImplPool(8)" in b]
    exec(compile(example, str(guide), "exec"), {})
    assert "write: block 1 is shared (ref_cnt 2)" in capsys.readouterr().out


def test_store_errors_belong_to_the_kvcache_error_hierarchy() -> None:
    assert issubclass(CopyOnWriteError, BlockStoreError)
    assert issubclass(BlockStoreError, KVCacheError) and issubclass(BlockStoreError, ValueError)


# ------------------------------------------------------------------------ determinism


def gathers_after_a_fixed_script(device: str) -> list[torch.Tensor]:
    """Writes, copies and more writes on a float16 store on ``device``; every request's
    gather comes back on the CPU. Values are random *bit patterns* (NaNs with payloads, -0.0,
    subnormals), so any copy that does arithmetic would show."""
    store = BlockStore(10, BLOCK_SIZE, LAYERS, HEADS, HEAD_SIZE, dtype=torch.float16, device=device)
    generator = torch.Generator().manual_seed(40)

    def bits(n: int) -> torch.Tensor:
        words = torch.randint(
            -(2**15), 2**15, (LAYERS, n, HEADS, HEAD_SIZE), generator=generator, dtype=torch.int16
        )
        return words.view(torch.float16)

    parent = [4, 1, 7]
    store.write(slots_for(parent, 11), bits(11), bits(11))
    store.copy_blocks([7, 1], [9, 3])
    child = [4, 3, 9]
    child_new = [9 * BLOCK_SIZE + 3, 2 * BLOCK_SIZE]
    store.write(child_new, bits(2), bits(2))
    results = []
    for table, n in ((parent, 11), ([4, 3, 9, 2], 13)):
        k, v = store.gather(table, n)
        results += [k.cpu(), v.cpu()]
    results.append(store.gather(child, 10, layer=1)[0].cpu())
    return results


def assert_bit_identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x.view(torch.int16), y.view(torch.int16))


def test_the_same_script_on_two_cpu_stores_gives_bit_identical_gathers() -> None:
    first = gathers_after_a_fixed_script("cpu")
    assert_bit_identical(first, gathers_after_a_fixed_script("cpu"))
    assert any(torch.isnan(t).any() for t in first)  # the script really carries NaN payloads


def test_gathers_are_bit_identical_on_every_available_device() -> None:
    reference = gathers_after_a_fixed_script("cpu")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        assert_bit_identical(gathers_after_a_fixed_script(device), reference)


# -------------------------------------------------------------------------- benchmark


def test_benchmark_times_the_store_beside_every_contender_and_says_who_is_ahead(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kvspec.benchmarks.block_store import main

    tiny = "--layers 1 --kv-heads 1 --head-size 8 --block-size 4 --copy-blocks 1,3"
    tiny += " --gather-tokens 10 --repeats 1 --min-batch-ms 0"
    assert main(tiny.split()) == 0
    out = capsys.readouterr().out
    for case in ("copy_blocks 1 block ", "copy_blocks 3 blocks", "gather 10 tokens"):
        assert case in out
    for callable_ in ("BlockStore.copy_blocks", "per-block copy_ loop",
                      "index_select + index_copy_ on kv", "index_select + index_copy_, word rows",
                      "BlockStore.gather", "index_select on kv[layer]",
                      "reference: plain copy, block by block"):  # fmt: skip
        assert f"  {callable_}" in out
    for case in ("copy_blocks 1 block", "copy_blocks 3 blocks", "gather 10 tokens"):
        assert re.search(rf"^{case}: BlockStore\.\w+ at [0-9.]+x plain copy, (NOT )?ahead of "
                         "every contender", out, re.MULTILINE)  # fmt: skip
    assert "per-call overhead, 1-block copy_blocks:" in out
    assert f"torch {torch.__version__}" in out


def test_benchmark_verdict_compares_the_store_with_contenders_not_with_references() -> None:
    from kvspec.benchmarks.block_store import Row, verdicts

    def row(name: str, seconds: float) -> Row:
        return Row("copy_blocks 2 blocks", name, 1 << 20, seconds, 1.0, 1.0 / seconds)

    rows = [row("BlockStore.copy_blocks", 1.25), row("per-block copy_ loop", 2.5),
            row("reference: plain copy, block by block", 1.1)]  # fmt: skip
    (line,) = verdicts(rows)
    assert line == (
        "copy_blocks 2 blocks: BlockStore.copy_blocks at 0.80x plain copy, ahead of every "
        "contender (closest: per-block copy_ loop at 0.40x)"
    )
    (line,) = verdicts([*rows, row("index_select + index_copy_ on kv", 1.0)])
    assert "NOT ahead of every contender (closest: index_select + index_copy_ on kv" in line


def test_benchmark_refuses_to_time_a_contender_that_does_not_copy() -> None:
    from kvspec.benchmarks.block_store import check_copy_contender

    store = small_store()
    check_copy_contender(store, "copy_blocks", lambda: store.copy_blocks([1, 2], [3, 4]),
                         [1, 2], [3, 4])  # fmt: skip
    with pytest.raises(AssertionError, match="'swapped' does not copy blocks"):
        check_copy_contender(store, "swapped", lambda: store.copy_blocks([3, 4], [1, 2]),
                             [1, 2], [3, 4])  # fmt: skip
