"""Examples of the spec's block hashing: what goes into a key, and why."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys

import pytest
from kvspec.spec.hashing import (
    ROOT_HASH,
    LoRARequest,
    MultiModalItem,
    block_extra_keys,
    block_hashes,
    hash_block_tokens,
    sha256_hash,
)
from kvspec.spec.profiles import CLASSIC, CURRENT, PROFILES
from kvspec.spec.request import Request

BS = 4
PROFILE_PARAMS = pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))


def test_hash_matches_upstream_sha256_encoding_for_ordinary_keys() -> None:
    seed = os.environ.get("PYTHONHASHSEED", "vllm-none-hash")
    upstream_root = hashlib.sha256(pickle.dumps(seed, protocol=5)).digest()
    extra = (("lora", "adapter", "/a"), ("cache_salt", "tenant"))
    upstream = hashlib.sha256(pickle.dumps((upstream_root, (1, 2, 3, 4), extra), protocol=5))
    assert upstream_root == ROOT_HASH
    assert hash_block_tokens(None, [1, 2, 3, 4], extra) == upstream.digest()


def test_equal_values_hash_equal_whatever_objects_hold_them() -> None:
    """Pickle back-references a repeated *object*; the spec's hash depends on values only."""
    same = "x"
    built = "".join(["", "x"])
    assert sha256_hash((same, same)) == sha256_hash((same, built))


def _hashes_in_a_fresh_process(env: dict[str, str]) -> str:
    code = (
        "from spec.request import Request;"
        "from spec.hashing import LoRARequest;"
        "r = Request('r', tuple(range(12)), 4, lora=LoRARequest('l'), cache_salt='s');"
        "print(','.join(h.hex() for h in r.block_hashes))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_hash_is_the_same_in_another_process() -> None:
    """Python's per-process string hashing never reaches a block hash."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    here = Request("r", tuple(range(12)), 4, lora=LoRARequest("l"), cache_salt="s")
    expected = ",".join(h.hex() for h in here.block_hashes)
    if "PYTHONHASHSEED" in os.environ:
        expected = _hashes_in_a_fresh_process(env)  # compare two unseeded processes
    assert _hashes_in_a_fresh_process(env) == expected


def test_pythonhashseed_chooses_the_root_hash() -> None:
    """As upstream: a deployment sets PYTHONHASHSEED to choose its own root of every chain."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    seeded = {**env, "PYTHONHASHSEED": "12345"}
    assert _hashes_in_a_fresh_process(seeded) != _hashes_in_a_fresh_process(env)
    assert _hashes_in_a_fresh_process(seeded) == _hashes_in_a_fresh_process(seeded)


@PROFILE_PARAMS
def test_only_full_blocks_are_hashed(profile) -> None:
    r = Request("r", tuple(range(10)), BS, profile=profile)
    assert len(r.block_hashes) == 2
    r.append_output_token_ids([10])
    assert len(r.block_hashes) == 2
    r.append_output_token_ids(11)
    assert len(r.block_hashes) == 3


@PROFILE_PARAMS
def test_appending_tokens_extends_hashes_without_rewriting_them(profile) -> None:
    grown = Request("r", tuple(range(6)), BS, profile=profile)
    before = list(grown.block_hashes)
    grown.append_output_token_ids(range(6, 12))
    whole = Request("w", tuple(range(12)), BS, profile=profile)
    assert grown.block_hashes[: len(before)] == before
    assert grown.block_hashes == whole.block_hashes


@PROFILE_PARAMS
def test_chain_depends_on_the_parent(profile) -> None:
    """Equal tokens after different prefixes are different K/V, so different keys."""
    x, y, z = (1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 3)
    a = block_hashes(x + y, BS, profile=profile)
    b = block_hashes(z + y, BS, profile=profile)
    assert a[1] != b[1]
    assert a[1] == hash_block_tokens(a[0], y)
    assert hash_block_tokens(None, y) == hash_block_tokens(ROOT_HASH, y)
    assert block_hashes(y, BS, profile=profile)[0] != a[1]


def test_cache_salt_goes_only_into_the_first_block() -> None:
    tokens = tuple(range(12))
    salted = Request("s", tokens, BS, cache_salt="tenant-a")
    assert block_extra_keys(0, 4, cache_salt="tenant-a", profile=CURRENT) == (
        ("cache_salt", "tenant-a"),
    )
    assert block_extra_keys(4, 8, cache_salt="tenant-a", profile=CURRENT) is None
    # Block 1 is keyed without the salt; the chain alone carries it on.
    assert salted.block_hashes[1] == hash_block_tokens(salted.block_hashes[0], tokens[4:8])
    other = Request("o", tokens, BS, cache_salt="tenant-b")
    assert all(a != b for a, b in zip(salted.block_hashes, other.block_hashes, strict=True))


def test_empty_cache_salt_is_no_salt() -> None:
    tokens = tuple(range(8))
    assert (
        Request("e", tokens, BS, cache_salt="").block_hashes
        == Request("n", tokens, BS).block_hashes
    )


@PROFILE_PARAMS
def test_lora_goes_into_every_block(profile) -> None:
    lora = LoRARequest("adapter", "/adapters/a")
    key = ("lora", "adapter", "/adapters/a") if profile is CURRENT else "adapter"
    for start in (0, 4, 8):
        extra = block_extra_keys(start, start + BS, lora=lora, profile=profile)
        assert extra == (key,)
    base = Request("b", tuple(range(8)), BS, profile=profile)
    tuned = Request("t", tuple(range(8)), BS, profile=profile, lora=lora)
    assert base.block_hashes[1] != hash_block_tokens(tuned.block_hashes[0], range(4, 8))
    assert tuned.block_hashes[1] == hash_block_tokens(tuned.block_hashes[0], range(4, 8), (key,))


def test_multimodal_items_carry_their_offset_relative_to_each_block() -> None:
    image = MultiModalItem("img-1", offset=2, length=5)  # tokens 2..6: blocks 0 and 1
    assert block_extra_keys(0, 4, mm_items=[image], profile=CURRENT) == (("mm", "img-1", 2),)
    assert block_extra_keys(4, 8, mm_items=[image], profile=CURRENT) == (("mm", "img-1", -2),)
    assert block_extra_keys(8, 12, mm_items=[image], profile=CURRENT) is None
    assert block_extra_keys(4, 8, mm_items=[image], profile=CLASSIC) == (("img-1", -2),)


def test_same_image_at_another_position_is_another_key() -> None:
    tokens = (0,) * 8
    early = Request("e", tokens, BS, mm_items=(MultiModalItem("img", 0, 2),))
    later = Request("l", tokens, BS, mm_items=(MultiModalItem("img", 1, 2),))
    assert early.block_hashes[0] != later.block_hashes[0]


def test_tagged_kinds_never_collide_but_classic_bare_keys_do() -> None:
    """A LoRA named "x" and a cache salt "x": bare keys are both "x" in block 0."""
    tokens = tuple(range(8))
    for profile, collide in ((CURRENT, False), (CLASSIC, True)):
        lora_x = Request("l", tokens, BS, profile=profile, lora=LoRARequest("x"))
        salt_x = Request("s", tokens, BS, profile=profile, cache_salt="x")
        assert (lora_x.block_hashes[0] == salt_x.block_hashes[0]) is collide
    mm_key = block_extra_keys(0, 4, mm_items=[MultiModalItem("x", 0, 1)], profile=CURRENT)
    salt_key = block_extra_keys(0, 4, cache_salt="x", profile=CURRENT)
    lora_key = block_extra_keys(0, 4, lora=LoRARequest("x"), profile=CURRENT)
    assert len({mm_key, salt_key, lora_key}) == 3


def test_extra_keys_are_in_upstream_order_lora_mm_salt() -> None:
    extra = block_extra_keys(
        0,
        4,
        lora=LoRARequest("l"),
        cache_salt="s",
        mm_items=[MultiModalItem("m", 1, 1)],
        profile=CURRENT,
    )
    assert extra == (("lora", "l", ""), ("mm", "m", 1), ("cache_salt", "s"))


def test_unhashable_values_are_refused_with_the_operation_named() -> None:
    with pytest.raises(TypeError, match="sha256_hash: cannot hash a float"):
        sha256_hash((1.5,))
