"""Block hashing for prefix caching: chained content hashes of full blocks.

A block's hash covers its parent's hash, its own token ids and a tuple of *extra keys*
(LoRA identity, multimodal items, cache salt). Chaining makes a hash a fingerprint of the
whole prefix ending at that block, so a lookup hit on block k implies blocks 0..k match
and the lookup can stop at its first miss.

Hashes must agree across processes (a prefix cache can be shared between engine
instances and inspected offline), so everything here is built from ``pickle`` plus
``hashlib``; Python's ``hash()`` is salted per process and is never used.

Two extra-key formats exist, one per profile (``docs/manager.md``):

* ``current``: every key is tagged by its kind -- ``("lora", name, path)``,
  ``("mm", identifier, offset)``, ``("cache_salt", salt)`` -- so a LoRA named like a
  salt, or an mm identifier equal to a LoRA name, can never produce the same key tuple.
* ``classic``: the untagged forms -- bare LoRA name, ``(identifier, offset)``, bare salt.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kvspec.impl.block import BlockHash
from kvspec.impl.errors import InvalidArgumentError

if TYPE_CHECKING:
    from kvspec.impl.request import Request

HashFn = Callable[[Any], bytes]
"""A deterministic hash of a picklable object to bytes."""

PROFILES = ("current", "classic")

NONE_HASH_SEED = "vllm-none-hash"
"""Seed of the root hash when ``PYTHONHASHSEED`` is unset.

A fixed, public seed keeps hashes reproducible across processes; it does not weaken a
cryptographic hash, whose collision resistance never depended on a secret seed
(isolation between tenants is the cache salt's job). The value is upstream's, so that
``sha256`` hashes of the ``current`` profile can be compared byte for byte.
"""


def sha256(obj: Any) -> bytes:
    """SHA-256 of ``obj`` pickled at the highest protocol: the default block hash.

    Pickle, not ``repr`` or ``str``: it distinguishes ``1`` from ``"1"`` and
    ``(1, 2)`` from ``[1, 2]``, and tuples of ints, bytes and str pickle identically in
    every process, which is all block keys contain.
    """
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def get_hash_fn_by_name(name: str) -> HashFn:
    """The hash function called ``name`` (only ``"sha256"`` is built in)."""
    if name == "sha256":
        return sha256
    raise InvalidArgumentError(
        f"get_hash_fn_by_name: unknown hash function {name!r}; expected 'sha256'")


def none_hash_seed() -> str:
    """The root-hash seed: ``PYTHONHASHSEED`` when set, else :data:`NONE_HASH_SEED`."""
    seed = os.environ.get("PYTHONHASHSEED")
    return NONE_HASH_SEED if seed is None else seed


@functools.lru_cache(maxsize=16)
def _none_hash(hash_fn: HashFn, seed: str) -> BlockHash:
    return BlockHash(hash_fn(seed))


def get_none_hash(hash_fn: HashFn = sha256) -> BlockHash:
    """The parent hash of block 0 under ``hash_fn``.

    Computed per hash function rather than kept in one global set at start-up, so two
    managers with different hash functions in one process cannot disturb each other.
    """
    return _none_hash(hash_fn, none_hash_seed())


NONE_HASH: BlockHash = get_none_hash(sha256)
"""The root hash for :func:`sha256` (as the environment stood at import)."""


def hash_block_tokens(
    hash_fn: HashFn,
    parent_hash: bytes | None,
    token_ids: Sequence[int],
    extra_keys: tuple[Any, ...] | None = None,
) -> BlockHash:
    """Hash of one full block: ``hash_fn((parent, tuple(token_ids), extra_keys))``.

    A falsy parent (None or empty, i.e. block 0) is replaced by the root hash, so the
    first block is chained like every other and cannot collide with a block whose
    parent happens to be absent for another reason.
    """
    if not parent_hash:
        parent_hash = get_none_hash(hash_fn)
    return BlockHash(hash_fn((parent_hash, tuple(token_ids), extra_keys)))


def _check_profile(operation: str, profile: str) -> None:
    if profile not in PROFILES:
        raise InvalidArgumentError(
            f"{operation}: unknown profile {profile!r}; expected one of {PROFILES}")


def generate_block_hash_extra_keys(
    request: Request, start_token_idx: int, end_token_idx: int, *, profile: str = "current"
) -> tuple[Any, ...] | None:
    """Extra keys of the block ``[start_token_idx, end_token_idx)`` of ``request``.

    Order: LoRA key, multimodal keys, cache salt; None when there are none (so a plain
    request hashes ``(parent, tokens, None)``).

    * LoRA identity goes into **every** block: the same tokens under two adapters give
      different KV.
    * Each multimodal item overlapping the block contributes its identifier and its
      offset relative to the block start (negative if it began in an earlier block):
      placeholder tokens are identical for different images, so the identifier is what
      tells them apart, and the offset tells the same image at two positions apart.
    * The cache salt goes only into the block starting at token 0, and only when
      non-empty: chaining carries it into every later block, so salting block 0 is
      enough to isolate the whole request.
    """
    _check_profile("generate_block_hash_extra_keys", profile)
    tagged = profile == "current"
    keys: list[Any] = []
    if request.lora_name is not None:
        keys.append(("lora", request.lora_name, request.lora_path) if tagged
                    else request.lora_name)
    for feature in request.mm_features:
        if feature.offset < end_token_idx and start_token_idx < feature.offset + feature.length:
            rel = feature.offset - start_token_idx
            keys.append(("mm", feature.identifier, rel) if tagged else (feature.identifier, rel))
    if start_token_idx == 0 and request.cache_salt:
        keys.append(("cache_salt", request.cache_salt) if tagged else request.cache_salt)
    return tuple(keys) if keys else None


BlockHasher = Callable[["Request"], list[BlockHash]]


class RequestBlockHasher:
    """Computes the hashes of a request's newly completed full blocks.

    ``Request`` calls it at construction and after each ``append_output_token_ids``,
    appending the result to ``request.block_hashes``. It starts at token
    ``len(block_hashes) * block_size`` and chains from the last stored hash, so each
    block is hashed exactly once over the request's life. A trailing partial block is
    never hashed: its content is not final, and a hash of it would let a later request
    adopt a block that is still being written.

    A small class rather than a closure, so that a request (and a manager holding
    requests) can be pickled: the conformance engines copy targets that way.
    """

    __slots__ = ("block_size", "hash_fn", "profile")

    def __init__(self, block_size: int, hash_fn: HashFn, profile: str) -> None:
        self.block_size = block_size
        self.hash_fn = hash_fn
        self.profile = profile

    def __call__(self, request: Request) -> list[BlockHash]:
        block_size = self.block_size
        start = len(request.block_hashes) * block_size
        parent: bytes | None = request.block_hashes[-1] if request.block_hashes else None
        tokens = request.all_token_ids
        new_hashes: list[BlockHash] = []
        while start + block_size <= len(tokens):
            end = start + block_size
            extra = generate_block_hash_extra_keys(request, start, end, profile=self.profile)
            parent = hash_block_tokens(self.hash_fn, parent, tokens[start:end], extra)
            new_hashes.append(parent)
            start = end
        return new_hashes


def get_request_block_hasher(
    block_size: int, hash_fn: HashFn = sha256, *, profile: str = "current"
) -> BlockHasher:
    """The hasher of a request's full blocks (:class:`RequestBlockHasher`)."""
    if block_size <= 0:
        raise InvalidArgumentError(
            f"get_request_block_hasher: block_size must be positive, got {block_size}")
    _check_profile("get_request_block_hasher", profile)
    return RequestBlockHasher(block_size, hash_fn, profile)
