"""Every public BlockStore method, fed random well- and ill-typed arguments: a call the
contract allows does exactly what a per-token reference does, and a call it does not allow
raises a one-line BlockStoreError and leaves every byte of every layer's K and V as it was.

Each drawn argument carries whether the contract allows it, so the test predicts refusal
independently of the store and checks both ways: nothing legal refused, nothing illegal
accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kvspec.impl.block_store import BlockStore, BlockStoreError, CopyOnWriteError

NUM_BLOCKS, BLOCK_SIZE, LAYERS, HEADS, HEAD_SIZE = 5, 2, 2, 2, 3
NUM_SLOTS = NUM_BLOCKS * BLOCK_SIZE
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
WORD = {2: torch.int16, 4: torch.int32}
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@dataclass(frozen=True)
class Arg:
    """A drawn argument and whether the contract allows it (``n``: its length, for ids)."""

    value: Any
    ok: bool
    n: int = 0


class Guard:
    """A pool view with fixed ref counts and hashes: the write guard's only inputs."""

    def __init__(self, ref_cnt: list[int], hashed: list[bool]) -> None:
        self.refs, self.hashed = ref_cnt, hashed

    def ref_cnt(self, block_id: int) -> int:
        return self.refs[block_id]

    def block_hash(self, block_id: int) -> bytes | None:
        return b"h" if self.hashed[block_id] else None

    def writable(self, block_id: int) -> bool:
        return block_id != 0 and self.refs[block_id] == 1 and not self.hashed[block_id]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(WORD[t.element_size()]).clone()


# -------------------------------------------------------------------------- arguments

BAD_SCALARS = [True, False, 1.0, math.nan, math.inf, "1", None, -1, 2**63, 2**70]
Mode = str  # "good": an allowed value; "bad": a disallowed one; "any": either


def pick(draw: st.DrawFn, good: list[Any], bad: list[Any], mode: Mode) -> Any:
    return draw(st.sampled_from({"good": good, "bad": bad, "any": good + bad}[mode]))


@st.composite
def plans(draw: st.DrawFn, names: list[str]) -> dict[str, Mode]:
    """Which arguments to draw allowed and which not: all allowed, exactly one not, or each
    at random (several flaws at once). Without a plan, legal calls of four or five
    arguments would be rare."""
    plan = draw(st.sampled_from(["valid", "one-flaw", "random"]))
    if plan == "random":
        return dict.fromkeys(names, "any")
    flawed = draw(st.sampled_from(names)) if plan == "one-flaw" else None
    return {name: "bad" if name == flawed else "good" for name in names}


@st.composite
def ids(draw: st.DrawFn, limit: int, mode: Mode, *, distinct: bool,
        size: int | None = None) -> Arg:
    """Block ids or slots below ``limit``: a list, tuple, range or integer tensor, or one of
    the ways to get them wrong. ``size``: exactly that many, when allowed."""
    sizes = {"min_size": size, "max_size": size} if size is not None else {"max_size": 4}
    values = draw(st.lists(st.integers(0, limit - 1), unique=distinct, **sizes))
    n = len(values)
    good = ["list", "tuple", "range", "int64", "int32", "uint8"]
    bad = ["bad-entry", "out-of-range", "set", "str", "none", "scalar", "float-tensor",
           "bool-tensor", "2d-tensor", "meta-tensor"]  # fmt: skip
    (bad if distinct else good).append("repeat")
    kind = pick(draw, good, bad, mode)
    if kind == "list":
        return Arg(values, True, n)
    if kind == "tuple":
        return Arg(tuple(values), True, n)
    if kind == "range":
        length = n if size is not None else draw(st.integers(0, 4))
        start = draw(st.integers(0, limit - length))
        return Arg(range(start, start + length), True, length)
    if kind in ("int64", "int32", "uint8"):
        return Arg(torch.tensor(values, dtype=getattr(torch, kind)), True, n)
    if kind == "bad-entry":
        at = draw(st.integers(0, n))
        bad_value = draw(st.sampled_from(BAD_SCALARS))
        return Arg([*values[:at], bad_value, *values[at:]], False, n + 1)
    if kind == "out-of-range":
        wrong = [*values, draw(st.sampled_from([limit, limit + 7, -1, -limit]))]
        return Arg(torch.tensor(wrong) if draw(st.booleans()) else wrong, False, n + 1)
    if kind == "repeat":
        twice = [*values, values[0]] if values else [0, 0]
        as_tensor = draw(st.booleans())
        return Arg(torch.tensor(twice) if as_tensor else twice, not distinct, len(twice))
    if kind == "set":
        return Arg(set(values), False, n)
    if kind == "str":
        return Arg("".join(str(v % 10) for v in values), False, n)
    if kind == "none":
        return Arg(None, False, n)
    if kind == "scalar":
        return Arg(values[0] if values else 0, False, 1)
    if kind == "float-tensor":
        return Arg(torch.tensor(values, dtype=torch.float32), False, n)
    if kind == "bool-tensor":
        return Arg(torch.tensor([v % 2 == 1 for v in values], dtype=torch.bool), False, n)
    if kind == "2d-tensor":
        return Arg(torch.tensor(values, dtype=torch.int64).view(1, n), False, n)
    return Arg(torch.tensor(values, dtype=torch.int64, device="meta"), False, n)


@st.composite
def layers(draw: st.DrawFn, mode: Mode, *, allow_none: bool) -> Arg:
    good = [*range(LAYERS), *([None] if allow_none else [])]
    bad = [-1, LAYERS, 2**70, True, 0.0, math.nan, "0", *([] if allow_none else [None])]
    value = pick(draw, good, bad, mode)
    return Arg(value, any(value is g for g in good))


@st.composite
def counts(draw: st.DrawFn, mode: Mode, limit: int, low: int = 0) -> Arg:
    """A token count: an int in [low, limit] (or [0, 0]), or not a count at all."""
    good = st.integers(min(low, limit), limit)
    bad = st.sampled_from([-1, True, False, 1.0, math.nan, None, "3", 2**70, limit + 1])
    value = draw({"good": good, "bad": bad, "any": st.one_of(good, bad)}[mode])
    return Arg(value, type(value) is int and 0 <= value <= limit)


@st.composite
def kv_tensor(draw: st.DrawFn, mode: Mode, shape: tuple[int, ...], dtype: torch.dtype,
              store: BlockStore) -> Arg:
    """K or V of ``shape``: contiguous, strided, offset or aliasing the store, or wrong."""
    kind = pick(draw, ["contiguous", "transposed", "offset", "aliases-store"],
                ["wrong-shape", "wrong-dtype", "list", "meta", "sparse"], mode)  # fmt: skip
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    numel = math.prod(shape)
    random_bits = torch.randint(-(2**15), 2**15, (numel + 1,), generator=generator)
    flat = random_bits.to(WORD[dtype.itemsize]).view(dtype)
    good = flat[:numel].view(shape)
    if kind == "contiguous":
        return Arg(good, True)
    if kind == "transposed":  # same values, last two axes stored the other way round
        return Arg(good.transpose(-1, -2).contiguous().transpose(-1, -2), True)
    if kind == "offset":  # starts one element into its storage: not word-aligned
        return Arg(flat[1:].view(shape), True)
    if kind == "aliases-store":  # K/V read from the cache's own memory
        return Arg(store.kv.new_empty(0).set_(store.kv.untyped_storage(), 0, shape), True)
    if kind == "wrong-shape":
        return Arg(torch.zeros((*shape[:-1], shape[-1] + 1), dtype=dtype), False)
    if kind == "wrong-dtype":
        return Arg(good.to(torch.float64), False)
    if kind == "list":
        return Arg(good.tolist(), False)
    if kind == "meta":
        return Arg(torch.empty(shape, dtype=dtype, device="meta"), False)
    return Arg(good.to_sparse(), False)


@st.composite
def stores(draw: st.DrawFn) -> tuple[BlockStore, Guard | None]:
    """A store full of random bit patterns, with no guard, a guard that allows every write
    but to the null block, or a guard over random ref counts and hashes."""
    dtype = draw(st.sampled_from(DTYPES))
    store = BlockStore(NUM_BLOCKS, BLOCK_SIZE, LAYERS, HEADS, HEAD_SIZE, dtype=dtype)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    store.kv.view(WORD[dtype.itemsize]).copy_(
        torch.randint(-(2**15), 2**15, store.kv.shape, generator=generator)
    )
    kind = draw(st.sampled_from(["none", "permissive", "random"]))
    if kind == "none":
        return store, None
    refs, hashed = [1] * NUM_BLOCKS, [False] * NUM_BLOCKS
    if kind == "random":
        refs = draw(st.lists(st.sampled_from([0, 1, 1, 2]), min_size=NUM_BLOCKS,
                             max_size=NUM_BLOCKS))  # fmt: skip
        hashed = draw(st.lists(st.booleans(), min_size=NUM_BLOCKS, max_size=NUM_BLOCKS))
    guard = Guard([0, *refs[1:]], [False, *hashed[1:]])
    store.guard = guard
    return store, guard


# -------------------------------------------------------------------------- the property


def check_call(store: BlockStore, op: str, call: Callable[[], Any], allowed: bool,
               expect: Callable[[torch.Tensor], torch.Tensor] | None = None,
               result: Callable[[Any, torch.Tensor], None] | None = None) -> None:
    """Run ``call``: refused iff not ``allowed``, with the bytes intact when refused and
    equal to ``expect(before)`` when accepted (unchanged for reads)."""
    before = bits(store.kv)
    before_values = store.kv.clone()
    # The reference runs first: a source that aliases the cache must be read as it was.
    want = bits(expect(before_values)) if allowed and expect else before
    event(f"{op} {'allowed' if allowed else 'refused'}")
    try:
        out = call()
    except BlockStoreError as refusal:
        message = str(refusal)
        assert not allowed, f"a legal {op} was refused: {message}"
        assert message.startswith(f"{op}: ") and "\n" not in message
        assert torch.equal(bits(store.kv), before), f"refused {op} changed the cache"
        return
    assert allowed, f"an illegal {op} was accepted"
    assert torch.equal(bits(store.kv), want), f"{op} wrote other than the reference"
    if result is not None:
        result(out, before_values)


@SETTINGS
@given(data=st.data(), store_guard=stores())
def test_write_is_exact_when_legal_and_changes_nothing_when_refused(data, store_guard) -> None:
    store, guard = store_guard
    plan = data.draw(plans(["slots", "layer", "key", "value"]), "plan")
    slots = data.draw(ids(NUM_SLOTS, plan["slots"], distinct=True), "slots")
    layer = data.draw(layers(plan["layer"], allow_none=True), "layer")
    tokens = (slots.n, HEADS, HEAD_SIZE)
    shape = (LAYERS, *tokens) if layer.value is None else tokens
    key = data.draw(kv_tensor(plan["key"], shape, store.dtype, store), "key")
    value = data.draw(kv_tensor(plan["value"], shape, store.dtype, store), "value")
    blocks = {int(s) // BLOCK_SIZE for s in slots.value} if slots.ok else set()
    writable = guard is None or all(guard.writable(b) for b in blocks)
    allowed = slots.ok and layer.ok and key.ok and value.ok and writable

    def expect(kv: torch.Tensor) -> torch.Tensor:
        k, v = key.value.clone(), value.value.clone()  # read before the write, as the store does
        out = kv.clone()
        planes = range(LAYERS) if layer.value is None else [layer.value]
        for i, layer_index in enumerate(planes):
            for t, slot in enumerate(slots.value):
                block, offset = divmod(int(slot), BLOCK_SIZE)
                k_t = k[i, t] if layer.value is None else k[t]
                v_t = v[i, t] if layer.value is None else v[t]
                out[layer_index, 0, block, offset] = k_t
                out[layer_index, 1, block, offset] = v_t
        return out

    check_call(store, "write",
               lambda: store.write(slots.value, key.value, value.value, layer=layer.value),
               allowed, expect)  # fmt: skip
    if slots.ok and layer.ok and key.ok and value.ok and not writable:
        with pytest.raises(CopyOnWriteError):
            store.write(slots.value, key.value, value.value, layer=layer.value)


@SETTINGS
@given(data=st.data(), store_guard=stores())
def test_copy_blocks_is_exact_when_legal_and_changes_nothing_when_refused(
    data, store_guard
) -> None:
    store, guard = store_guard
    plan = data.draw(plans(["src_ids", "dst_ids", "lengths"]), "plan")
    src = data.draw(ids(NUM_BLOCKS, plan["src_ids"], distinct=False), "src_ids")
    size = src.n if plan["lengths"] == "good" else None  # "bad" lengths may still match
    dst = data.draw(ids(NUM_BLOCKS, plan["dst_ids"], distinct=True, size=size), "dst_ids")
    writable = guard is None or not dst.ok or all(guard.writable(int(b)) for b in dst.value)
    allowed = src.ok and dst.ok and src.n == dst.n and writable

    def expect(kv: torch.Tensor) -> torch.Tensor:
        out = kv.clone()
        for s, d in zip(src.value, dst.value, strict=True):
            out[:, :, int(d)] = kv[:, :, int(s)]  # every source read as it was before
        return out

    check_call(store, "copy_blocks", lambda: store.copy_blocks(src.value, dst.value), allowed,
               expect)  # fmt: skip


@SETTINGS
@given(data=st.data(), store_guard=stores())
def test_gather_reads_the_table_when_legal_and_refuses_cleanly(data, store_guard) -> None:
    store, _ = store_guard
    plan = data.draw(plans(["block_ids", "num_tokens", "layer"]), "plan")
    table = data.draw(ids(NUM_BLOCKS, plan["block_ids"], distinct=False), "block_ids")
    capacity = table.n * BLOCK_SIZE if plan["num_tokens"] == "good" else NUM_SLOTS
    num_tokens = data.draw(counts(plan["num_tokens"], capacity), "num_tokens")
    layer = data.draw(layers(plan["layer"], allow_none=True), "layer")
    fits = num_tokens.ok and table.ok and -(-num_tokens.value // BLOCK_SIZE) <= table.n
    allowed = fits and layer.ok

    def result(out: tuple[torch.Tensor, torch.Tensor], kv: torch.Tensor) -> None:
        ids_ = [int(b) for b in table.value]
        for plane, got in enumerate(out):
            for t in range(num_tokens.value):
                block, offset = ids_[t // BLOCK_SIZE], t % BLOCK_SIZE
                want = kv[:, plane, block, offset]
                mine = got[:, t] if layer.value is None else got[t]
                if layer.value is not None:
                    want = want[layer.value]
                assert torch.equal(bits(mine), bits(want))

    check_call(store, "gather",
               lambda: store.gather(table.value, num_tokens.value, layer=layer.value),
               allowed, result=result)  # fmt: skip


@SETTINGS
@given(data=st.data(), store_guard=stores())
def test_paged_attention_refuses_cleanly_and_never_writes(data, store_guard) -> None:
    store, _ = store_guard
    plan = data.draw(plans(["block_ids", "num_tokens", "layer", "query", "scale"]), "plan")
    table = data.draw(ids(NUM_BLOCKS, plan["block_ids"], distinct=False), "block_ids")
    capacity = table.n * BLOCK_SIZE if plan["num_tokens"] == "good" else NUM_SLOTS
    num_tokens = data.draw(counts(plan["num_tokens"], capacity, low=1), "num_tokens")
    layer = data.draw(layers(plan["layer"], allow_none=False), "layer")
    most = num_tokens.value if num_tokens.ok and num_tokens.value else 3
    num_queries, q_heads, q_dtype = pick(
        data.draw, [(1, HEADS, store.dtype), (most, 2 * HEADS, store.dtype)],
        [(0, HEADS, store.dtype), (most + 1, HEADS, store.dtype), (1, 3, store.dtype),
         (1, 0, store.dtype), (1, HEADS, torch.float64)], plan["query"])  # fmt: skip
    scale = pick(data.draw, [None, 0.5, 2], [-1.0, 0, math.nan, math.inf, True, "1"],
                 plan["scale"])  # fmt: skip
    query = torch.zeros(num_queries, q_heads, HEAD_SIZE, dtype=q_dtype)
    fits = num_tokens.ok and table.ok and -(-num_tokens.value // BLOCK_SIZE) <= table.n
    allowed = (
        fits and layer.ok and 1 <= num_queries <= num_tokens.value
        and q_heads in (HEADS, 2 * HEADS) and q_dtype == store.dtype
        and (scale is None or (type(scale) in (int, float) and math.isfinite(scale)
                               and scale > 0))
    )  # fmt: skip

    def result(out: torch.Tensor, kv: torch.Tensor) -> None:
        assert out.shape == (num_queries, q_heads, HEAD_SIZE) and out.dtype == store.dtype

    check_call(store, "paged_attention",
               lambda: store.paged_attention(query, table.value, num_tokens.value,
                                             layer.value, scale=scale),
               allowed, result=result)  # fmt: skip
