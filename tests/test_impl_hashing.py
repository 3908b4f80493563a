"""Block hashing: chained, deterministic, full blocks only, extra keys by kind."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys

import pytest
from kvspec.impl.kv_cache_utils import (
    NONE_HASH,
    NONE_HASH_SEED,
    generate_block_hash_extra_keys,
    get_none_hash,
    get_request_block_hasher,
    hash_block_tokens,
    sha256,
)
from kvspec.impl.request import MultiModalFeature, Request

BS = 4
PROFILES = ("current", "classic")


def make(tokens, profile="current", **kw) -> Request:
    return Request("r", tokens, block_hasher=get_request_block_hasher(BS, profile=profile), **kw)


def test_sha256_is_pickle_then_hashlib():
    obj = (b"parent", (1, 2, 3), None)
    expected = hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()
    assert sha256(obj) == expected


def test_root_hash_is_sha256_of_fixed_seed_when_pythonhashseed_unset():
    if "PYTHONHASHSEED" in os.environ:
        assert sha256(os.environ["PYTHONHASHSEED"]) == NONE_HASH
    else:
        assert sha256(NONE_HASH_SEED) == NONE_HASH


def test_root_hash_follows_pythonhashseed(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "1234")
    assert get_none_hash(sha256) == sha256("1234")
    monkeypatch.delenv("PYTHONHASHSEED")
    assert get_none_hash(sha256) == sha256(NONE_HASH_SEED)


def test_hashes_agree_across_processes():
    """Two interpreters with different str-hash randomisation compute the same hashes."""
    code = (
        "from impl.kv_cache_utils import get_request_block_hasher as g;"
        "from impl.request import Request as R;"
        "print(R('x', range(9), block_hasher=g(4), lora_name='l', cache_salt='s')"
        ".block_hashes[1].hex())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    outs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env=env).stdout.strip()
        for _ in range(2)
    ]
    assert outs[0] == outs[1] != ""
    if "PYTHONHASHSEED" not in os.environ:
        assert outs[0] == make(range(9), lora_name="l", cache_salt="s").block_hashes[1].hex()


def test_falsy_parent_means_root():
    assert hash_block_tokens(sha256, None, [1, 2]) == hash_block_tokens(sha256, b"", [1, 2])
    assert hash_block_tokens(sha256, None, [1, 2]) == sha256((NONE_HASH, (1, 2), None))


@pytest.mark.parametrize("profile", PROFILES)
def test_only_full_blocks_are_hashed(profile):
    req = make([1, 2, 3, 4, 5, 6, 7], profile)
    assert len(req.block_hashes) == 1  # tokens 4..6 are a partial block
    req.append_output_token_ids(8)
    assert len(req.block_hashes) == 2
    req.append_output_token_ids([9, 10, 11])
    assert len(req.block_hashes) == 2


@pytest.mark.parametrize("profile", PROFILES)
def test_incremental_hashing_equals_hashing_all_at_once(profile):
    grown = make([1, 2, 3], profile, lora_name="a", cache_salt="s")
    for t in range(4, 14):
        grown.append_output_token_ids(t)
    whole = make(list(range(1, 14)), profile, lora_name="a", cache_salt="s")
    assert grown.block_hashes == whole.block_hashes


def test_hash_chain_depends_on_parent():
    """Identical second blocks after different first blocks hash differently."""
    a = make([1, 1, 1, 1, 9, 9, 9, 9])
    b = make([2, 2, 2, 2, 9, 9, 9, 9])
    assert a.block_hashes[1] != b.block_hashes[1]
    assert a.block_hashes[1] == hash_block_tokens(sha256, a.block_hashes[0], [9, 9, 9, 9])


def test_request_without_hasher_has_no_hashes():
    assert Request("r", range(16)).block_hashes == []


@pytest.mark.parametrize("profile", PROFILES)
def test_cache_salt_only_in_first_block(profile):
    req = make(range(12), profile, cache_salt="tenant-a")
    salt = ("cache_salt", "tenant-a") if profile == "current" else "tenant-a"
    assert generate_block_hash_extra_keys(req, 0, 4, profile=profile) == (salt,)
    assert generate_block_hash_extra_keys(req, 4, 8, profile=profile) is None
    # ... yet chaining still isolates every later block from an unsalted request.
    plain = make(range(12), profile)
    assert all(x != y for x, y in zip(req.block_hashes, plain.block_hashes, strict=True))


@pytest.mark.parametrize("profile", PROFILES)
def test_empty_cache_salt_is_no_salt(profile):
    salted = make(range(8), profile, cache_salt="")
    assert salted.block_hashes == make(range(8), profile).block_hashes


@pytest.mark.parametrize("profile", PROFILES)
def test_lora_in_every_block(profile):
    req = make(range(12), profile, lora_name="adapter", lora_path="/a")
    lora = ("lora", "adapter", "/a") if profile == "current" else "adapter"
    for start in (0, 4, 8):
        assert generate_block_hash_extra_keys(req, start, start + 4, profile=profile) == (lora,)


@pytest.mark.parametrize("profile", PROFILES)
def test_multimodal_items_keyed_by_identifier_and_offset_in_block(profile):
    img = MultiModalFeature("img-1", offset=2, length=7)  # tokens 2..8
    req = make(range(12), profile, mm_features=[img])

    def key(rel):
        return ("mm", "img-1", rel) if profile == "current" else ("img-1", rel)

    assert generate_block_hash_extra_keys(req, 0, 4, profile=profile) == (key(2),)
    assert generate_block_hash_extra_keys(req, 4, 8, profile=profile) == (key(-2),)
    assert generate_block_hash_extra_keys(req, 8, 12, profile=profile) == (key(-6),)
    other = make(range(12), profile, mm_features=[MultiModalFeature("img-2", 2, 7)])
    assert all(x != y for x, y in zip(req.block_hashes, other.block_hashes, strict=True))


def test_extra_keys_order_is_lora_mm_salt():
    req = make(range(8), lora_name="l", cache_salt="s", mm_features=[MultiModalFeature("m", 0, 1)])
    assert generate_block_hash_extra_keys(req, 0, 4) == (
        ("lora", "l", None), ("mm", "m", 0), ("cache_salt", "s"))


def test_tagged_keys_never_collide_across_kinds():
    """A LoRA named like a salt is not the salt (current); classic cannot tell them apart."""
    lora = make(range(4), "current", lora_name="x")
    salt = make(range(4), "current", cache_salt="x")
    assert lora.block_hashes != salt.block_hashes

    lora_c = make(range(4), "classic", lora_name="x")
    salt_c = make(range(4), "classic", cache_salt="x")
    assert lora_c.block_hashes == salt_c.block_hashes  # the collision tagging removes


def test_profiles_differ_only_when_extra_keys_exist():
    assert make(range(8), "current").block_hashes == make(range(8), "classic").block_hashes
    assert (make(range(8), "current", lora_name="l").block_hashes
            != make(range(8), "classic", lora_name="l").block_hashes)


def test_unknown_profile_is_rejected():
    with pytest.raises(ValueError, match="unknown profile"):
        get_request_block_hasher(4, profile="newest")


def test_overlapping_mm_features_are_rejected():
    with pytest.raises(ValueError, match="overlaps"):
        Request("r", range(8), mm_features=[MultiModalFeature("a", 0, 4),
                                            MultiModalFeature("b", 3, 2)])
