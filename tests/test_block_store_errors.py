"""What a caller reads when a BlockStore call is refused: one line naming the operation, the
argument and its value, and what was expected. (That a refusal changes nothing is the
property test's job, in test_block_store_atomic.py.)"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from kvspec.impl.block_store import BlockStore, BlockStoreError
from kvspec.impl.errors import KVCacheError

LAYERS, HEADS, HEAD_SIZE, BLOCK_SIZE = 2, 1, 4, 2


def store() -> BlockStore:
    return BlockStore(4, BLOCK_SIZE, LAYERS, HEADS, HEAD_SIZE, dtype=torch.float32)


ONE_TOKEN = torch.zeros(LAYERS, 1, HEADS, HEAD_SIZE)
QUERY = torch.zeros(1, HEADS, HEAD_SIZE)

REFUSALS: list[tuple[str, Callable[[BlockStore], object], str]] = [
    ("bool slot", lambda s: s.write([True], ONE_TOKEN, ONE_TOKEN),
     "write: slot_mapping[0] is True (bool); expected an int"),
    ("float slot", lambda s: s.write([2.0], ONE_TOKEN, ONE_TOKEN),
     "write: slot_mapping[0] is 2.0 (float); expected an int"),
    ("NaN slot", lambda s: s.write([math.nan], ONE_TOKEN, ONE_TOKEN),
     "write: slot_mapping[0] is nan (float); expected an int"),
    ("huge slot", lambda s: s.write([2**70], ONE_TOKEN, ONE_TOKEN),
     f"write: slot_mapping entry {2**70} is out of range; expected 0 <= value < 8"),
    ("negative slot in a tensor", lambda s: s.write(torch.tensor([-3]), ONE_TOKEN, ONE_TOKEN),
     "write: slot_mapping entry -3 is out of range; expected 0 <= value < 8"),
    ("repeated slot in a tensor", lambda s: s.write(torch.tensor([5, 2, 5]), ONE_TOKEN,
                                                    ONE_TOKEN),
     "write: slot 5 (block 2) appears twice in slot_mapping; expected distinct slots"),
    ("set of slots", lambda s: s.write({1}, ONE_TOKEN, ONE_TOKEN),
     "write: slot_mapping has type set; expected a list, tuple or range of ints or a 1-d "
     "integer tensor"),
    ("float tensor of slots", lambda s: s.write(torch.tensor([1.0]), ONE_TOKEN, ONE_TOKEN),
     "write: slot_mapping is a tensor of shape (1,) and dtype torch.float32; expected a 1-d "
     "integer tensor"),
    ("slots on the meta device", lambda s: s.write(torch.tensor([1], device="meta"),
                                                   ONE_TOKEN, ONE_TOKEN),
     "write: slot_mapping is on meta; expected cpu"),
    ("key not a tensor", lambda s: s.write([1], ONE_TOKEN.tolist(), ONE_TOKEN),
     "write: key has type list; expected a tensor"),
    ("value of another dtype", lambda s: s.write([1], ONE_TOKEN, ONE_TOKEN.double()),
     "write: value has dtype torch.float64; expected the store's torch.float32 (a silent "
     "cast would change the bits)"),
    ("value of another shape", lambda s: s.write([1], ONE_TOKEN, ONE_TOKEN[0]),
     "write: value has shape (1, 1, 4); expected (2, 1, 1, 4)"),
    ("key on the meta device", lambda s: s.write([1], ONE_TOKEN.to("meta"), ONE_TOKEN),
     "write: key is on meta; expected cpu"),
    ("sparse key", lambda s: s.write([1], ONE_TOKEN.to_sparse(), ONE_TOKEN),
     "write: key is a torch.sparse_coo tensor; expected a dense one"),
    ("bool layer", lambda s: s.write([1], ONE_TOKEN[0], ONE_TOKEN[0], layer=True),
     "write: layer is True; expected an int with 0 <= layer < 2"),
    ("lengths differ", lambda s: s.copy_blocks([1, 2], [3]),
     "copy_blocks: 2 source ids but 1 destination ids; expected equal lengths"),
    ("repeated destination", lambda s: s.copy_blocks([1, 2], (3, 3)),
     "copy_blocks: destination block 3 appears twice; expected distinct destinations"),
    ("source out of range", lambda s: s.copy_blocks([4], [1]),
     "copy_blocks: src_ids entry 4 is out of range; expected 0 <= value < 4"),
    ("negative count", lambda s: s.gather([1], -1),
     "gather: num_tokens is -1; expected an int with 0 <= num_tokens"),
    ("float count", lambda s: s.gather([1], 2.0),
     "gather: num_tokens is 2.0; expected an int with 0 <= num_tokens"),
    ("table too short", lambda s: s.gather([1], 3),
     "gather: 3 tokens need 2 blocks of 2; the block table holds 1"),
    ("NaN scale", lambda s: s.paged_attention(QUERY, [1], 1, 0, scale=math.nan),
     "paged_attention: scale nan; expected None or a finite number > 0"),
    ("no layer", lambda s: s.paged_attention(QUERY, [1], 1, None),
     "paged_attention: layer is None; expected an int with 0 <= layer < 2"),
    ("more queries than tokens", lambda s: s.paged_attention(QUERY.expand(2, -1, -1), [1], 1, 0),
     "paged_attention: 2 queries over 1 tokens; expected 1 <= q <= num_tokens (queries are "
     "the request's last tokens)"),
]


@pytest.mark.parametrize(("call", "message"), [(c, m) for _, c, m in REFUSALS],
                         ids=[name for name, _, _ in REFUSALS])
def test_a_refusal_is_one_line_naming_the_operation_the_value_and_what_was_expected(
    call: Callable[[BlockStore], object], message: str
) -> None:
    with pytest.raises(BlockStoreError) as refused:
        call(store())
    assert str(refused.value) == message
    assert isinstance(refused.value, KVCacheError) and isinstance(refused.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_layers": True}, "BlockStore: num_layers is True; expected an int with 1 <= "
                               "num_layers"),
        ({"head_size": 0}, "BlockStore: head_size is 0; expected an int with 1 <= head_size"),
        ({"dtype": torch.int32}, "BlockStore: dtype torch.int32; expected one of"),
        ({"device": "nonsense"}, "BlockStore: device 'nonsense'; expected a torch device"),
        ({"device": 3.5}, "BlockStore: device 3.5; expected a torch device"),
        ({"device": "meta"}, "BlockStore: device meta; expected a device that holds data"),
        ({"num_blocks": 2**40, "head_size": 2**20}, "BlockStore: cannot allocate"),
        ({"guard": object()}, "BlockStore: guard has type object; expected None or an object "
                              "with ref_cnt(block_id) and block_hash(block_id)"),
    ],
)
def test_a_store_that_cannot_exist_is_refused_at_construction(
    kwargs: dict[str, object], message: str
) -> None:
    sizes: dict[str, object] = {"num_blocks": 4, "block_size": 2, "num_layers": 1,
                                "num_kv_heads": 1, "head_size": 4}
    with pytest.raises(BlockStoreError) as refused:
        BlockStore(**{**sizes, **kwargs})  # type: ignore[arg-type]
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_assigning_a_guard_without_the_two_observations_is_refused() -> None:
    s = store()
    with pytest.raises(BlockStoreError, match="guard has type int"):
        s.guard = 3  # type: ignore[assignment]
    assert s.guard is None


def test_a_guard_answering_with_a_non_int_ref_cnt_refuses_the_write() -> None:
    class Confused:
        def ref_cnt(self, block_id: int) -> object:
            return "1"

        def block_hash(self, block_id: int) -> bytes | None:
            return None

    s = store()
    s.guard = Confused()
    with pytest.raises(BlockStoreError, match=r"write: the guard's ref_cnt\(1\) returned '1'"):
        s.write([2], ONE_TOKEN, ONE_TOKEN)
